import json
import re

import pytest

from hms_offline.constants import CLASSES
from hms_offline.digests import sha256_file, sha256_tree
from hms_offline.features.spectrogram import VIEW_NAME, VIEW_PARAMS
from hms_offline.features.views import view_record
from hms_offline.models.manifest import (
    EXPORT_KINDS,
    FORMAT_VERSION,
    Manifest,
    ManifestError,
    export_path,
    export_problem,
    load_manifest,
    make_entry,
    manifest_problems,
    read_manifest,
    write_manifest,
)

STARTER_INPUT = {"name": VIEW_NAME, "params": VIEW_PARAMS}
ENTRY_KEYS = ["name", "arch", "fold", "file", "sha256", "input", "input_shape", "include_rescaling", "ensemble_weight",
              "cv_kl", "class_prior", "tensorflow", "keras", "keras_cv"]


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


def as_format_1(raw):
    """What the same manifest looked like before format 2: one top-level preprocessing."""
    models = [{key: value for key, value in model.items() if key != "input"} for model in raw["models"]]
    raw.clear()
    raw.update(format_version=1, classes=list(CLASSES), preprocessing=STARTER_INPUT, models=models)


def test_written_manifest_has_the_documented_schema(bundle):
    raw = json.loads((bundle / "weights_manifest.json").read_text())
    assert list(raw) == ["format_version", "classes", "models"]
    assert raw["format_version"] == FORMAT_VERSION == 2
    assert raw["classes"] == list(CLASSES)
    (entry,) = raw["models"]
    assert list(entry) == ENTRY_KEYS  # no `exports` until build_bundle.py adds them
    assert entry["file"] == "weights/mobilenetv3_large_fold0.weights.h5"
    assert entry["sha256"] == sha256_file(bundle / entry["file"])
    assert entry["input"] == {"name": "starter_log_standardize", "params": VIEW_PARAMS}
    assert entry["input_shape"] == [400, 300, 3]
    assert entry["name"] == "mobilenetv3_large_fold0"
    assert (entry["arch"], entry["fold"], entry["ensemble_weight"], entry["cv_kl"]) == ("mobilenetv3_large", 0, 1.0, 0.9)
    assert entry["include_rescaling"] is True and entry["class_prior"] is None
    assert entry["tensorflow"] and entry["keras"] and entry["keras_cv"] == "0.9.0"


def test_load_round_trips(bundle):
    manifest, root = load_manifest(bundle)
    assert root == bundle
    assert [m.name for m in manifest.models] == ["mobilenetv3_large_fold0"]
    assert manifest.models[0].input == STARTER_INPUT and manifest.models[0].exports == {}
    assert read_manifest(bundle / "weights_manifest.json") == manifest


def test_format_1_is_read_its_preprocessing_becoming_each_entrys_input(bundle):
    second_entry(bundle)
    edit_manifest(bundle, as_format_1)
    assert json.loads((bundle / "weights_manifest.json").read_text())["format_version"] == 1
    manifest, _ = load_manifest(bundle)
    assert manifest.read_format == 1 and manifest.rejected == []
    assert [m.input for m in manifest.models] == [STARTER_INPUT, STARTER_INPUT]
    assert manifest_problems(bundle) == []
    # written again, it is format 2
    write_manifest(manifest, bundle / "again.json")
    again = json.loads((bundle / "again.json").read_text())
    assert again["format_version"] == 2 and "preprocessing" not in again
    assert [m["input"] for m in again["models"]] == [STARTER_INPUT, STARTER_INPUT]
    assert read_manifest(bundle / "again.json") == manifest


def test_format_1_with_an_unknown_preprocessing_rejects_every_entry(bundle):
    def unknown(raw):
        as_format_1(raw)
        raw["preprocessing"] = {"name": "raw_eeg_melspec", "params": {}}

    edit_manifest(bundle, unknown)
    with pytest.raises(ManifestError, match=r"no usable model\n  mobilenetv3_large_fold0: models\[0\] has unknown "
                                            r"input view 'raw_eeg_melspec'"):
        load_manifest(bundle)


def eeg_input(**changed) -> dict:
    """The EEG view's record with some of its parameters changed."""
    record = view_record("eeg_bipolar_stft")
    record["params"].update(changed)
    return record


def test_entries_of_every_view_are_read_and_an_ensemble_may_mix_them(bundle):
    for fold, view in [(1, "eeg_bipolar_stft"), (2, "kaggle_eeg_stacked")]:
        weights = bundle / "weights" / f"fold{fold}.weights.h5"
        weights.write_bytes(b"fold")
        entry = make_entry(weights, bundle, arch="mobilenetv3_large", fold=fold, input_view=view_record(view))
        edit_manifest(bundle, lambda raw: raw["models"].append(json.loads(Manifest(models=[entry]).to_json())["models"][0]))
    assert manifest_problems(bundle) == []
    manifest, _ = load_manifest(bundle)
    assert [m.input["name"] for m in manifest.models] == ["starter_log_standardize", "eeg_bipolar_stft",
                                                          "kaggle_eeg_stacked"]
    assert manifest.models[1].input == view_record("eeg_bipolar_stft")


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
    # the input view, per entry in format 2
    (lambda folder, raw: raw["models"][0].pop("input"), r"models\[0\] lacks \['input'\]"),
    (lambda folder, raw: raw["models"][0]["input"].update(name="raw_eeg_melspec"),
     r"models\[0\] has unknown input view 'raw_eeg_melspec'; this code implements \['eeg_bipolar_stft', "
     r"'kaggle_eeg_stacked', 'starter_log_standardize'\]"),
    (lambda folder, raw: raw["models"][0]["input"]["params"].update(window_columns=256),
     r"models\[0\] input 'starter_log_standardize': preprocessing parameters .*'window_columns': 256.* differ"),
    (lambda folder, raw: raw["models"][0]["input"].pop("params"), r"models\[0\] field 'input' is .*expected an object"),
    (lambda folder, raw: raw["models"][0].update(input=eeg_input(hop_samples=32)),
     r"models\[0\] input 'eeg_bipolar_stft': preprocessing parameters .*'hop_samples': 32.* differ from this code's"),
    (lambda folder, raw: raw["models"][0].update(input=eeg_input(montage=[[["Fp1", "F7"]]])),
     r"models\[0\] input 'eeg_bipolar_stft': preprocessing parameters .*'montage': \[\[\['Fp1', 'F7'\]\]\]"),
    (lambda folder, raw: raw["models"][0].update(input={"name": "kaggle_eeg_stacked", "params": VIEW_PARAMS}),
     r"models\[0\] input 'kaggle_eeg_stacked': preprocessing parameters"),
    (lambda folder, raw: raw["models"][0].update(input="starter_log_standardize"), r"field 'input' is 'starter_log_sta"),
])
def test_a_bad_entry_costs_only_itself_and_is_named(bundle, change, reason):
    second_entry(bundle)
    edit_manifest(bundle, lambda raw: change(bundle, raw))
    manifest, _ = load_manifest(bundle)
    assert len(manifest.models) == 1
    ((name, why),) = manifest.rejected
    assert re.search(reason, why), why
    (problem,) = manifest_problems(bundle)
    assert name in problem and str(bundle) in problem and re.search(reason, problem)


def test_an_ensemble_of_entries_with_and_without_a_prior_is_read(bundle):
    prior = [0.1, 0.2, 0.3, 0.1, 0.1, 0.2]
    edit_manifest(bundle, lambda raw: raw["models"][0].update(class_prior=prior))
    assert manifest_problems(bundle) == []
    manifest, _ = load_manifest(bundle)
    assert manifest.models[0].class_prior == prior and manifest.rejected == []


def test_no_usable_entry_is_an_error_listing_each_reason(bundle):
    edit_manifest(bundle, lambda raw: raw["models"][0].update(arch="resnet50"))
    with pytest.raises(ManifestError, match=r"no usable model\n  mobilenetv3_large_fold0: .*unknown arch 'resnet50'"):
        load_manifest(bundle)


def test_classes_in_another_order_are_refused(bundle):
    edit_manifest(bundle, lambda raw: raw.update(classes=list(reversed(CLASSES))))
    with pytest.raises(ManifestError, match="classes"):
        load_manifest(bundle)


@pytest.mark.parametrize("version", [3, 0, "2", True])
def test_an_unknown_format_version_is_refused(bundle, version):
    edit_manifest(bundle, lambda raw: raw.update(format_version=version))
    with pytest.raises(ManifestError, match=f"format_version {re.escape(repr(version))}, this code reads 1 and 2"):
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
    (tmp_path / "weights_manifest.json").write_text('{"format_version": 2, "classes": []}')
    with pytest.raises(ManifestError, match="missing top-level field 'models'"):
        load_manifest(tmp_path)
    (tmp_path / "weights_manifest.json").write_text('{"format_version": 1, "classes": [], "models": []}')
    with pytest.raises(ManifestError, match="missing top-level field 'preprocessing'"):
        load_manifest(tmp_path)
    assert manifest_problems(tmp_path) == [f"{tmp_path / 'weights_manifest.json'}: missing top-level field 'preprocessing'"]


def test_the_committed_manifest_is_valid():
    from conftest import REPO_ROOT

    manifest = read_manifest(REPO_ROOT / "weights_manifest.json")
    assert manifest.classes == list(CLASSES) and manifest.rejected == []


# ----------------------------------------------------------------------------- exports

def add_exports(folder):
    """Fake (but digest-true) exports for the bundle's entry, listed in its manifest."""
    saved_model = folder / "exports" / "mobilenetv3_large_fold0" / "saved_model"
    (saved_model / "variables").mkdir(parents=True)
    (saved_model / "saved_model.pb").write_bytes(b"graph")
    (saved_model / "variables" / "variables.data-00000-of-00001").write_bytes(b"values")
    tflite = folder / "exports" / "mobilenetv3_large_fold0.tflite"
    tflite.write_bytes(b"TFL3")
    exports = {"saved_model": {"path": "exports/mobilenetv3_large_fold0/saved_model", "sha256": sha256_tree(saved_model)},
               "tflite": {"path": "exports/mobilenetv3_large_fold0.tflite", "sha256": sha256_file(tflite)}}
    edit_manifest(folder, lambda raw: raw["models"][0].update(exports=exports))
    return saved_model, tflite


def test_listed_exports_are_found_checked_and_round_trip(bundle):
    saved_model, tflite = add_exports(bundle)
    manifest, root = load_manifest(bundle)
    (entry,) = manifest.models
    assert export_path(entry, root, "saved_model") == saved_model
    assert export_path(entry, root, "tflite") == tflite
    assert [export_problem(entry, root, kind) for kind in EXPORT_KINDS] == [None, None]
    assert manifest_problems(bundle, require_exports=True) == []
    write_manifest(manifest, bundle / "again.json")
    assert list(json.loads((bundle / "again.json").read_text())["models"][0]) == ENTRY_KEYS + ["exports"]
    assert read_manifest(bundle / "again.json") == manifest
    with pytest.raises(ValueError, match="unknown export kind 'onnx'"):
        export_problem(entry, root, "onnx")


def damage_saved_model_file(folder):
    (folder / "exports" / "mobilenetv3_large_fold0" / "saved_model" / "saved_model.pb").write_bytes(b"other graph")


def add_a_file_to_the_saved_model(folder):
    (folder / "exports" / "mobilenetv3_large_fold0" / "saved_model" / "extra.txt").write_text("x")


def remove_tflite(folder):
    (folder / "exports" / "mobilenetv3_large_fold0.tflite").unlink()


def unlist_tflite(folder):
    edit_manifest(folder, lambda raw: raw["models"][0]["exports"].pop("tflite"))


def mistype_tflite_listing(folder):
    edit_manifest(folder, lambda raw: raw["models"][0]["exports"]["tflite"].update(sha256="abc"))


@pytest.mark.parametrize("damage, kind, reason", [
    (damage_saved_model_file, "saved_model", r"digest of saved_model export .*saved_model is [0-9a-f]{64}, the manifest says"),
    (add_a_file_to_the_saved_model, "saved_model", r"digest of saved_model export"),
    (remove_tflite, "tflite", r"tflite export file .*mobilenetv3_large_fold0.tflite is missing"),
    (unlist_tflite, "tflite", r"the manifest lists no tflite export"),
    (mistype_tflite_listing, "tflite", r"its tflite export is listed as .*'abc'.*expected"),
])
def test_a_bad_export_costs_only_that_export_never_the_entry(bundle, damage, kind, reason):
    add_exports(bundle)
    damage(bundle)
    manifest, root = load_manifest(bundle)
    assert manifest.rejected == [] and len(manifest.models) == 1  # the model itself is still usable
    (entry,) = manifest.models
    other = next(k for k in EXPORT_KINDS if k != kind)
    assert export_problem(entry, root, other) is None
    assert re.search(reason, export_problem(entry, root, kind))
    assert manifest_problems(bundle) == []
    (problem,) = manifest_problems(bundle, require_exports=True)
    assert "model 'mobilenetv3_large_fold0'" in problem and re.search(reason, problem)


def test_an_entry_without_exports_has_no_export_path(bundle):
    manifest, root = load_manifest(bundle)
    (entry,) = manifest.models
    assert export_path(entry, root, "tflite") is None and export_path(entry, root, "saved_model") is None
    assert export_problem(entry, root, "saved_model") == "the manifest lists no saved_model export"
    assert len(manifest_problems(bundle, require_exports=True)) == 2
