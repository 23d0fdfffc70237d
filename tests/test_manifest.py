import json

import pytest

from hms_offline.constants import CLASSES
from hms_offline.manifest import (
    Manifest,
    ManifestError,
    load_manifest,
    make_entry,
    manifest_problems,
    read_manifest,
    sha256_file,
    write_manifest,
)
from hms_offline.preprocess import PREPROCESSING_NAME, PREPROCESSING_PARAMS


@pytest.fixture
def bundle(tmp_path):
    """A manifest with one entry over a dummy weights file (contents are not loaded here)."""
    weights = tmp_path / "weights" / "mobilenetv3_large_fold0.weights.h5"
    weights.parent.mkdir()
    weights.write_bytes(b"not really hdf5")
    entry = make_entry(weights, tmp_path, arch="mobilenetv3_large", fold=0, cv_kl=0.9)
    write_manifest(Manifest(models=[entry]), tmp_path / "weights_manifest.json")
    return tmp_path


def edit_manifest(folder, change):
    path = folder / "weights_manifest.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def test_written_manifest_has_the_documented_schema(bundle):
    raw = json.loads((bundle / "weights_manifest.json").read_text())
    assert list(raw) == ["format_version", "classes", "preprocessing", "models"]
    assert raw["format_version"] == 1
    assert raw["classes"] == list(CLASSES)
    assert raw["preprocessing"] == {"name": PREPROCESSING_NAME, "params": PREPROCESSING_PARAMS}
    (entry,) = raw["models"]
    assert entry["file"] == "weights/mobilenetv3_large_fold0.weights.h5"
    assert entry["sha256"] == sha256_file(bundle / entry["file"])
    assert entry["input_shape"] == [400, 300, 3]
    assert entry["name"] == "mobilenetv3_large_fold0"
    assert (entry["arch"], entry["fold"], entry["ensemble_weight"], entry["cv_kl"]) == ("mobilenetv3_large", 0, 1.0, 0.9)
    assert entry["include_rescaling"] is True
    assert entry["tensorflow"] and entry["keras"] and entry["keras_cv"] == "0.9.0"


def test_load_round_trips(bundle):
    manifest, root = load_manifest(bundle)
    assert root == bundle
    assert [m.name for m in manifest.models] == ["mobilenetv3_large_fold0"]
    assert read_manifest(bundle / "weights_manifest.json") == manifest


def second_entry(folder):
    """Add a second, valid entry so that a bad first entry costs only itself."""
    weights = folder / "weights" / "mobilenetv3_large_fold1.weights.h5"
    weights.write_bytes(b"fold 1")
    good = make_entry(weights, folder, arch="mobilenetv3_large", fold=1)
    edit_manifest(folder, lambda raw: raw["models"].append(json.loads(Manifest(models=[good]).to_json())["models"][0]))


@pytest.mark.parametrize("change, reason", [
    (lambda folder, raw: (folder / "weights" / "mobilenetv3_large_fold0.weights.h5").unlink(),
     r"weights file .*mobilenetv3_large_fold0.weights.h5 is missing"),
    (lambda folder, raw: (folder / "weights" / "mobilenetv3_large_fold0.weights.h5").write_bytes(b"tampered"),
     r"sha256 of .*mobilenetv3_large_fold0.weights.h5 is [0-9a-f]{64}, the manifest says"),
    (lambda folder, raw: raw["models"][0].update(arch="resnet50"), r"models\[0\] has unknown arch 'resnet50'"),
    (lambda folder, raw: raw["models"][0].update(ensemble_weight="1.0"),
     r"models\[0\] field 'ensemble_weight' is '1.0', expected a number >= 0"),
    (lambda folder, raw: raw["models"][0].update(ensemble_weight=-1), r"field 'ensemble_weight' is -1"),
    (lambda folder, raw: raw["models"][0].pop("sha256"), r"models\[0\] lacks \['sha256'\]"),
    (lambda folder, raw: raw["models"][0].update(fold="0"), r"field 'fold' is '0', expected an integer"),
    (lambda folder, raw: raw["models"][0].update(class_prior=[0.5, 0.5]), r"field 'class_prior'"),
    (lambda folder, raw: raw["models"][0].update(input_shape=[256, 256, 3]), r"field 'input_shape'"),
    (lambda folder, raw: raw["models"][1].update(name="mobilenetv3_large_fold0"), r"models\[1\] has the name of an earlier entry"),
])
def test_a_bad_entry_costs_only_itself_and_is_named(bundle, change, reason):
    import re

    second_entry(bundle)
    edit_manifest(bundle, lambda raw: change(bundle, raw))
    manifest, _ = load_manifest(bundle)
    assert len(manifest.models) == 1
    ((name, why),) = manifest.rejected
    assert re.search(reason, why), why
    (problem,) = manifest_problems(bundle)
    assert name in problem and str(bundle) in problem and re.search(reason, problem)


def test_no_usable_entry_is_an_error_listing_each_reason(bundle):
    edit_manifest(bundle, lambda raw: raw["models"][0].update(arch="resnet50"))
    with pytest.raises(ManifestError, match=r"no usable model\n  mobilenetv3_large_fold0: .*unknown arch 'resnet50'"):
        load_manifest(bundle)


def test_a_good_manifest_has_no_problems_and_keeps_its_class_prior(bundle):
    prior = [0.1, 0.2, 0.3, 0.1, 0.1, 0.2]
    edit_manifest(bundle, lambda raw: raw["models"][0].update(class_prior=prior))
    assert manifest_problems(bundle) == []
    manifest, _ = load_manifest(bundle)
    assert manifest.models[0].class_prior == prior and manifest.rejected == []


def test_an_unknown_preprocessing_is_refused(bundle):
    edit_manifest(bundle, lambda raw: raw["preprocessing"].update(name="raw_eeg_melspec"))
    with pytest.raises(ManifestError, match="unknown preprocessing 'raw_eeg_melspec'"):
        load_manifest(bundle)


def test_changed_preprocessing_parameters_are_refused(bundle):
    edit_manifest(bundle, lambda raw: raw["preprocessing"]["params"].update(window_columns=256))
    with pytest.raises(ManifestError, match="preprocessing parameters"):
        load_manifest(bundle)


def test_classes_in_another_order_are_refused(bundle):
    edit_manifest(bundle, lambda raw: raw.update(classes=list(reversed(CLASSES))))
    with pytest.raises(ManifestError, match="classes"):
        load_manifest(bundle)


def test_another_format_version_is_refused(bundle):
    edit_manifest(bundle, lambda raw: raw.update(format_version=2))
    with pytest.raises(ManifestError, match="format_version 2"):
        load_manifest(bundle)


def test_an_entry_without_sha256_is_refused(bundle):
    edit_manifest(bundle, lambda raw: raw["models"][0].pop("sha256"))
    with pytest.raises(ManifestError, match=r"models\[0\] lacks \['sha256'\]"):
        load_manifest(bundle)


def test_a_missing_manifest_and_invalid_json_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights manifest"):
        load_manifest(tmp_path)
    (tmp_path / "weights_manifest.json").write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "weights_manifest.json").write_text("[]")
    with pytest.raises(ManifestError, match="expected a JSON object"):
        load_manifest(tmp_path)
    (tmp_path / "weights_manifest.json").write_text('{"format_version": 1, "classes": [], "preprocessing": {}}')
    with pytest.raises(ManifestError, match="missing top-level field 'models'"):
        load_manifest(tmp_path)
    assert manifest_problems(tmp_path) == [f"{tmp_path / 'weights_manifest.json'}: missing top-level field 'models'"]


def test_the_committed_manifest_is_valid():
    from conftest import REPO_ROOT

    manifest = read_manifest(REPO_ROOT / "weights_manifest.json")
    assert manifest.classes == list(CLASSES) and manifest.rejected == []
