"""The kernel script's own logic: finding folders on Kaggle, choosing wheels to install."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from hms_offline.bundle.build import COMPETITION_SLUG as SLUG

from conftest import REPO_ROOT


def make_competition(folder):
    (folder / "test_spectrograms").mkdir(parents=True)
    (folder / "test.csv").write_text("spectrogram_id,eeg_id,patient_id\n")
    return folder


def make_bundle(folder):
    folder.mkdir(parents=True)
    (folder / "weights_manifest.json").write_text("{}")
    return folder


@pytest.mark.parametrize("mount", [SLUG, f"competitions/{SLUG}"])
def test_the_competition_is_found_by_its_slug_before_a_copy_that_sorts_first(kernel, tmp_path, caplog, mount):
    """An EDA dataset holding test.csv + test_spectrograms/ must not be taken for the competition."""
    eda_copy = make_competition(tmp_path / "aaa-hms-copy")
    (tmp_path / "aab-other" / "test_spectrograms").mkdir(parents=True)  # no test.csv: not a candidate
    competition = make_competition(tmp_path / mount)
    with caplog.at_level(logging.INFO, logger="hms_kernel"):
        assert kernel.find_competition_dir(tmp_path, strict=True) == competition
    assert f"named {SLUG}" in caplog.text and str(eda_copy) in caplog.text


def test_without_the_slug_the_competition_is_found_by_content(kernel, tmp_path):
    competition = make_competition(tmp_path / "datasets" / "someone" / "hms-data")
    assert kernel.find_competition_dir(tmp_path, strict=True) == competition


@pytest.mark.parametrize("mount", ["my-hms-models", "datasets/alice/my-hms-models"])
def test_the_bundle_is_found_by_its_dataset_id_among_several(kernel, tmp_path, caplog, mount):
    make_bundle(tmp_path / "aaa-old-bundle")
    make_bundle(tmp_path / "datasets" / "bob" / "my-hms-models")  # same slug, another user
    bundle = make_bundle(tmp_path / mount)
    with caplog.at_level(logging.INFO, logger="hms_kernel"):
        assert kernel.find_bundle_dir(tmp_path, "alice/my-hms-models", strict=True) == bundle
    assert "the dataset alice/my-hms-models" in caplog.text


def test_a_dataset_id_not_attached_falls_back_to_content_with_a_warning(kernel, tmp_path, caplog):
    bundle = make_bundle(tmp_path / "datasets" / "alice" / "renamed-bundle")
    with caplog.at_level(logging.INFO, logger="hms_kernel"):
        assert kernel.find_bundle_dir(tmp_path, "alice/my-hms-models", strict=True) == bundle
    assert "alice/my-hms-models is not attached" in caplog.text and "by content" in caplog.text


def two_competition_copies(root):
    return make_competition(root / "aaa-hms-copy"), make_competition(root / "datasets" / "x" / "hms-eda")


def two_bundles(root):
    return make_bundle(root / "aaa-bundle"), make_bundle(root / "datasets" / "x" / "zzz-bundle")


@pytest.mark.parametrize("make, find", [
    (two_competition_copies, lambda kernel, root, strict: kernel.find_competition_dir(root, strict)),
    (two_bundles, lambda kernel, root, strict: kernel.find_bundle_dir(root, None, strict)),
], ids=["competition", "bundle"])
def test_several_candidates_are_logged_or_with_strict_refused(kernel, tmp_path, caplog, make, find):
    first, second = make(tmp_path)
    with caplog.at_level(logging.INFO, logger="hms_kernel"):
        assert find(kernel, tmp_path, strict=False) == first
    assert "2 candidates" in caplog.text and f"took {first}" in caplog.text and f"not {second}" in caplog.text
    with pytest.raises(SystemExit, match="--strict: 2 candidates") as refused:
        find(kernel, tmp_path, strict=True)
    assert str(first) in str(refused.value) and str(second) in str(refused.value)


def test_nothing_found_is_a_clear_error(kernel, tmp_path):
    (tmp_path / "aaa-other-dataset" / "test_spectrograms").mkdir(parents=True)  # no test.csv: not it
    with pytest.raises(SystemExit, match=r"no competition folder \(test.csv \+ test_spectrograms/\) found under"
                                         r".*--data-dir"):
        kernel.find_competition_dir(tmp_path, strict=False)
    with pytest.raises(SystemExit, match=r"no bundle folder \(weights_manifest.json\) found under .*--bundle-dir"):
        kernel.find_bundle_dir(tmp_path, "alice/my-hms-models", strict=False)


def test_on_kaggle_the_folders_are_discovered_with_the_built_dataset_id(kernel, tmp_path, monkeypatch):
    competition = make_competition(tmp_path / "competitions" / SLUG)
    make_bundle(tmp_path / "aaa-bundle")
    bundle = make_bundle(tmp_path / "datasets" / "alice" / "my-hms-models")
    monkeypatch.setattr(kernel, "KAGGLE_INPUT", tmp_path)
    monkeypatch.setattr(kernel, "BUNDLE_DATASET", "alice/my-hms-models")
    args = kernel.parse_args(["--strict"])
    assert (args.data_dir, args.bundle_dir, args.strict) == (competition, bundle, True)


def test_outside_kaggle_the_folders_are_required(kernel, capsys):
    with pytest.raises(SystemExit):
        kernel.parse_args(["--data-dir", "x"])
    assert "required outside Kaggle" in capsys.readouterr().err


def local_args(folder):
    return ["--data-dir", str(folder), "--bundle-dir", str(folder), "--output", str(folder / "s.csv")]


def test_strict_is_off_unless_asked_for(kernel, tmp_path):
    assert kernel.parse_args(local_args(tmp_path)).strict is False
    assert kernel.parse_args([*local_args(tmp_path), "--strict"]).strict is True


@pytest.mark.parametrize("flag", ["--batch-size", "--workers"])
@pytest.mark.parametrize("value", ["0", "-2", "1.5", "many"])
def test_batch_size_and_workers_must_be_whole_numbers_of_at_least_one(kernel, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit):
        kernel.parse_args([*local_args(tmp_path), flag, value])
    assert f"argument {flag}: must be a whole number >= 1, not {value!r}" in capsys.readouterr().err
    assert getattr(kernel.parse_args([*local_args(tmp_path), flag, "1"]), flag[2:].replace("-", "_")) == 1
    assert kernel.parse_args(local_args(tmp_path)).workers is None  # predict_competition's default: one per core


def test_only_missing_or_other_version_wheels_are_installed(kernel):
    lock = {"packages": [
        {"name": "numpy", "version": __import__("numpy").__version__, "file": "numpy.whl"},
        {"name": "pandas", "version": "0.0.1", "file": "pandas-0.0.1.whl"},
        {"name": "surely-not-installed-pkg", "version": "1.0", "file": "s.whl"},
        {"name": "pyarrow", "version": "0.0.1", "file": "pyarrow-0.0.1.whl", "install_if": "missing"},
        {"name": "another-missing-pkg", "version": "1.0", "file": "a.whl", "install_if": "missing"},
    ]}
    assert [p["name"] for p in kernel.wheels_to_install(lock)] == [
        "pandas", "surely-not-installed-pkg", "another-missing-pkg"
    ]


def this_python_lock(bundle) -> Path:
    return bundle / "wheels" / f"lock-cp{sys.version_info.major}{sys.version_info.minor}.json"


def test_a_python_the_bundle_does_not_cover_is_said_plainly(kernel, tmp_path, caplog):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "lock-cp399.json").write_text('{"packages": []}')
    assert kernel.install_keras_stack(tmp_path) == []  # the keras engine tries the installed packages
    assert (f"this kernel runs CPython {sys.version_info.major}.{sys.version_info.minor}, and the bundle ships "
            "its wheels for cp399 only") in caplog.text
    assert kernel.install_keras_stack(tmp_path / "run_folder") == []
    assert "ships no wheels for it" in caplog.text


def test_a_failed_install_names_the_package(kernel, tmp_path):
    write_lock(tmp_path, json.dumps({"packages": [
        {"name": "surely-not-installed-pkg", "version": "1.0", "file": "surely_not_installed_pkg-1.0-py3-none-any.whl"}
    ]}))
    with pytest.raises(kernel.BundleSetupError, match="installing surely-not-installed-pkg==1.0 .* failed"):
        kernel.install_keras_stack(tmp_path)


def test_nothing_is_installed_when_the_image_has_it_all(kernel, tmp_path, caplog):
    import numpy

    write_lock(tmp_path, json.dumps({"packages": [
        {"name": "numpy", "version": "0.0.1", "file": "numpy-0.0.1.whl", "install_if": "missing"}]}))
    with caplog.at_level(logging.INFO):
        assert kernel.install_keras_stack(tmp_path) == []
    assert "already installed" in caplog.text and numpy.__version__ != "0.0.1"


def write_lock(bundle, text):
    path = this_python_lock(bundle)
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


GOOD_ENTRY = {"name": "surely-not-installed-pkg", "version": "1.0", "file": "s-1.0-py3-none-any.whl"}


@pytest.mark.parametrize("lock, problem", [
    ('{"packages": [{"name": "a", "vers', "not a readable JSON file"),
    ("", "not a readable JSON file"),
    ("[]", "lacks a 'packages' list"),
    ('{"format_version": 1}', "lacks a 'packages' list"),
    ('{"packages": {"name": "a"}}', "lacks a 'packages' list"),
    (json.dumps({"packages": [GOOD_ENTRY] * 3 + [{"name": "b", "version": "1.0"}]}), "packages[3] lacks 'file'"),
    (json.dumps({"packages": [{"version": "1.0", "file": "b.whl"}]}), "packages[0] lacks 'name'"),
    (json.dumps({"packages": [{"name": "b", "file": "b.whl"}]}), "packages[0] lacks 'version'"),
    (json.dumps({"packages": [{**GOOD_ENTRY, "version": 1.0}]}), "packages[0] has 'version' 1.0, not a non-empty string"),
    (json.dumps({"packages": ["b.whl"]}), "packages[0] is not an object"),
    (json.dumps({"packages": [{**GOOD_ENTRY, "install_if": "always"}]}), "packages[0] has 'install_if' 'always'"),
], ids=["truncated", "empty", "not-an-object", "no-packages", "packages-not-a-list", "entry-lacks-file",
        "entry-lacks-name", "entry-lacks-version", "version-not-a-string", "entry-not-an-object", "unknown-install-rule"])
def test_a_damaged_lock_file_is_a_clear_error_naming_file_and_field(kernel, tmp_path, lock, problem):
    path = write_lock(tmp_path, lock)
    with pytest.raises(kernel.BundleSetupError) as refused:
        kernel.install_keras_stack(tmp_path)
    assert str(refused.value).startswith(f"{path}: {problem}")


@pytest.mark.slow
def test_a_damaged_lock_costs_only_the_keras_engine_and_is_named_not_a_traceback(synthetic_competition, tmp_path):
    """A model with no exports needs the keras engine; its lock is damaged: the model is
    dropped naming the lock file and field, and with no model left the kernel exits 1, cleanly."""
    from hms_offline.models.manifest import Manifest, make_entry, write_manifest

    bundle = tmp_path / "bundle"
    (bundle / "weights").mkdir(parents=True)
    (bundle / "weights" / "m.weights.h5").write_bytes(b"weights")
    entry = make_entry(bundle / "weights" / "m.weights.h5", bundle, arch="mobilenetv3_large", fold=0)
    write_manifest(Manifest(models=[entry]), bundle / "weights_manifest.json")
    path = write_lock(bundle, json.dumps({"packages": [GOOD_ENTRY] * 3 + [{"name": "b", "version": "1.0"}]}))
    result = subprocess.run([sys.executable, str(REPO_ROOT / "kernel" / "inference.py"), "--data-dir",
                             str(synthetic_competition), "--bundle-dir", str(bundle), "--output",
                             str(tmp_path / "s.csv")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert f"{path}: packages[3] lacks 'file'" in result.stdout
    assert "no model of the ensemble could be loaded" in result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def test_runs_from_a_notebook_cell_without_file_and_with_ipykernel_arguments(tmp_path, monkeypatch):
    """Pasted into a Kaggle notebook cell: no __file__, and sys.argv holds ipykernel's flags."""
    namespace = {"__name__": "kernel_in_a_cell"}
    exec(compile((REPO_ROOT / "kernel" / "inference.py").read_text(), "<cell>", "exec"), namespace)
    monkeypatch.setattr("sys.argv", ["ipykernel_launcher.py", "-f", "/root/.local/kernel-1.json"])
    args = namespace["parse_args"](["-f", "/root/.local/kernel-1.json", "--data-dir", str(tmp_path),
                                     "--bundle-dir", str(tmp_path), "--output", str(tmp_path / "s.csv")])
    assert (args.data_dir, args.output) == (tmp_path, tmp_path / "s.csv")
    assert namespace["import_hms_offline"](tmp_path).__name__ == "hms_offline"


def test_hms_offline_is_imported_from_the_bundles_wheel_without_installing_it(package_wheel):
    """The kernel puts the bundle's pure-Python hms_offline wheel on sys.path (zipimport):
    it is preferred over an installed copy, and nothing is installed; what the kernel imports
    of it (hms_offline.serving.inference) comes from the wheel too."""
    wheel, bundle = package_wheel, package_wheel.parent.parent
    probe = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('k', sys.argv[1]); "
             "k = importlib.util.module_from_spec(spec); spec.loader.exec_module(k); "
             "m = k.import_hms_offline(__import__('pathlib').Path(sys.argv[2])); "
             "import hms_offline.serving.inference as s; print(m.__version__, m.__file__, s.__file__)")
    result = subprocess.run([sys.executable, "-c", probe, str(REPO_ROOT / "kernel" / "inference.py"), str(bundle)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    version, package_file, submodule_file = result.stdout.split()
    assert wheel.name.startswith(f"hms_offline-{version}-") and wheel.name.endswith("-py3-none-any.whl")
    assert package_file.startswith(str(wheel)) and submodule_file.startswith(str(wheel))
