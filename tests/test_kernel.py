"""The kernel script's own logic: finding folders on Kaggle, choosing wheels to install."""

import importlib.util
import json

import pytest

from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def kernel():
    spec = importlib.util.spec_from_file_location("hms_kernel", REPO_ROOT / "kernel" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_kaggle_input(root):
    """/kaggle/input as Kaggle mounts it today: competitions/<slug>/ and datasets/<user>/<slug>/."""
    competition = root / "competitions" / "hms-harmful-brain-activity-classification"
    (competition / "test_spectrograms").mkdir(parents=True)
    (competition / "test.csv").write_text("spectrogram_id,eeg_id,patient_id\n")
    bundle = root / "datasets" / "someone" / "my-hms-models"
    bundle.mkdir(parents=True)
    (bundle / "weights_manifest.json").write_text("{}")
    (root / "aaa-other-dataset" / "test_spectrograms").mkdir(parents=True)  # no test.csv: not it
    return competition, bundle


def test_finds_competition_and_bundle_by_content_not_by_name(kernel, tmp_path):
    competition, bundle = make_kaggle_input(tmp_path)
    assert kernel.find_dir(tmp_path, kernel.is_competition_dir, "competition") == competition
    assert kernel.find_dir(tmp_path, kernel.is_bundle_dir, "bundle") == bundle


def test_a_missing_folder_is_a_clear_error(kernel, tmp_path):
    with pytest.raises(FileNotFoundError, match="no competition folder .* found under"):
        kernel.find_dir(tmp_path, kernel.is_competition_dir, "competition folder (test.csv + test_spectrograms/)")


def test_outside_kaggle_the_folders_are_required(kernel, capsys):
    with pytest.raises(SystemExit):
        kernel.parse_args(["--data-dir", "x"])
    assert "required outside Kaggle" in capsys.readouterr().err


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


def test_without_a_lock_file_nothing_is_installed(kernel, tmp_path):
    assert kernel.install_bundle_wheels(tmp_path) == []


def test_a_failed_install_names_the_package(kernel, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "lock.json").write_text(json.dumps({"packages": [
        {"name": "surely-not-installed-pkg", "version": "1.0", "file": "surely_not_installed_pkg-1.0-py3-none-any.whl"}
    ]}))
    with pytest.raises(SystemExit, match="installing surely-not-installed-pkg==1.0 .* failed"):
        kernel.install_bundle_wheels(tmp_path)


def test_runs_from_a_notebook_cell_without_file_and_with_ipykernel_arguments(tmp_path, monkeypatch):
    """Pasted into a Kaggle notebook cell: no __file__, and sys.argv holds ipykernel's flags."""
    namespace = {"__name__": "kernel_in_a_cell"}
    exec(compile((REPO_ROOT / "kernel" / "inference.py").read_text(), "<cell>", "exec"), namespace)
    monkeypatch.setattr("sys.argv", ["ipykernel_launcher.py", "-f", "/root/.local/kernel-1.json"])
    args = namespace["parse_args"](["-f", "/root/.local/kernel-1.json", "--data-dir", str(tmp_path),
                                     "--bundle-dir", str(tmp_path), "--output", str(tmp_path / "s.csv")])
    assert (args.data_dir, args.output) == (tmp_path, tmp_path / "s.csv")
    assert namespace["import_hms_offline"](tmp_path).__name__ == "hms_offline"
