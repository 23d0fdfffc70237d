"""build_bundle.py: the dataset and kernel folders, their metadata, refusals, reproducibility.

Wheels: these tests never touch the network. They build with `--offline` from the wheel
cache that the set-up step fills once, with PyPI reachable:

    python build_bundle.py --fetch-wheels      # CPython 3.12 / manylinux2014_x86_64 -> .cache/wheels/

The real cached wheels (about 10 MB), not stand-ins, so the tests check the set that ships.
HMS_WHEEL_CACHE names another cache folder. An unfilled cache fails the tests with the
command to run, rather than skipping them.

The source: a throwaway git repository in tmp_path holding a copy of this repo's packed
files (hms_offline/, pyproject.toml, README, kernel/inference.py), committed at a fixed
date, so the tests neither depend on the working tree being clean nor write to it. Weights:
two small files of plain bytes (build_bundle copies and hashes them, never loads them).
"""

import difflib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import hms_offline.bundle.build
from hms_offline.bundle.build import BuildResult, built_kernel_script, kernel_metadata
from hms_offline.bundle.common import KERNEL_SCRIPT, BundleError, display_path
from hms_offline.bundle.kaggle_cli import push_bundle, upload_commands
from hms_offline.bundle.package import SourceState, files_to_pack, stamp_version
from hms_offline.bundle.weights import check_with_kernel_loader
from hms_offline.bundle.wheels import (DEFAULT_PLATFORM, DEFAULT_PYTHON_VERSION, KERNEL_WHEEL_PINS,
                                       PROVIDED_BY_KAGGLE_IMAGE, Target, canonical_name, compatible_platform_tags,
                                       find_cached_wheel, parse_pin, parse_wheel_filename, wheel_fits_target)
from hms_offline.cli import main as hms_offline_main
from hms_offline.constants import CLASSES
from hms_offline.preprocess import PREPROCESSING_NAME, PREPROCESSING_PARAMS

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # build_bundle.py, the command line
import build_bundle  # noqa: E402

USER = "alice"
SLUG = "hms-test-bundle"
TARGET = Target(DEFAULT_PYTHON_VERSION, DEFAULT_PLATFORM)
PLACEHOLDER_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "hms-offline"
dynamic = ["version"]

[tool.setuptools]
packages = ["hms_offline"]

[tool.setuptools.dynamic]
version = {attr = "hms_offline.__version__"}
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def wheel_cache() -> Path:
    cache = Path(os.environ.get("HMS_WHEEL_CACHE", REPO_ROOT / ".cache" / "wheels"))
    missing = [pin for pin in KERNEL_WHEEL_PINS if find_cached_wheel(cache / TARGET.cache_name, pin, TARGET) is None]
    if missing:
        pytest.fail(f"the wheel cache {cache / TARGET.cache_name} lacks {', '.join(missing)}: fill it once "
                    f"(needs PyPI) with `python build_bundle.py --fetch-wheels --wheel-cache {cache}`")
    return cache


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_DATE="2024-03-01T12:00:00+00:00", GIT_COMMITTER_DATE="2024-03-01T12:00:00+00:00")
    command = ["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.com",
               "-c", "commit.gpgsign=false", *args]
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="session")
def source_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("source") / "repo"
    for name in files_to_pack(REPO_ROOT) + [KERNEL_SCRIPT.as_posix()]:
        if (REPO_ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_bytes((REPO_ROOT / name).read_bytes())
    if not (repo / "pyproject.toml").exists():
        (repo / "pyproject.toml").write_text(PLACEHOLDER_PYPROJECT)
    if not (repo / KERNEL_SCRIPT).exists():
        (repo / KERNEL_SCRIPT).parent.mkdir(parents=True, exist_ok=True)
        (repo / KERNEL_SCRIPT).write_text("print('placeholder kernel')\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "test source")
    return repo


def write_weights(folder: Path) -> Path:
    """Two dummy weight files in nested folders and a manifest listing them."""
    models = []
    for fold, arch in enumerate(["mobilenetv3_large", "efficientnetv2_b2"]):
        weights = folder / "runs" / arch / f"fold{fold}" / "best.weights.h5"
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.write_bytes(bytes(range(256)) * (fold + 3))
        models.append({
            "name": f"{arch}_fold{fold}", "arch": arch, "fold": fold,
            "file": weights.relative_to(folder).as_posix(), "sha256": sha256(weights),
            "input_shape": [400, 300, 3], "include_rescaling": True, "ensemble_weight": 1.0 + fold,
            "cv_kl": 0.7 - 0.1 * fold, "tensorflow": "2.21.0", "keras": "3.15.1", "keras_cv": "0.9.0",
        })
    manifest = {
        "format_version": 1,
        "classes": list(CLASSES),
        "preprocessing": {"name": PREPROCESSING_NAME, "params": dict(PREPROCESSING_PARAMS)},
        "models": models,
    }
    path = folder / "weights_manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def build(repo: Path, manifest: Path, out: Path, cache: Path, *extra: str) -> int:
    return build_bundle.main(["--kaggle-user", USER, "--dataset-slug", SLUG, "--manifest", str(manifest), "--out", str(out),
                    "--repo", str(repo), "--wheel-cache", str(cache), "--offline", *extra])


@pytest.fixture(scope="module")
def weights_manifest(tmp_path_factory) -> Path:
    return write_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory, source_repo, weights_manifest, wheel_cache) -> tuple[Path, Path]:
    """The same inputs built twice, into two output folders."""
    outs = [tmp_path_factory.mktemp("dist_a"), tmp_path_factory.mktemp("dist_b")]
    for out in outs:
        assert build(source_repo, weights_manifest, out, wheel_cache) == 0
    return outs[0], outs[1]


@pytest.fixture(scope="module")
def dataset(two_builds) -> Path:
    return two_builds[0] / SLUG


def relative_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_dataset_and_kernel_folders_hold_exactly_the_bundle(two_builds, dataset):
    out = two_builds[0]
    assert {p.name for p in out.iterdir()} == {"kernel", SLUG}  # no staging folder left behind
    files = relative_files(dataset)
    wheels = {f for f in files if f.startswith("wheels/") and f.endswith(".whl")}
    assert files - wheels == {
        "BUNDLE.json", "README.md", "dataset-metadata.json", "weights_manifest.json", "wheels/lock.json",
        "weights/mobilenetv3_large_fold0.weights.h5", "weights/efficientnetv2_b2_fold1.weights.h5",
    }
    names = {parse_wheel_filename(Path(w).name).name for w in wheels}
    assert names == {parse_pin(pin)[0] for pin in KERNEL_WHEEL_PINS} | {"hms-offline"}
    assert relative_files(out / "kernel") == {"inference.py", "kernel-metadata.json"}


def test_dataset_metadata(dataset):
    metadata = json.loads((dataset / "dataset-metadata.json").read_text())
    assert metadata == {"title": metadata["title"], "id": f"{USER}/{SLUG}", "licenses": [{"name": "CC0-1.0"}]}
    assert 6 <= len(metadata["title"]) <= 50
    assert "hms_offline" in (dataset / "README.md").read_text()


def test_weights_copied_and_manifest_relative_to_the_dataset(dataset, weights_manifest):
    original = json.loads(weights_manifest.read_text())
    bundled = json.loads((dataset / "weights_manifest.json").read_text())
    assert {k: v for k, v in bundled.items() if k != "models"} == {k: v for k, v in original.items() if k != "models"}
    assert len(bundled["models"]) == 2
    for before, after in zip(original["models"], bundled["models"]):
        assert after["file"].startswith("weights/") and not Path(after["file"]).is_absolute()
        assert sha256(dataset / after["file"]) == before["sha256"] == after["sha256"]
        assert {k: v for k, v in after.items() if k != "file"} == {k: v for k, v in before.items() if k != "file"}


def test_lock_lists_every_wheel_with_its_sha256(dataset, source_repo):
    lock = json.loads((dataset / "wheels" / "lock.json").read_text())
    assert lock["format_version"] == 1
    assert (lock["python_version"], lock["platform"]) == (TARGET.python_version, TARGET.platform)
    packages = lock["packages"]
    assert [p["name"] for p in packages] == sorted(p["name"] for p in packages)
    assert {p["file"] for p in packages} == {p.name for p in (dataset / "wheels").glob("*.whl")}
    for package in packages:
        wheel = dataset / "wheels" / package["file"]
        assert package["sha256"] == sha256(wheel), package["file"]
        assert package["name"] == canonical_name(package["name"])
        assert parse_wheel_filename(wheel.name).version == package["version"]
        assert wheel_fits_target(parse_wheel_filename(wheel.name), TARGET)
        assert package["name"] not in PROVIDED_BY_KAGGLE_IMAGE
    versions = {p["name"]: p["version"] for p in packages}
    assert {n: v for n, v in versions.items() if n != "hms-offline"} == dict(map(parse_pin, KERNEL_WHEEL_PINS))
    commit = git(source_repo, "rev-parse", "HEAD").strip()
    assert versions["hms-offline"].endswith(f"+g{commit[:7]}")  # a clean checkout: no .dirty


def test_package_wheel_is_stamped_without_touching_the_source(dataset, source_repo):
    lock = json.loads((dataset / "wheels" / "lock.json").read_text())
    package = next(p for p in lock["packages"] if p["name"] == "hms-offline")
    with zipfile.ZipFile(dataset / "wheels" / package["file"]) as wheel:
        metadata = wheel.read(f"hms_offline-{package['version']}.dist-info/METADATA").decode()
        init = wheel.read("hms_offline/__init__.py").decode()
    assert f"\nVersion: {package['version']}\n" in metadata
    assert f'__version__ = "{package["version"]}"' in init
    assert git(source_repo, "status", "--porcelain", "--ignored") == ""  # no build/, egg-info, edits


def test_bundle_json_describes_every_file(dataset, source_repo):
    record = json.loads((dataset / "BUNDLE.json").read_text())
    assert record["git"]["commit"] == git(source_repo, "rev-parse", "HEAD").strip()
    assert record["git"]["dirty"] is False
    assert record["versions"]["python"] == TARGET.python_version
    assert record["versions"]["platform"] == TARGET.platform
    assert record["versions"]["pins"] == dict(map(parse_pin, KERNEL_WHEEL_PINS))
    listed = {item["path"]: item for item in record["files"]}
    assert set(listed) == relative_files(dataset) - {"BUNDLE.json"}
    for path, item in listed.items():
        assert (item["size"], item["sha256"]) == ((dataset / path).stat().st_size, sha256(dataset / path)), path
    assert record["total_size"] == sum(item["size"] for item in record["files"])
    assert record["built_at"]


def test_two_builds_are_byte_identical_but_for_the_build_time(two_builds):
    first, second = (out / SLUG for out in two_builds)
    assert relative_files(first) == relative_files(second)
    for name in relative_files(first) - {"BUNDLE.json"}:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    records = [json.loads((folder / "BUNDLE.json").read_text()) for folder in (first, second)]
    for record in records:
        del record["built_at"]
    assert records[0] == records[1]
    kernels = [out / "kernel" for out in two_builds]
    for name in relative_files(kernels[0]):
        assert (kernels[0] / name).read_bytes() == (kernels[1] / name).read_bytes()


def test_the_built_kernel_differs_from_the_source_only_in_its_dataset_id(two_builds, source_repo):
    source = (source_repo / KERNEL_SCRIPT).read_text().splitlines(keepends=True)
    built = (two_builds[0] / "kernel" / "inference.py").read_text().splitlines(keepends=True)
    changed = [line for line in difflib.ndiff(source, built) if line[:2] in ("- ", "+ ")]
    assert len(changed) == 2, changed
    assert changed[0].startswith("- BUNDLE_DATASET = None  # build_bundle.py replaces this line")
    assert changed[1].startswith(f'+ BUNDLE_DATASET = "{USER}/{SLUG}"  #')


@pytest.mark.parametrize("marked_lines", [0, 2])
def test_a_kernel_without_exactly_one_dataset_id_line_is_refused(tmp_path, marked_lines):
    script = tmp_path / "inference.py"
    marked = "BUNDLE_DATASET = None  # build_bundle.py replaces this line\n"
    script.write_text("print('kernel')\n" + marked * marked_lines)
    with pytest.raises(BundleError, match=f"found {marked_lines}"):
        built_kernel_script(script, f"{USER}/{SLUG}")


def test_kernel_metadata(two_builds):
    kernel = two_builds[0] / "kernel"
    metadata = json.loads((kernel / "kernel-metadata.json").read_text())
    assert metadata == {
        "id": f"{USER}/{SLUG}-inference",
        "title": metadata["title"],
        "code_file": "inference.py",
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": False,
        "enable_internet": False,
        "dataset_sources": [f"{USER}/{SLUG}"],
        "competition_sources": ["hms-harmful-brain-activity-classification"],
    }
    # Kaggle derives the kernel's slug from its title
    assert metadata["title"].lower().replace(" ", "-") == metadata["id"].split("/")[1]
    assert kernel_metadata(USER, SLUG, gpu=True)["enable_gpu"] is True


def test_prints_the_upload_commands(tmp_path, source_repo, weights_manifest, wheel_cache, capsys):
    assert build(source_repo, weights_manifest, tmp_path / "dist", wheel_cache) == 0
    printed = capsys.readouterr().out
    dataset = display_path(tmp_path / "dist" / SLUG)
    assert f"kaggle datasets create -p {dataset} --dir-mode zip" in printed
    assert f"kaggle datasets version -p {dataset} -m " in printed
    uploads = [line for line in printed.splitlines() if "kaggle datasets" in line]
    assert len(uploads) == 2 and all(line.endswith("--dir-mode zip") for line in uploads)
    assert f"kaggle kernels push -p {display_path(tmp_path / 'dist' / 'kernel')}" in printed


@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_refuses_a_missing_or_altered_weight_file(tmp_path, source_repo, wheel_cache, caplog, damage):
    manifest = write_weights(tmp_path / "weights")
    victim = tmp_path / "weights" / json.loads(manifest.read_text())["models"][1]["file"]
    if damage == "missing":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes() + b"\0")
    with caplog.at_level(logging.ERROR):
        assert build(source_repo, manifest, tmp_path / "dist", wheel_cache) == 2
    assert str(victim) in caplog.text
    assert ("missing" if damage == "missing" else "sha256") in caplog.text
    assert not (tmp_path / "dist" / SLUG).exists()


def rewrite_manifest(path: Path, change) -> Path:
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return path


def unknown_arch(manifest):
    manifest["models"][1]["arch"] = "resnet9000"


def changed_preprocessing(manifest):
    manifest["preprocessing"]["params"]["window_columns"] = 256


def no_models(manifest):
    manifest["models"] = []


@pytest.mark.parametrize("change, problem", [
    (unknown_arch, "model 'efficientnetv2_b2_fold1': models[1] has unknown arch 'resnet9000'"),
    (changed_preprocessing, "preprocessing parameters"),
    (no_models, "no models"),
], ids=["unknown-arch", "changed-preprocessing", "no-models"])
def test_a_manifest_the_kernel_would_refuse_is_never_built(tmp_path, source_repo, wheel_cache, caplog, change,
                                                           problem):
    manifest = rewrite_manifest(write_weights(tmp_path / "weights"), change)
    with caplog.at_level(logging.ERROR):
        assert build(source_repo, manifest, tmp_path / "dist", wheel_cache) == 2
    assert "the kernel would refuse the weights manifest" in caplog.text
    assert f"{manifest}: " in caplog.text and problem in caplog.text
    assert not (tmp_path / "dist" / SLUG).exists()


def packed_copy(folder: Path, manifest_code_appended: str) -> Path:
    """A copy of hms_offline whose manifest.py ends with extra code."""
    shutil.copytree(REPO_ROOT / "hms_offline", folder / "hms_offline", ignore=shutil.ignore_patterns("__pycache__"))
    with open(folder / "hms_offline" / "manifest.py", "a") as manifest_module:
        manifest_module.write(manifest_code_appended)
    return folder


def test_manifests_are_checked_by_the_loader_of_the_packed_hms_offline(tmp_path, weights_manifest):
    repo = packed_copy(tmp_path, "\ndef manifest_problems(path):\n    return [f'{path}: refused by the packed copy']\n")
    with pytest.raises(BundleError, match=f"{weights_manifest}: refused by the packed copy") as refused:
        check_with_kernel_loader([weights_manifest], repo)
    assert refused.value.exit_code == 2


def test_a_loader_that_cannot_run_is_a_build_failure_with_its_output(tmp_path, weights_manifest):
    repo = packed_copy(tmp_path, "\nraise ImportError('simulated: numpy missing')\n")
    expected = "(?s)checking the weights manifests failed .*simulated: numpy missing"
    with pytest.raises(BundleError, match=expected) as failed:
        check_with_kernel_loader([weights_manifest], repo)
    assert failed.value.exit_code == 1


def test_check_manifest_prints_what_the_kernel_would_refuse(tmp_path, weights_manifest, capsys):
    assert hms_offline_main(["check-manifest", str(weights_manifest)]) == 0
    assert capsys.readouterr().out == ""
    broken = rewrite_manifest(write_weights(tmp_path), unknown_arch)
    assert hms_offline_main(["check-manifest", str(weights_manifest), str(broken)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{broken}: model 'efficientnetv2_b2_fold1': models[1] has unknown arch 'resnet9000'; "
        "known: ['efficientnetv2_b2', 'mobilenetv3_large']"]


def test_a_failed_build_leaves_the_previous_dist_as_it_was(tmp_path, source_repo, weights_manifest, wheel_cache,
                                                            monkeypatch, caplog):
    out = tmp_path / "dist"
    assert build(source_repo, weights_manifest, out, wheel_cache) == 0
    before = {name: (out / name).read_bytes() for name in relative_files(out)}

    def broken_wheel_build(*args, **kwargs):
        raise BundleError("simulated failure half-way", exit_code=1)

    monkeypatch.setattr(hms_offline.bundle.build, "build_package_wheel", broken_wheel_build)
    assert build(source_repo, weights_manifest, out, wheel_cache) == 1
    assert "simulated failure" in caplog.text
    assert {name: (out / name).read_bytes() for name in relative_files(out)} == before
    assert {p.name for p in out.iterdir()} == {"kernel", SLUG}


def test_offline_with_an_empty_cache_says_how_to_fill_it(tmp_path, source_repo, weights_manifest, caplog):
    assert build(source_repo, weights_manifest, tmp_path / "dist", tmp_path / "empty-cache") == 2
    assert "--fetch-wheels" in caplog.text and "keras-cv==0.9.0" in caplog.text


def test_pins_are_exact_and_leave_the_image_packages_alone():
    names = [parse_pin(pin)[0] for pin in KERNEL_WHEEL_PINS]
    assert len(set(names)) == len(names)
    assert {"keras-cv", "keras", "tensorflow-datasets", "promise"} <= set(names)
    assert not set(names) & PROVIDED_BY_KAGGLE_IMAGE
    assert {"tensorflow", "numpy", "pandas", "pyarrow", "protobuf", "h5py"} <= PROVIDED_BY_KAGGLE_IMAGE


def test_platform_tags_and_wheel_compatibility():
    tags = compatible_platform_tags("manylinux2014_x86_64")
    assert {"manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_28_x86_64" not in tags
    fits = lambda name: wheel_fits_target(parse_wheel_filename(name), TARGET)  # noqa: E731
    assert fits("keras_cv-0.9.0-py3-none-any.whl")
    assert fits("dm_tree-0.1.9-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    assert fits("psutil-7.0.0-cp36-abi3-manylinux_2_12_x86_64.manylinux2010_x86_64.whl")
    assert not fits("dm_tree-0.1.9-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    assert not fits("dm_tree-0.1.10-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl")


def fake_kaggle_cli(folder: Path) -> Path:
    """A `kaggle` stand-in that logs its arguments; a dataset 'exists' once created."""
    log = folder / "calls.log"
    script = folder / "kaggle"
    script.write_text(f"""#!/bin/sh
echo "$*" >> {log}
if [ "$1 $2" = "datasets status" ]; then
  if [ -e {folder}/created ]; then echo ready; exit 0; fi
  echo "404 - Not Found"; exit 1
fi
if [ "$1 $2" = "datasets create" ]; then touch {folder}/created; fi
exit 0
""")
    script.chmod(0o755)
    return log


def test_push_creates_the_dataset_waits_then_pushes_the_kernel(tmp_path, monkeypatch):
    log = fake_kaggle_cli(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", "not-a-real-key")
    result = BuildResult(tmp_path / SLUG, tmp_path / "kernel", "0.1.0+gabc1234", 0)
    push_bundle(USER, SLUG, upload_commands(result, "hms-offline test"))
    calls = log.read_text().splitlines()
    assert calls[0] == f"datasets status {USER}/{SLUG}"
    assert calls[1].startswith("datasets create -p ") and calls[1].endswith("--dir-mode zip")
    assert calls[2] == f"datasets status {USER}/{SLUG}"
    assert calls[3].startswith("kernels push -p ")


def test_push_without_the_cli_or_credentials_is_a_clear_error(tmp_path, monkeypatch):
    result = BuildResult(tmp_path / SLUG, tmp_path / "kernel", "0.1.0", 0)
    commands = upload_commands(result, "m")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BundleError, match="kaggle CLI"):
        push_bundle(USER, SLUG, commands)
    fake_kaggle_cli(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-config"))
    with pytest.raises(BundleError, match="credentials"):
        push_bundle(USER, SLUG, commands)


def test_starts_with_the_standard_library_only():
    """build_bundle.py and every module of hms_offline/bundle/ import only the standard library
    and each other; of hms_offline itself only its __init__ (which imports nothing)."""
    code = """\
import importlib, pkgutil, sys
before = set(sys.modules)
import build_bundle, hms_offline.bundle
for module in pkgutil.iter_modules(hms_offline.bundle.__path__):
    importlib.import_module(f"hms_offline.bundle.{module.name}")
print(sorted({'numpy', 'tensorflow', 'pandas'} & set(sys.modules)))
print(sorted(name for name in set(sys.modules) - before
             if name.split('.')[0] not in sys.stdlib_module_names
             and name not in ('build_bundle', 'hms_offline', 'hms_offline.bundle')
             and not name.startswith('hms_offline.bundle.')))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:2] == ["[]", "[]"]


@pytest.mark.parametrize("style", ["static", "attr"])
def test_version_stamp_in_a_source_copy(tmp_path, style):
    (tmp_path / "hms_offline").mkdir()
    (tmp_path / "hms_offline" / "__init__.py").write_text('"""doc"""\n\n__version__ = "0.2.0"\n')
    pyproject = PLACEHOLDER_PYPROJECT if style == "attr" else PLACEHOLDER_PYPROJECT.replace(
        'dynamic = ["version"]', 'version = "0.2.0"').split("[tool.setuptools.dynamic]")[0]
    (tmp_path / "pyproject.toml").write_text(pyproject)
    source = SourceState(commit="0123456789abcdef" * 2 + "01234567", commit_time=0, dirty=True)
    assert stamp_version(tmp_path, source) == "0.2.0+g0123456.dirty"
    assert '__version__ = "0.2.0+g0123456.dirty"' in (tmp_path / "hms_offline" / "__init__.py").read_text()
    if style == "static":
        assert 'version = "0.2.0+g0123456.dirty"' in (tmp_path / "pyproject.toml").read_text()


def test_several_manifests_ship_as_one_ensemble(tmp_path, source_repo, weights_manifest, wheel_cache):
    """`--manifest A --manifest B`: the models of both runs, each weight file checked and copied."""
    original = json.loads(weights_manifest.read_text())
    other = tmp_path / "other_run" / "weights_manifest.json"
    other.parent.mkdir()
    renamed = [{**model, "name": model["name"] + "_seed2",
                "file": os.path.relpath(weights_manifest.parent / model["file"], other.parent)}
               for model in original["models"]]
    other.write_text(json.dumps({**original, "models": renamed}))
    assert build_bundle.main(["--kaggle-user", USER, "--dataset-slug", SLUG, "--manifest", str(weights_manifest),
                              "--manifest", str(other), "--out", str(tmp_path / "dist"), "--repo", str(source_repo),
                              "--wheel-cache", str(wheel_cache), "--offline"]) == 0
    bundled = json.loads((tmp_path / "dist" / SLUG / "weights_manifest.json").read_text())
    assert [m["name"] for m in bundled["models"]] == [m["name"] for m in original["models"]] + [m["name"] for m in renamed]
    for model in bundled["models"]:
        assert sha256(tmp_path / "dist" / SLUG / model["file"]) == model["sha256"]
