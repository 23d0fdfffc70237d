"""build_bundle.py --verify and --demo: the offline verification of a built bundle, the
Kaggle-shaped base and the fresh environment it runs in, the submission checks, the demo's
manifest merge and baseline.

The fresh environments sit on the Kaggle-shaped base that the set-up step makes once, with
PyPI reachable (`make kaggle-base`: the image's Python 3.12 with the pins of
hms_offline/bundle/kaggle_image.txt: tensorflow 2.20.0, keras 3.13.2, keras-cv 0.9.0, ...);
the bundle's wheels come from the cache `make wheels` fills, for CPython 3.11, 3.12 and 3.13.
--verify runs the dataset exactly as built: the base is the image's Python, the bundle has its
lock. HMS_KAGGLE_BASE and HMS_WHEEL_CACHE name other folders. A missing one fails the tests
with the command to run, rather than skipping them.
"""

import base64
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from hms_offline.bundle.common import BundleError
from hms_offline.bundle.demo import class_prior_submission
from hms_offline.bundle.environment import (DEFAULT_KAGGLE_BASE, NetworkBlock, ask_python, make_fresh_env,
                                            module_origins, offline_environment, pip_list, pip_list_changes,
                                            python_version_of, site_packages_of)
from hms_offline.bundle.kaggle_image import read_image_pins
from hms_offline.bundle.submission_check import check_submission, read_csv_rows
from hms_offline.bundle.verify import PREDICTION_TOLERANCE, max_difference
from hms_offline.bundle.weights import check_weight_files, merge_manifests, read_weights_manifest
from hms_offline.bundle.wheels import DEFAULT_PLATFORM, DEFAULT_PYTHON_VERSIONS, DEFAULT_WHEEL_CACHE, KERNEL_WHEEL_PINS, Target, find_cached_wheel
from hms_offline.digests import sha256_file

from conftest import REPO_ROOT
sys.path.insert(0, str(REPO_ROOT))  # build_bundle.py, the command line
import build_bundle  # noqa: E402

SLUG = "hms-verify-bundle"
HEADER = ["eeg_id", "seizure_vote", "lpd_vote", "gpd_vote", "lrda_vote", "grda_vote", "other_vote"]
TARGETS = tuple(Target(version, DEFAULT_PLATFORM) for version in DEFAULT_PYTHON_VERSIONS)


# ----------------------------------------------------------------------------- set-up

@pytest.fixture(scope="session")
def kaggle_base() -> Path:
    base = Path(os.environ.get("HMS_KAGGLE_BASE", DEFAULT_KAGGLE_BASE))
    if not (base / "bin" / "python").is_file():
        pytest.fail(f"no Kaggle-shaped base venv at {base}: create it once (needs PyPI and a CPython 3.12) with "
                    f"`make kaggle-base`")
    return base


@pytest.fixture(scope="session")
def base_python(kaggle_base) -> Path:
    return kaggle_base / "bin" / "python"


@pytest.fixture(scope="session")
def wheel_cache() -> Path:
    """The cache holding the keras engine's pinned wheels for every Python a bundle ships."""
    cache = Path(os.environ.get("HMS_WHEEL_CACHE", DEFAULT_WHEEL_CACHE))
    missing = [f"{target.cache_name}: {pin}" for target in TARGETS for pin in KERNEL_WHEEL_PINS
               if find_cached_wheel(cache / target.cache_name, pin, target) is None]
    if missing:
        pytest.fail(f"the wheel cache {cache} lacks {', '.join(missing)}: fill it once (needs PyPI) with `make wheels`")
    return cache


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def base_site_packages(base_python: Path) -> Path:
    return Path(site_packages_of(base_python)[0])


# ----------------------------------------------------------------------------- the Kaggle-shaped base

def test_the_kaggle_shaped_base_is_the_pins_file_on_the_images_python(base_python):
    """Exactly the packages and versions of kaggle_image.txt (and pip), on its Python."""
    image = read_image_pins()
    assert python_version_of(base_python) == image.python_version == "3.12"
    installed = {package["name"].lower().replace("_", "-"): package["version"] for package in pip_list(base_python)}
    assert installed.pop("pip")
    assert installed == {pin.name: pin.version for pin in image.pins}


def test_a_fresh_env_sees_the_base_and_lacks_hms_offline_until_the_kernel_imports_it(base_python, tmp_path):
    python = make_fresh_env(base_python, tmp_path / "env")
    # isolated (-I): a PYTHONPATH of the caller (a checkout on it) must not make hms_offline importable here
    attempt = subprocess.run([str(python), "-I", "-c", "import hms_offline"], cwd=tmp_path, capture_output=True,
                             text=True)
    assert attempt.returncode != 0 and "No module named 'hms_offline'" in attempt.stderr
    assert module_origins(python) == {"hms_offline": None}
    seen = ask_python(python, "{m: bool(importlib.util.find_spec(m)) for m in "
                              "['tensorflow', 'keras', 'keras_cv', 'tensorflow_datasets', 'tree', 'numpy', 'pandas', "
                              "'pyarrow', 'sklearn', 'pip']}")
    assert all(seen.values()), seen  # the Kaggle-shaped base is there, through the .pth file
    assert pip_list(python) == pip_list(base_python)


def fake_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel of `name` that only records its version."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f'__version__ = "{version}"\n',
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    digest = lambda text: base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()  # noqa: E731
    files[f"{dist_info}/RECORD"] = "".join(f"{path},sha256={digest(text)},{len(text.encode())}\n"
                                           for path, text in files.items()) + f"{dist_info}/RECORD,,\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.mark.slow
def test_an_install_shadows_the_base_package_shows_in_pip_list_and_leaves_the_base_untouched(base_python, tmp_path):
    """What --verify's `pip list` check catches: a kernel installing over the image's keras."""
    base = base_site_packages(base_python)
    before, base_listed = snapshot(base), pip_list(base_python)
    python = make_fresh_env(base_python, tmp_path / "env")
    listed = pip_list(python)
    wheel = fake_wheel(tmp_path, "keras", "0.0.1")
    installed = subprocess.run([str(python), "-m", "pip", "install", "--no-index", "--no-deps",
                                "--disable-pip-version-check", str(wheel)],
                               env=offline_environment(tmp_path), cwd=tmp_path, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "outside environment" in installed.stdout  # pip declines to uninstall the base's keras
    assert ask_python(python, "__import__('importlib.metadata').metadata.version('keras')") == "0.0.1"
    assert Path(module_origins(python, ("keras",))["keras"]).is_relative_to(tmp_path / "env")
    assert pip_list_changes(listed, pip_list(python)) == ["replaced keras 3.13.2 by 0.0.1"]
    assert pip_list_changes(base_listed, pip_list(base_python)) == []
    assert snapshot(base) == before


def test_pip_list_changes_name_every_install_removal_and_replacement():
    before = [{"name": "keras", "version": "3.13.2"}, {"name": "tqdm", "version": "4.67.1"}]
    after = [{"name": "Keras", "version": "3.15.1"}, {"name": "keras-cv", "version": "0.9.0"}]
    assert pip_list_changes(before, after) == ["installed keras-cv 0.9.0", "removed tqdm 4.67.1",
                                               "replaced keras 3.13.2 by 3.15.1"]
    assert pip_list_changes(before, before) == []


def test_the_network_block_refuses_connections(tmp_path):
    block = NetworkBlock.install(tmp_path / "guard")
    connect = "import socket; socket.create_connection(('1.1.1.1', 443), timeout=5)"
    guarded = block.run([sys.executable, "-c", connect], cwd=tmp_path, timeout=60)
    assert guarded.returncode != 0 and "network access blocked by build_bundle.py --verify" in guarded.stdout
    if block.namespace:  # below the guard, the namespace has no interface to connect through
        unguarded = block.run([sys.executable, "-I", "-c", connect], cwd=tmp_path, timeout=60)
        assert unguarded.returncode != 0 and "unreachable" in unguarded.stdout.lower()


@pytest.mark.slow
def test_keras_cv_made_unimportable_in_a_run_and_its_subprocesses(base_python, tmp_path):
    python = make_fresh_env(base_python, tmp_path / "env")
    block = NetworkBlock.install(tmp_path / "guard", unimportable=("keras_cv",))
    assert block.describe().endswith("; keras_cv unimportable")
    probe = ("import importlib, subprocess, sys\n"
             "for name in ('keras_cv', 'keras_cv.models'):\n"
             "    try:\n"
             "        importlib.import_module(name)\n"
             "    except ImportError as error:\n"
             "        print('refused', name, error)\n"
             "import numpy, hms_offline.bundle.common\n"  # the rest imports as before
             "subprocess.run([sys.executable, '-c', 'import keras_cv'], check=False)\n")
    result = block.run([str(python), "-c", probe], cwd=REPO_ROOT, timeout=120)
    assert "refused keras_cv No module named 'keras_cv' (made unimportable by build_bundle.py --verify)" in result.stdout
    assert "refused keras_cv.models" in result.stdout
    assert ("ModuleNotFoundError: No module named 'keras_cv' (made unimportable by build_bundle.py --verify)"
            in result.stdout), result.stdout  # the child process too
    plain = NetworkBlock.install(tmp_path / "plain")
    assert plain.run([str(python), "-c", "import keras_cv"], cwd=tmp_path, timeout=300).returncode == 0


# ----------------------------------------------------------------------------- submission checks

def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    return path


@pytest.fixture
def sample(tmp_path) -> Path:
    return write_csv(tmp_path / "sample_submission.csv", HEADER, [[11] + [1 / 6] * 6, [22] + [1 / 6] * 6])


GOOD_ROWS = [[11, 0.5, 0.5, 0, 0, 0, 0], [22, 0.1, 0.2, 0.3, 0.1, 0.2, 0.1]]


def test_a_valid_submission_passes(sample, tmp_path):
    assert check_submission(write_csv(tmp_path / "submission.csv", HEADER, GOOD_ROWS), sample) == 2


@pytest.mark.parametrize("header, rows, expected", [
    (HEADER[:-1], [row[:-1] for row in GOOD_ROWS], "columns"),
    (HEADER[:1] + HEADER[2:] + HEADER[1:2], GOOD_ROWS, "columns"),
    (HEADER, GOOD_ROWS[::-1], "ids first differ at data row 1"),
    (HEADER, GOOD_ROWS[:1], "1 rows where sample_submission.csv has 2"),
    (HEADER, [GOOD_ROWS[0], [22, "nan", 0.5, 0.5, 0, 0, 0]], "line 3: not finite"),
    (HEADER, [GOOD_ROWS[0], [22, 1.5, -0.5, 0, 0, 0, 0]], "line 3: a probability outside [0, 1]"),
    (HEADER, [GOOD_ROWS[0], [22, 0.5, 0.5, 0, 0, 0, 1e-5]], "line 3: sums to"),
    (HEADER, [GOOD_ROWS[0], [22, "x", 0.5, 0.5, 0, 0, 0]], "line 3: not a number"),
])
def test_an_invalid_submission_is_refused_saying_why(sample, tmp_path, header, rows, expected):
    submission = write_csv(tmp_path / "submission.csv", header, rows)
    with pytest.raises(BundleError, match="would be refused by Kaggle") as error:
        check_submission(submission, sample)
    assert expected in str(error.value) and error.value.exit_code == 1


def test_rows_summing_to_one_within_the_tolerance_pass(sample, tmp_path):
    rows = [GOOD_ROWS[0], [22, 0.5, 0.5, 0, 0, 0, 5e-7]]
    assert check_submission(write_csv(tmp_path / "submission.csv", HEADER, rows), sample) == 2


# ----------------------------------------------------------------------------- demo pieces

def run_manifest(folder: Path, arch: str, folds: list[int], preprocessing: str = "starter_log_standardize") -> Path:
    """A training run's folder: fold<k>/<arch>_fold<k>.weights.h5 and weights_manifest.json."""
    models = []
    for fold in folds:
        weights = folder / f"fold{fold}" / f"{arch}_fold{fold}.weights.h5"
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.write_bytes(f"{arch} {fold}".encode())
        models.append({"name": f"{arch}_fold{fold}", "arch": arch, "fold": fold, "file": f"fold{fold}/{weights.name}",
                       "sha256": sha256_file(weights), "ensemble_weight": 1.0, "cv_kl": 0.5})
    manifest = {"format_version": 1, "classes": ["seizure", "lpd", "gpd", "lrda", "grda", "other"],
                "preprocessing": {"name": preprocessing, "params": {}}, "models": models}
    (folder / "weights_manifest.json").write_text(json.dumps(manifest))
    return folder / "weights_manifest.json"


def test_merged_manifest_lists_both_runs_with_files_relative_to_it(tmp_path):
    runs = [run_manifest(tmp_path / "demo" / "mobilenetv3_large", "mobilenetv3_large", [0, 1]),
            run_manifest(tmp_path / "demo" / "efficientnetv2_b2", "efficientnetv2_b2", [0, 1])]
    merged = merge_manifests(runs, tmp_path / "demo" / "weights_manifest.json")
    manifest = read_weights_manifest(merged)
    assert [m["name"] for m in manifest["models"]] == [
        "mobilenetv3_large_fold0", "mobilenetv3_large_fold1", "efficientnetv2_b2_fold0", "efficientnetv2_b2_fold1"]
    assert manifest["models"][2]["file"] == "efficientnetv2_b2/fold0/efficientnetv2_b2_fold0.weights.h5"
    check_weight_files(manifest, merged.parent)  # every file found, sha256 as listed
    first = json.loads(runs[0].read_text())
    assert {k: v for k, v in manifest.items() if k != "models"} == {k: v for k, v in first.items() if k != "models"}


def test_merging_runs_that_disagree_or_share_model_names_is_refused(tmp_path):
    mnv3 = run_manifest(tmp_path / "a", "mobilenetv3_large", [0])
    other = run_manifest(tmp_path / "b", "efficientnetv2_b2", [0], preprocessing="something_else")
    with pytest.raises(BundleError, match="preprocessing differs"):
        merge_manifests([mnv3, other], tmp_path / "merged.json")
    with pytest.raises(BundleError, match="share model names"):
        merge_manifests([mnv3, run_manifest(tmp_path / "c", "mobilenetv3_large", [0])], tmp_path / "merged.json")
    assert not (tmp_path / "merged.json").exists()


def test_class_prior_submission_predicts_the_mean_train_vote_fractions(sample, tmp_path):
    votes = [[3, 0, 0, 0, 0, 1], [0, 2, 0, 0, 0, 0]]
    write_csv(tmp_path / "train.csv", ["eeg_id", *HEADER[1:]], [[i, *row] for i, row in enumerate(votes)])
    submission = class_prior_submission(tmp_path, tmp_path / "prior.csv")
    assert check_submission(submission, sample) == 2
    header, rows = read_csv_rows(submission)
    assert header == HEADER and [row[0] for row in rows] == ["11", "22"]
    for row in rows:
        assert [float(v) for v in row[1:]] == pytest.approx([0.375, 0.5, 0, 0, 0, 0.125])


# ----------------------------------------------------------------------------- errors

def fake_dist(folder: Path, locks: tuple[str, ...] = ("lock-cp312.json",)) -> Path:
    (folder / "kernel").mkdir(parents=True)
    (folder / "kernel" / "inference.py").write_text("")
    (folder / SLUG / "wheels").mkdir(parents=True)
    for lock in locks:
        (folder / SLUG / "wheels" / lock).write_text("{}")
    return folder


def test_verify_without_a_kaggle_base_says_how_to_make_it(tmp_path, caplog):
    dist = fake_dist(tmp_path / "dist")
    assert build_bundle.main(["--verify", str(dist), "--kaggle-base", str(tmp_path / "none")]) == 2
    assert "make kaggle-base" in caplog.text and "CPython 3.12" in caplog.text


def test_verify_of_a_folder_without_a_bundle_is_a_clear_error(tmp_path, caplog):
    assert build_bundle.main(["--verify", str(tmp_path)]) == 2
    assert "holds no built bundle" in caplog.text


def test_verify_of_a_bundle_without_a_lock_for_the_bases_python_says_so(tmp_path, kaggle_base, caplog):
    dist = fake_dist(tmp_path / "dist", locks=("lock-cp311.json", "lock-cp313.json"))
    assert build_bundle.main(["--verify", str(dist), "--kaggle-base", str(kaggle_base)]) == 2
    assert "runs CPython 3.12" in caplog.text and "no lock-cp312.json (it ships lock-cp311.json, lock-cp313.json)" \
        in caplog.text


def test_max_difference_compares_two_submissions_row_by_row(tmp_path):
    first = write_csv(tmp_path / "a.csv", HEADER, GOOD_ROWS)
    second = write_csv(tmp_path / "b.csv", HEADER, [GOOD_ROWS[0], [22, 0.1, 0.2, 0.3, 0.1, 0.20005, 0.09995]])
    assert max_difference(first, first) == 0.0
    assert max_difference(first, second) == pytest.approx(5e-5)
    with pytest.raises(BundleError, match="differ in their columns or ids"):
        max_difference(first, write_csv(tmp_path / "c.csv", HEADER, GOOD_ROWS[::-1]))


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def built_dist(tmp_path_factory, freshly_initialised_bundle, wheel_cache) -> Path:
    """The bundle of the freshly initialised fold weights (both archs), built --offline for
    Kaggle: wheels and locks for CPython 3.11, 3.12 and 3.13, and every model's exports."""
    out = tmp_path_factory.mktemp("verify") / "dist"
    assert build_bundle.main(["--kaggle-user", "alice", "--dataset-slug", SLUG, "--manifest",
                              str(freshly_initialised_bundle / "weights_manifest.json"), "--out", str(out),
                              "--wheel-cache", str(wheel_cache), "--offline"]) == 0
    return out


def printed_runs(printed: str) -> dict[str, str]:
    """'Kernel run <label>: ...' lines of --verify's printout, by label."""
    return {line.split(": ", 1)[0][len("Kernel run "):]: line.split(": ", 1)[1]
            for line in printed.splitlines() if line.startswith("Kernel run ")}


@pytest.mark.slow
def test_verify_runs_the_dataset_as_built_on_the_kaggle_shaped_base(built_dist, kaggle_base, base_python, capsys,
                                                                    freshly_initialised_bundle):
    """Two kernel runs (each ~30-60 s) and one reference prediction: the keras fallback in the
    Kaggle-shaped base (--verify-engine keras: it finds everything the image has and installs
    nothing), then --engine auto with keras-cv unimportable (the exports, TFLite on CPU); both
    equal to the training stack's Keras predictions within 1e-4; nothing installed or replaced."""
    dist_before = {p: (built_dist / p).read_bytes() for p in snapshot(built_dist)}
    base_before = snapshot(base_site_packages(base_python))
    assert build_bundle.main(["--verify", str(built_dist), "--kaggle-base", str(kaggle_base),
                              "--verify-engine", "keras"]) == 0
    printed = capsys.readouterr().out
    assert "CPython 3.12, dataset as built" in printed
    assert "installed offline: 0 package(s)" in printed and "the image was left as it was" in printed
    assert "the kernel installed and replaced nothing (pip list before and after" in printed
    assert "models: 3" in printed and "submission rows: 8" in printed
    image_tensorflow = read_image_pins().by_name()["tensorflow-cpu"].version
    trained_with = json.loads((freshly_initialised_bundle / "weights_manifest.json").read_text())["models"][0]
    if tuple(map(int, image_tensorflow.split("."))) < tuple(map(int, trained_with["tensorflow"].split(".")[:3])):
        assert (f"version warning: TensorFlow {image_tensorflow} here is older than the {trained_with['tensorflow']} "
                "that trained 3 model(s)") in printed  # said, and --strict passed: not a fault
    assert "unshare -rn" in printed or "socket guard only" in printed
    runs = printed_runs(printed)
    assert list(runs) == ["--engine keras", "--engine auto, keras_cv unimportable"], printed
    models = ("mobilenetv3_large_fold0", "mobilenetv3_large_fold1", "efficientnetv2_b2_fold0")
    assert f"engines {', '.join(f'{m}: keras' for m in models)}" in runs["--engine keras"]
    assert f"engines {', '.join(f'{m}: tflite' for m in models)}" in runs["--engine auto, keras_cv unimportable"]
    for line in runs.values():
        difference = float(line.split("max difference from the training stack's Keras predictions ")[1].split()[0])
        assert difference <= PREDICTION_TOLERANCE, line
    kl = float(printed.split("KL divergence against test_solution.csv: ")[1].split()[0])
    assert 0 < kl < 10
    assert float(printed.split("--verify wall time: ")[1].split()[0]) > 0
    assert {p: (built_dist / p).read_bytes() for p in snapshot(built_dist)} == dist_before  # as built, untouched
    assert snapshot(base_site_packages(base_python)) == base_before


@pytest.mark.slow
def test_verify_fails_loudly_naming_every_fault_of_the_built_kernel_run(
        built_dist, kaggle_base, synthetic_competition, tmp_path, caplog):
    """The BUILT kernel, offline in a fresh env, under --strict (as --verify runs it) on a
    bundle missing one model and test data with three faults: each is named, nothing is written.
    (A broken test spectrogram leaves its row to the bundle's EEG-view model: a partial row.)"""
    broken = tmp_path / "dist"
    shutil.copytree(built_dist, broken)
    next((broken / SLUG / "weights").glob("efficientnetv2_b2*")).unlink()
    data = shutil.copytree(synthetic_competition, tmp_path / "data")
    test = pd.read_csv(data / "test.csv")
    corrupt = test["spectrogram_id"][0]
    (data / "test_spectrograms" / f"{corrupt}.parquet").write_bytes(b"PAR1 truncated")
    (data / "test_spectrograms" / f"{test['spectrogram_id'][1]}.parquet").unlink()
    lines = (data / "test.csv").read_text().splitlines()
    lines[3] = "," + lines[3].split(",", 1)[1]  # line 4: blank spectrogram_id
    (data / "test.csv").write_text("\n".join(lines) + "\n")
    assert build_bundle.main(["--verify", str(broken), "--verify-data", str(data), "--kaggle-base",
                              str(kaggle_base)]) == 1
    text = caplog.text
    assert "the kernel failed offline" in text and "--strict: 5 problem(s), no submission written" in text
    assert "model efficientnetv2_b2_fold0" in text and "is missing" in text
    partial = "predicted without some models at stage convert: input view starter_log_standardize"
    assert f"eeg_id {test['eeg_id'][0]} (spectrogram {corrupt}) {partial}" in text
    assert f"eeg_id {test['eeg_id'][1]} (spectrogram {test['spectrogram_id'][1]}) {partial}" in text
    assert "spectrogram_id cell blank (test.csv line 4)" in text
