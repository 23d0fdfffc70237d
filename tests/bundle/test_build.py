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

Exports: the build runs `python -m hms_offline export`; here (but in the tests marked slow,
which export real models) a stand-in exporter writes small digest-true fake exports, with the
same command line and report, so the build's copying, digest checks and refusals are tested
in seconds.
"""

import difflib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import hms_offline.bundle.build
import hms_offline.bundle.exports
from hms_offline.bundle.build import BuildResult, built_kernel_script, kernel_metadata
from hms_offline.bundle.common import KERNEL_SCRIPT, BundleError, display_path
from hms_offline.bundle.kaggle_cli import push_bundle, upload_commands
from hms_offline.bundle.kaggle_image import (ImagePin, ImagePins, PinsError, find_python, no_python_message,
                                             read_image_pins)
from hms_offline.bundle.package import SourceState, files_to_pack, stamp_version
from hms_offline.bundle.requirements import (marker_holds, parse_requirement, read_wheel_metadata,
                                             specifier_contains, target_environment)
from hms_offline.bundle.weights import check_with_kernel_loader
from hms_offline.bundle.wheels import (DEFAULT_PLATFORM, DEFAULT_PYTHON_VERSIONS, KERNEL_WHEEL_PINS, LOCK_FORMAT_VERSION,
                                       PROVIDED_BY_KAGGLE_IMAGE, REPLACE_OTHER_VERSIONS, WHY_SHIPPED, Target,
                                       canonical_name, check_lock, check_locks, compatible_platform_tags,
                                       find_cached_wheel, parse_pin, parse_wheel_filename, wheel_fits_target)
from hms_offline.cli import main as hms_offline_main
from hms_offline.constants import CLASSES
from hms_offline.digests import sha256_tree
from hms_offline.features.spectrogram import VIEW_NAME, VIEW_PARAMS
from hms_offline.models.manifest import EXPORT_KINDS, FORMAT_VERSION, export_problem, load_manifest, manifest_problems

from conftest import REPO_ROOT
sys.path.insert(0, str(REPO_ROOT))  # build_bundle.py, the command line
import build_bundle  # noqa: E402

USER = "alice"
SLUG = "hms-test-bundle"
TARGET = Target("3.12", DEFAULT_PLATFORM)  # Kaggle's image
TARGETS = tuple(Target(version, DEFAULT_PLATFORM) for version in DEFAULT_PYTHON_VERSIONS)  # what a bundle ships
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
    missing = [f"{target.cache_name}: {pin}" for target in TARGETS for pin in KERNEL_WHEEL_PINS
               if find_cached_wheel(cache / target.cache_name, pin, target) is None]
    if missing:
        pytest.fail(f"the wheel cache {cache} lacks {', '.join(missing)}: fill it once (needs PyPI) with "
                    f"`make wheels` (python build_bundle.py --fetch-wheels --wheel-cache {cache})")
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
        "preprocessing": {"name": VIEW_NAME, "params": dict(VIEW_PARAMS)},
        "models": models,
    }
    path = folder / "weights_manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


# A stand-in for `python -m hms_offline export --out OUT --cache CACHE MANIFEST...`: for each model,
# small fake exports in CACHE/<sha256>/fake/ (their content a function of the weights' sha256)
# and the report the real command writes; a model whose name says "unprovable" fails its proof.
FAKE_EXPORTER = r"""
import hashlib, json, sys
from pathlib import Path

args = sys.argv[1:]
out, cache = Path(args[args.index("--out") + 1]), Path(args[args.index("--cache") + 1])
paths = [Path(a) for i, a in enumerate(args) if a not in ("--out", "--cache") and (i == 0 or args[i - 1] not in ("--out", "--cache"))]

def tree(folder):
    lines = "".join(f"{p.relative_to(folder).as_posix()}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
                    for p in sorted(folder.rglob("*")) if p.is_file())
    return hashlib.sha256(lines.encode()).hexdigest()

report = {"format_version": 1, "models": {}, "failed": {}}
for path in paths:
    for model in json.loads((path / "weights_manifest.json" if path.is_dir() else path).read_text())["models"]:
        if "unprovable" in model["name"]:
            report["failed"][model["name"]] = (f"model {model['name']!r}: its tflite export differs from the Keras "
                                               "model by 0.5 on the probe batch (tolerance 0.0001)")
            continue
        folder = cache / model["sha256"] / "fake"
        (folder / "saved_model" / "variables").mkdir(parents=True, exist_ok=True)
        (folder / "saved_model" / "saved_model.pb").write_text("graph of " + model["sha256"])
        (folder / "saved_model" / "variables" / "variables.index").write_text("variables of " + model["sha256"])
        (folder / "model.tflite").write_text("TFL3 " + model["sha256"])
        report["models"][model["name"]] = {
            "cached": False, "seconds": 0.0,
            "saved_model": {"path": str(folder / "saved_model"), "sha256": tree(folder / "saved_model"),
                            "max_difference": 0.0},
            "tflite": {"path": str(folder / "model.tflite"),
                       "sha256": hashlib.sha256((folder / "model.tflite").read_bytes()).hexdigest(),
                       "max_difference": 1e-6}}
out.write_text(json.dumps(report))
sys.exit(1 if report["failed"] else 0)
"""
REAL_EXPORT_COMMAND = hms_offline.bundle.exports.export_command


@pytest.fixture(scope="module", autouse=True)
def fake_exporter(tmp_path_factory):
    """Every build of this module exports with FAKE_EXPORTER (the slow tests put the real one back)."""
    script = tmp_path_factory.mktemp("fake_exporter") / "fake_exporter.py"
    script.write_text(FAKE_EXPORTER)

    def command(paths, out, cache):
        return [sys.executable, str(script), "--out", str(out), "--cache", str(cache), *map(str, paths)]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hms_offline.bundle.exports, "export_command", command)
        yield script


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


@pytest.mark.slow
def test_dataset_and_kernel_folders_hold_exactly_the_bundle(two_builds, dataset):
    out = two_builds[0]
    assert {p.name for p in out.iterdir()} == {"kernel", SLUG}  # no staging folder left behind
    files = relative_files(dataset)
    wheels = {f for f in files if f.startswith("wheels/") and f.endswith(".whl")}
    assert files - wheels == {
        "BUNDLE.json", "README.md", "dataset-metadata.json", "weights_manifest.json",
        "wheels/lock-cp311.json", "wheels/lock-cp312.json", "wheels/lock-cp313.json",
        "weights/mobilenetv3_large_fold0.weights.h5", "weights/efficientnetv2_b2_fold1.weights.h5",
        *(f"exports/{name}{file}" for name in ("mobilenetv3_large_fold0", "efficientnetv2_b2_fold1")
          for file in (".tflite", "/saved_model/saved_model.pb", "/saved_model/variables/variables.index")),
    }
    names = {parse_wheel_filename(Path(w).name).name for w in wheels}
    assert names == {parse_pin(pin)[0] for pin in KERNEL_WHEEL_PINS} | {"hms-offline"}
    assert relative_files(out / "kernel") == {"inference.py", "kernel-metadata.json"}


@pytest.mark.slow
def test_dataset_metadata(dataset):
    metadata = json.loads((dataset / "dataset-metadata.json").read_text())
    assert metadata == {"title": metadata["title"], "id": f"{USER}/{SLUG}", "licenses": [{"name": "CC0-1.0"}]}
    assert 6 <= len(metadata["title"]) <= 50
    assert "hms_offline" in (dataset / "README.md").read_text()


@pytest.mark.slow
def test_weights_copied_and_manifest_relative_to_the_dataset(dataset, weights_manifest):
    """The source manifest is format 1; the bundled one is format 2: the top-level preprocessing
    is each model's input, and each model lists its exports."""
    original = json.loads(weights_manifest.read_text())
    bundled = json.loads((dataset / "weights_manifest.json").read_text())
    assert original["format_version"] == 1
    assert {k: v for k, v in bundled.items() if k != "models"} == {"format_version": 2, "classes": original["classes"]}
    assert len(bundled["models"]) == 2
    for before, after in zip(original["models"], bundled["models"]):
        assert after["file"].startswith("weights/") and not Path(after["file"]).is_absolute()
        assert sha256(dataset / after["file"]) == before["sha256"] == after["sha256"]
        assert after["input"] == original["preprocessing"]
        assert list(after)[list(after).index("sha256") + 1] == "input"
        assert {k: v for k, v in after.items() if k not in ("file", "input", "exports")} == \
            {k: v for k, v in before.items() if k != "file"}


@pytest.mark.slow
def test_exports_copied_with_their_digests_and_listed_in_the_manifest(dataset, weights_manifest):
    bundled = json.loads((dataset / "weights_manifest.json").read_text())
    for model in bundled["models"]:
        name = model["name"]
        assert model["exports"] == {
            "saved_model": {"path": f"exports/{name}/saved_model", "sha256": sha256_tree(dataset / f"exports/{name}/saved_model")},
            "tflite": {"path": f"exports/{name}.tflite", "sha256": sha256(dataset / f"exports/{name}.tflite")},
        }
        assert (dataset / f"exports/{name}.tflite").read_text() == "TFL3 " + model["sha256"]  # this model's own
    assert manifest_problems(dataset, require_exports=True) == []
    manifest, root = load_manifest(dataset)
    assert manifest.read_format == FORMAT_VERSION == 2
    assert all(export_problem(entry, root, kind) is None for entry in manifest.models for kind in EXPORT_KINDS)


def test_a_failing_export_stops_the_build_naming_the_model(tmp_path, source_repo, wheel_cache, caplog):
    manifest = rewrite_manifest(write_weights(tmp_path / "weights"),
                                lambda raw: raw["models"][1].update(name="efficientnetv2_b2_unprovable"))
    with caplog.at_level(logging.ERROR):
        assert build(source_repo, manifest, tmp_path / "dist", wheel_cache) == 1
    assert "the export of the models failed" in caplog.text
    assert "model 'efficientnetv2_b2_unprovable': its tflite export differs from the Keras model by 0.5" in caplog.text
    assert not (tmp_path / "dist" / SLUG).exists()


@pytest.mark.slow
def test_exports_that_differ_from_their_report_are_refused(tmp_path, source_repo, wheel_cache, caplog, monkeypatch):
    """An export changed between its proof and the copy (or a report that lies) stops the build."""
    real = hms_offline.bundle.build.export_models

    def tampered(paths, repo, cache):
        exported = real(paths, repo, cache)
        Path(exported["mobilenetv3_large_fold0"]["tflite"]["path"]).write_text("something else")
        return exported

    monkeypatch.setattr(hms_offline.bundle.build, "export_models", tampered)
    with caplog.at_level(logging.ERROR):
        assert build(source_repo, write_weights(tmp_path / "weights"), tmp_path / "dist", wheel_cache,
                     "--export-cache", str(tmp_path / "cache")) == 2
    assert "model 'mobilenetv3_large_fold0': its tflite export copied from" in caplog.text
    assert not (tmp_path / "dist" / SLUG).exists()


def read_lock(dataset: Path, target: Target) -> dict:
    return json.loads((dataset / "wheels" / f"lock-{target.abi}.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS, ids=[target.abi for target in TARGETS])
def test_each_python_has_a_lock_listing_its_wheels_with_sha256_and_rule(dataset, target):
    lock = read_lock(dataset, target)
    assert set(lock) == {"format_version", "python_version", "platform", "packages"}
    assert lock["format_version"] == LOCK_FORMAT_VERSION == 2
    assert (lock["python_version"], lock["platform"]) == (target.python_version, target.platform)
    packages = lock["packages"]
    assert [p["name"] for p in packages] == sorted(p["name"] for p in packages)
    for package in packages:
        assert set(package) == {"name", "version", "file", "sha256", "install_if", "why"}
        wheel = dataset / "wheels" / package["file"]
        assert package["sha256"] == sha256(wheel), package["file"]
        assert package["name"] == canonical_name(package["name"])
        assert parse_wheel_filename(wheel.name).version == package["version"]
        assert wheel_fits_target(parse_wheel_filename(wheel.name), target)
        assert package["name"] not in PROVIDED_BY_KAGGLE_IMAGE
        # nothing of the image is replaced: every package only where the image lacks it, and why
        assert package["install_if"] == "missing" and package["why"].startswith(WHY_SHIPPED[package["name"]])
    assert {p["name"]: p["version"] for p in packages} == dict(map(parse_pin, KERNEL_WHEEL_PINS))  # no hms-offline


@pytest.mark.slow
def test_pure_wheels_ship_once_binary_ones_per_python_and_hms_offline_in_no_lock(dataset, source_repo):
    files = {target: {p["file"] for p in read_lock(dataset, target)["packages"]} for target in TARGETS}
    shipped = {p.name for p in (dataset / "wheels").glob("*.whl")}
    package = [name for name in shipped if name.startswith("hms_offline-")]
    assert len(package) == 1 and package[0].endswith("-py3-none-any.whl")
    assert shipped == set().union(*files.values()) | set(package)
    pure = set.intersection(*files.values())
    assert all(parse_wheel_filename(name).abi_tags == {"none"} for name in pure)
    binary = {target: names - pure for target, names in files.items()}
    for target, names in binary.items():
        assert {parse_wheel_filename(name).name for name in names} == {"dm-tree", "regex"}
        assert all(target.abi in parse_wheel_filename(name).abi_tags for name in names), names
    commit = git(source_repo, "rev-parse", "HEAD").strip()
    assert parse_wheel_filename(package[0]).version.endswith(f"+g{commit[:7]}")  # a clean checkout: no .dirty


@pytest.mark.slow
def test_package_wheel_is_stamped_without_touching_the_source(dataset, source_repo):
    wheel_file = next((dataset / "wheels").glob("hms_offline-*.whl"))
    version = parse_wheel_filename(wheel_file.name).version
    with zipfile.ZipFile(wheel_file) as wheel:
        metadata = wheel.read(f"hms_offline-{version}.dist-info/METADATA").decode()
        init = wheel.read("hms_offline/__init__.py").decode()
    assert f"\nVersion: {version}\n" in metadata
    assert f'__version__ = "{version}"' in init
    assert git(source_repo, "status", "--porcelain", "--ignored") == ""  # no build/, egg-info, edits


@pytest.mark.slow
def test_bundle_json_describes_every_file(dataset, source_repo):
    record = json.loads((dataset / "BUNDLE.json").read_text())
    assert record["git"]["commit"] == git(source_repo, "rev-parse", "HEAD").strip()
    assert record["git"]["dirty"] is False
    assert record["format_version"] == 2
    assert record["versions"]["pythons"] == list(DEFAULT_PYTHON_VERSIONS)
    assert record["versions"]["platform"] == TARGET.platform
    assert record["versions"]["lock_format"] == LOCK_FORMAT_VERSION
    assert record["versions"]["pins"] == dict(map(parse_pin, KERNEL_WHEEL_PINS))
    listed = {item["path"]: item for item in record["files"]}
    assert set(listed) == relative_files(dataset) - {"BUNDLE.json"}
    for path, item in listed.items():
        assert (item["size"], item["sha256"]) == ((dataset / path).stat().st_size, sha256(dataset / path)), path
    assert record["total_size"] == sum(item["size"] for item in record["files"])
    assert record["built_at"]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    with open(folder / "hms_offline" / "models" / "manifest.py", "a") as manifest_module:
        manifest_module.write(manifest_code_appended)
    return folder


def test_manifests_are_checked_by_the_loader_of_the_packed_hms_offline(tmp_path, weights_manifest):
    repo = packed_copy(tmp_path, "\ndef manifest_problems(path, **options):\n    return [f'{path}: refused by the packed copy']\n")
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


@pytest.mark.slow
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
    assert set(WHY_SHIPPED) == set(names)  # every pin says why it ships
    assert REPLACE_OTHER_VERSIONS == {}  # the image's keras, dm-tree, tensorflow-datasets all work: none replaced


# ----------------------------------------------------------------------------- the static check of the locks

def fake_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = (), tag: str = "py3-none-any",
               requires_python: str | None = None) -> Path:
    """A wheel file holding only its METADATA (enough for the static check)."""
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Python: {requires_python}"] if requires_python else []
    lines += [f"Requires-Dist: {requirement}" for requirement in requires]
    wheel = folder / f"{name.replace('-', '_')}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")
    return wheel


def fake_lock(wheels: list[Path], target: Target = TARGET) -> dict:
    return {"format_version": 2, "python_version": target.python_version, "platform": target.platform,
            "packages": [{"name": parse_wheel_filename(w.name).name, "version": parse_wheel_filename(w.name).version,
                          "file": w.name, "sha256": sha256(w), "install_if": "missing", "why": "test"}
                         for w in wheels]}


IMAGE = ImagePins("3.12", (ImagePin("install", "numpy", "2.0.2"), ImagePin("resolved", "absl-py", "2.5.1"),
                           ImagePin("no-deps", "kagglehub", None)), Path("kaggle_image.txt"))


def test_the_static_check_names_the_wheel_and_each_unmet_requirement(tmp_path):
    wheel = fake_wheel(tmp_path, "fakepkg", "1.0", requires=(
        "no-such-package>=1",                      # met by nothing
        "numpy<2",                                 # the image's numpy 2.0.2, which the kernel keeps
        "helper>=2",                               # the lock has helper 1.5
        "absl-py>=2.0", "kagglehub", "helper",     # met
        "windows-only; sys_platform == 'win32'",   # not for Linux
        "pytest; extra == 'test'",                 # an extra nobody asks for
        "old-thing; python_version < '3.10'",
    ))
    helper = fake_wheel(tmp_path, "helper", "1.5")
    result = check_lock(fake_lock([wheel, helper]), tmp_path, TARGET, IMAGE)
    assert result.problems == [
        "lock-cp312.json: fakepkg-1.0-py3-none-any.whl requires 'no-such-package>=1': met neither by the lock nor by "
        "the image's pins (kaggle_image.txt)",
        "lock-cp312.json: fakepkg-1.0-py3-none-any.whl requires 'numpy<2': the image has numpy 2.0.2, which the "
        "kernel keeps",
        "lock-cp312.json: fakepkg-1.0-py3-none-any.whl requires 'helper>=2': the lock has helper 1.5",
    ]
    # on another Python than the image's, the image's versions are unknown: checked by name
    other = check_lock(fake_lock([wheel, helper], TARGETS[2]), tmp_path, TARGETS[2], IMAGE)
    assert [problem.split(": ", 1)[1] for problem in other.problems] == [
        problem.split(": ", 1)[1] for problem in result.problems if "numpy" not in problem]
    assert any("'numpy<2': met by the image's numpy by name only" in note for note in other.notes)


def test_the_static_check_follows_extras_tags_and_requires_python(tmp_path):
    top = fake_wheel(tmp_path, "top", "1.0", requires=("lib[fast]>=1",))
    lib = fake_wheel(tmp_path, "lib", "1.0", requires=("speedup; extra == 'fast'", "slowdown; extra == 'slow'"))
    other_python = fake_wheel(tmp_path, "binary", "1.0", tag="cp311-cp311-manylinux2014_x86_64")
    too_new = fake_wheel(tmp_path, "too-new", "1.0", requires_python=">=3.13")
    problems = check_lock(fake_lock([top, lib, other_python, too_new]), tmp_path, TARGET, IMAGE).problems
    assert problems == [  # the lock's order, then the extras followed into lib
        "lock-cp312.json: binary-1.0-cp311-cp311-manylinux2014_x86_64.whl does not install on CPython 3.12 "
        "manylinux2014_x86_64 (its tags)",
        "lock-cp312.json: too_new-1.0-py3-none-any.whl requires Python >=3.13, not 3.12",
        "lock-cp312.json: lib-1.0-py3-none-any.whl requires \"speedup; extra == 'fast'\": met neither by the lock nor "
        "by the image's pins (kaggle_image.txt)",
    ]
    assert len(problems) == 3 and not any("slowdown" in problem for problem in problems)


def test_the_shipped_locks_pass_the_static_check(wheel_cache):
    """The real cached wheels of every Python against the real pins file: all met, and on the
    image's Python every version range checked (no requirement met by name only)."""
    image = read_image_pins()
    for target in TARGETS:
        wheels = [find_cached_wheel(wheel_cache / target.cache_name, pin, target) for pin in KERNEL_WHEEL_PINS]
        result = check_lock(fake_lock(wheels, target), wheel_cache / target.cache_name, target, image)
        assert result.problems == [], target
        assert (result.notes == []) == (target.python_version == image.python_version), target
    check_locks({target: (fake_lock([find_cached_wheel(wheel_cache / target.cache_name, pin, target)
                                     for pin in KERNEL_WHEEL_PINS], target), wheel_cache / target.cache_name)
                 for target in TARGETS})


def test_a_build_whose_static_check_fails_stops_naming_the_wheel_and_the_requirement(
        tmp_path, source_repo, weights_manifest, wheel_cache, monkeypatch, caplog):
    cache = tmp_path / "cache"
    for target in TARGETS:
        (cache / target.cache_name).mkdir(parents=True)
        for pin in KERNEL_WHEEL_PINS:
            cached = find_cached_wheel(wheel_cache / target.cache_name, pin, target)
            (cache / target.cache_name / cached.name).symlink_to(cached)
        fake_wheel(cache / target.cache_name, "fakepkg", "1.0", requires=("no-such-package>=1",))
    monkeypatch.setattr(hms_offline.bundle.wheels, "KERNEL_WHEEL_PINS", (*KERNEL_WHEEL_PINS, "fakepkg==1.0"))
    monkeypatch.setitem(WHY_SHIPPED, "fakepkg", "a test")
    with caplog.at_level(logging.ERROR):
        assert build(source_repo, weights_manifest, tmp_path / "dist", cache) == 2
    for target in TARGETS:
        assert (f"lock-{target.abi}.json: fakepkg-1.0-py3-none-any.whl requires 'no-such-package>=1': met neither by "
                f"the lock nor by the image's pins (kaggle_image.txt)") in caplog.text
    assert not (tmp_path / "dist" / SLUG).exists()


@pytest.mark.parametrize("specifier, version, expected", [
    (">=1.9.1,<2", "1.15.0", True), (">=1.9.1,<2", "2.0", False), ("~=1.4.5", "1.4.9", True),
    ("~=1.4.5", "1.5.0", False), ("==2.*", "2.0.2", True), ("!=2.0.*", "2.0.2", False), ("<=6.32,>=4.21.6", "7.36.2",
    False), (">=2.1.0", "2.0.2", False), ("<2", "2.0rc1", False), (">1.0", "1.0.post1", False), ("==1.0", "1.0.0",
    True), (">=2026.4.0", "2026.10.19.post1", True), ("", "0.1", True),
])
def test_version_specifiers(specifier, version, expected):
    assert specifier_contains(specifier, version) is expected


def test_requirement_lines_and_markers():
    requirement = parse_requirement('etils[edc,enp]>=1.9.1; python_version >= "3.11"')
    assert (requirement.name, requirement.extras, requirement.specifier) == ("etils", ("edc", "enp"), ">=1.9.1")
    assert parse_requirement("Foo_Bar (>=1.0, <2)").specifier == ">=1.0,<2"
    assert parse_requirement("pkg @ https://example.com/pkg.whl ; os_name == 'nt'").url == "https://example.com/pkg.whl"
    env = target_environment("3.12", DEFAULT_PLATFORM)
    assert env["platform_machine"] == "x86_64"
    assert marker_holds('(python_version < "3.11" and sys_platform == "linux") or platform_system == "Linux"', env)
    assert not marker_holds('python_version >= "3.13"', env)
    assert marker_holds('python_version >= "3.13"', target_environment("3.13", DEFAULT_PLATFORM))
    assert marker_holds("'linux' in sys_platform and extra == \"Tests_All\"", {**env, "extra": "tests-all"})
    assert not parse_requirement("pytest; extra == 'test'").applies(env)
    assert parse_requirement("pytest; extra == 'test'").applies(env, ("test",))


def test_wheel_metadata_is_read_from_inside_the_zip(tmp_path):
    metadata = read_wheel_metadata(fake_wheel(tmp_path, "fakepkg", "1.0", requires=("a>=1", "b; extra == 'x'"),
                                              requires_python=">=3.11"))
    assert (metadata.name, metadata.version, metadata.requires_python) == ("fakepkg", "1.0", ">=3.11")
    assert [r.text for r in metadata.requires_dist] == ["a>=1", "b; extra == 'x'"]


# ----------------------------------------------------------------------------- the Kaggle image's pins

def test_the_kaggle_image_pins_are_in_one_file_read_by_the_makefile_too():
    image = read_image_pins()
    assert image.python_version == "3.12" and image.python_tag == "cp312"
    pins = {pin.name: (pin.kind, pin.version) for pin in image.pins}
    assert {name: pins[name] for name in ("tensorflow-cpu", "keras", "keras-cv", "tensorflow-datasets", "dm-tree",
                                          "numpy", "keras-hub", "tensorflow-text")} == {
        "tensorflow-cpu": ("install", "2.20.0"), "keras": ("install", "3.13.2"), "keras-cv": ("install", "0.9.0"),
        "tensorflow-datasets": ("install", "4.9.9"), "dm-tree": ("install", "0.1.10"), "numpy": ("install", "2.0.2"),
        "keras-hub": ("no-deps", "0.26.0"), "tensorflow-text": ("no-deps", "2.20.1")}
    assert {pins[name][0] for name in ("pandas", "pyarrow", "scikit-learn", "tqdm")} == {"install"}
    assert pins["kagglehub"][0] == "no-deps"
    assert "hms_offline/bundle/kaggle_image.txt" in (REPO_ROOT / "Makefile").read_text()
    tool = [sys.executable, "-m", "hms_offline.bundle.kaggle_image"]
    listed = subprocess.run([*tool, "pins", "no-deps"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert listed.stdout.split() == ["keras-hub==0.26.0", "tensorflow-text==2.20.1", f"kagglehub=={pins['kagglehub'][1]}"]


@pytest.mark.parametrize("text, problem", [
    ("install numpy==2.0.2\n", "no 'python 3.X' line"),
    ("python 3.12\nbogus numpy==1\n", "line 2: unknown kind 'bogus'"),
    ("python 3.12\ninstall numpy==1\nresolved NumPy==2\n", "line 3: numpy is listed twice"),
    ("python 3.12\ninstall numpy 2\n", "line 2: expected"),
])
def test_a_damaged_pins_file_is_refused_naming_the_line(tmp_path, text, problem):
    (tmp_path / "pins.txt").write_text(text)
    with pytest.raises(PinsError, match=re.escape(problem)):
        read_image_pins(tmp_path / "pins.txt")


def test_without_a_python_of_the_image_make_kaggle_base_says_what_to_do(tmp_path):
    found, looked_at = find_python("3.12", explicit=str(tmp_path / "python3.12"))
    assert found is None and looked_at == [str(tmp_path / "python3.12")]
    assert "KAGGLE_PYTHON=/path/to/python3.12" in no_python_message("3.12", None, [])
    tool = [sys.executable, "-m", "hms_offline.bundle.kaggle_image", "python"]
    env = {**os.environ, "KAGGLE_PYTHON": sys.executable if not sys.version.startswith("3.12") else "/bin/false"}
    refused = subprocess.run(tool, cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    assert refused.returncode == 1 and "is not a working CPython 3.12" in refused.stderr
    make = subprocess.run(["make", "-n", "kaggle-base", f"KAGGLE_BASE={tmp_path / 'base'}"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert "hms_offline.bundle.kaggle_image python" in make.stdout  # the Makefile finds it the same way


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
    and each other; of hms_offline itself only its __init__ (which imports nothing) and digests
    (the standard library's hashlib)."""
    code = """\
import importlib, pkgutil, sys
before = set(sys.modules)
import build_bundle, hms_offline.bundle
for module in pkgutil.iter_modules(hms_offline.bundle.__path__):
    importlib.import_module(f"hms_offline.bundle.{module.name}")
print(sorted({'numpy', 'tensorflow', 'pandas'} & set(sys.modules)))
print(sorted(name for name in set(sys.modules) - before
             if name.split('.')[0] not in sys.stdlib_module_names
             and name not in ('build_bundle', 'hms_offline', 'hms_offline.bundle', 'hms_offline.digests')
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


@pytest.mark.slow
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


# ----------------------------------------------------------------------------- real exports

@pytest.fixture(scope="module")
def dataset_with_real_exports(tmp_path_factory, freshly_initialised_bundle, wheel_cache, monkeypatch_module) -> Path:
    """freshly_initialised_bundle (3 models, both archs) built with the real exporter (its
    exports cached for the session: test_export.py and test_verify.py reuse them)."""
    monkeypatch_module.setattr(hms_offline.bundle.exports, "export_command", REAL_EXPORT_COMMAND)
    out = tmp_path_factory.mktemp("real_exports") / "dist"
    assert build_bundle.main(["--kaggle-user", USER, "--dataset-slug", SLUG, "--manifest",
                              str(freshly_initialised_bundle / "weights_manifest.json"), "--out", str(out),
                              "--wheel-cache", str(wheel_cache), "--offline"]) == 0
    return out / SLUG


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.slow
def test_a_built_dataset_holds_every_models_proven_exports(dataset_with_real_exports, freshly_initialised_bundle):
    dataset = dataset_with_real_exports
    source = json.loads((freshly_initialised_bundle / "weights_manifest.json").read_text())
    bundled = json.loads((dataset / "weights_manifest.json").read_text())
    assert bundled["format_version"] == 2 and list(bundled) == ["format_version", "classes", "models"]
    assert [m["name"] for m in bundled["models"]] == [m["name"] for m in source["models"]]
    for model in bundled["models"]:
        name = model["name"]
        saved_model, tflite = dataset / "exports" / name / "saved_model", dataset / "exports" / f"{name}.tflite"
        assert (saved_model / "saved_model.pb").is_file() and tflite.stat().st_size > 1_000_000
        assert model["exports"] == {"saved_model": {"path": f"exports/{name}/saved_model", "sha256": sha256_tree(saved_model)},
                                    "tflite": {"path": f"exports/{name}.tflite", "sha256": sha256(tflite)}}
    assert manifest_problems(dataset) == [] and manifest_problems(dataset, require_exports=True) == []
    listed = {item["path"] for item in json.loads((dataset / "BUNDLE.json").read_text())["files"]}
    assert {f"exports/{m['name']}.tflite" for m in bundled["models"]} <= listed
