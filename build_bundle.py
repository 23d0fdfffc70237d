#!/usr/bin/env python
"""Pack hms_offline, the wheels the kernel needs and the trained weights for Kaggle.

    python build_bundle.py --kaggle-user USER [--manifest weights_manifest.json] [--out dist]
        [--dataset-slug hms-offline-bundle] [--python-version 3.12]
        [--platform manylinux2014_x86_64] [--gpu] [--push]
    python build_bundle.py --fetch-wheels [--python-version 3.12] [--platform ...]

writes two folders under --out:

    <dataset-slug>/        the Kaggle *dataset*
        wheels/            hms_offline + the pinned wheels (KERNEL_WHEEL_PINS), lock.json
        weights/           the model files of the manifest
        weights_manifest.json, dataset-metadata.json, README.md, BUNDLE.json
    kernel/                the Kaggle *kernel*: inference.py, kernel-metadata.json

and prints the `kaggle` commands that upload them (`--push` runs them).

Wheels are downloaded once into a cache (--wheel-cache, default .cache/wheels/, one
folder per target <python-version>-<platform>), so a rebuild needs no network;
`--fetch-wheels` only fills that cache (the set-up step), `--offline` forbids downloading.
Both folders are built in a temporary folder inside --out and renamed into place at the
end: a failed build leaves the previous dist as it was. Two builds from the same inputs
give byte-identical files; only BUNDLE.json's `built_at` differs.

    python build_bundle.py --verify DIST [--verify-data DIR] [--kaggle-base .venv-kaggle-base]

runs the kernel built in DIST on sample test data (default: a small synthetic competition)
with the network blocked, in a fresh venv layered on the Kaggle-base venv (only what
Kaggle's image surely has: tensorflow, numpy, pandas, pyarrow, scikit-learn; no keras-cv,
no hms_offline), so the kernel must install them from the bundle. The wheels are swapped
for the same pins built for the local Python; the built dataset itself is not touched. It
checks the submission against sample_submission.csv and scores it when the data has a
test_solution.csv.

    python build_bundle.py --demo

the whole product on a fresh machine, in runs/demo/: synthetic data, a small fold ensemble
of both architectures trained with `python -m hms_offline train`, the bundle (Kaggle user
"demo"), its verification, and the submission's KL beside the class-prior baseline's.

Only the standard library is imported here, so it starts fast and runs anywhere.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent
LOG = logging.getLogger("build_bundle")

COMPETITION = "hms-harmful-brain-activity-classification"
DEFAULT_DATASET_SLUG = "hms-offline-bundle"
DEFAULT_PYTHON_VERSION = "3.12"  # the current Kaggle image
DEFAULT_PLATFORM = "manylinux2014_x86_64"
DEFAULT_WHEEL_CACHE = REPO_ROOT / ".cache" / "wheels"
FORMAT_VERSION = 1  # of lock.json and BUNDLE.json
PACKAGE = "hms_offline"
KERNEL_SCRIPT = Path("kernel") / "inference.py"
MANIFEST_NAME = "weights_manifest.json"

# What the kernel installs (from the bundle, `pip install --no-index --no-deps`) when the
# image lacks it or holds another version: keras-cv and keras themselves, and what
# `import keras_cv` needs at import time beyond TensorFlow's own install. Found and
# proven by experiment: in a fresh venv with only `pip install tensorflow-cpu==2.21.0
# pandas pyarrow scikit-learn` (Python 3.11 and 3.12), these wheels installed with
# --no-deps make `import keras_cv` (which imports tensorflow_datasets at module level)
# and `import keras` work with the network blocked (`unshare -rn`), and tensorflow_datasets
# imports whole (it swallows a failed submodule import with an "ERROR:absl" log, so
# "keras_cv imports" alone is not enough). Each one is needed: keras_cv imports `tree`
# (dm-tree) and `regex`; tensorflow_datasets imports etils, toml, promise, tqdm,
# immutabledict and tensorflow_metadata. Not needed at import, so not shipped: kagglehub
# (only loads presets, which the project never uses), keras-core, psutil, simple-parsing,
# array-record, PyYAML. dm-tree stays at 0.1.9: 0.1.10 has no manylinux2014 wheel.
KERNEL_WHEEL_PINS = (
    "keras-cv==0.9.0",
    "keras==3.15.1",
    "tensorflow-datasets==4.9.10",
    "tensorflow-metadata==1.21.0",
    "etils==1.15.0",
    "dm-tree==0.1.9",
    "regex==2026.11.15",
    "promise==2.3",
    "toml==0.10.2",
    "tqdm==4.70.1",
    "immutabledict==4.3.1",
)

# Published on PyPI as an sdist only: built here into a (pure-Python) wheel, into the
# cache folder, which is a --find-links folder for the download that follows.
SDIST_ONLY = frozenset({"promise"})

# lock.json tells the kernel when to install each wheel: "missing_or_different" (the
# default), or "missing" only. tensorflow-metadata's generated *_pb2 modules refuse a
# protobuf runtime older than the one they were generated with (1.21.0: protobuf 6.31.1),
# so a copy the image already has, matched to the image's protobuf, is safer kept.
INSTALL_ONLY_IF_MISSING = frozenset({"tensorflow-metadata"})

# Never bundled, and never to be reinstalled by the kernel: Kaggle's base image provides
# them, and TensorFlow's compiled binaries (and pandas', scikit-learn's, ...) are built
# against the versions it ships. A wheel of another version over them breaks `import
# tensorflow` (C++ ABI, protobuf generated code) or silently changes numerics.
PROVIDED_BY_KAGGLE_IMAGE = frozenset({
    "tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tensorflow-io",
    "tensorflow-io-gcs-filesystem", "tensorflow-text", "tensorflow-hub",
    "tensorflow-probability", "tensorboard", "tensorboard-data-server", "tf-keras",
    "jax", "jaxlib", "torch", "numpy", "pandas", "pyarrow", "scikit-learn", "scipy",
    "protobuf", "h5py", "ml-dtypes", "grpcio", "wrapt", "optree", "libclang", "flatbuffers",
    "opt-einsum",
})

# Kaggle's limit on one dataset. Kaggle's own documentation could not be consulted from
# this workplace: 100 GB is an assumed figure (a private-dataset quota "over 100 GB" is
# all a secondary source says). Check kaggle.com/docs/datasets before relying on it.
KAGGLE_DATASET_LIMIT_BYTES = 100 * 10**9
KAGGLE_DATASET_LIMIT_SOURCE = "assumed 100 GB per dataset (not confirmed from Kaggle's docs)"

# Zip archives cannot hold timestamps before 1980; also the fixed epoch of the wheels
# built from sdists, whose bytes then do not depend on when they were built.
ZIP_EPOCH = 315532800
DATASET_READY_TIMEOUT_SECONDS = 30 * 60
DATASET_READY_POLL_SECONDS = 20


class BundleError(Exception):
    """A build that cannot go on; the message says why and what to do."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


# ----------------------------------------------------------------------------- targets

@dataclass(frozen=True)
class Target:
    """The interpreter and platform the kernel's wheels are for."""

    python_version: str  # "3.12"
    platform: str  # "manylinux2014_x86_64"

    @property
    def abi(self) -> str:
        return "cp" + self.python_version.replace(".", "")

    @property
    def cache_name(self) -> str:
        return f"{self.python_version}-{self.platform}"


def parse_target(python_version: str, platform: str) -> Target:
    if not re.fullmatch(r"3\.\d{1,2}", python_version):
        raise BundleError(f"--python-version must look like 3.12, not {python_version!r}")
    if not re.fullmatch(r"[a-z0-9_]+", platform):
        raise BundleError(f"--platform must be a wheel platform tag such as {DEFAULT_PLATFORM}, not {platform!r}")
    return Target(python_version, platform)


LEGACY_MANYLINUX_GLIBC = {"manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17}


def compatible_platform_tags(platform: str) -> list[str]:
    """Every platform tag a system of `platform` runs (PEP 600): for manylinux2014_x86_64,
    manylinux_2_17 ... manylinux_2_5 and the legacy aliases; pip expands none of these
    by itself when --platform is given."""
    match = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014|manylinux_2_(\d+))_(\w+)", platform)
    if not match:
        return [platform]
    glibc_minor = int(match.group(2)) if match.group(2) else LEGACY_MANYLINUX_GLIBC[match.group(1)]
    arch = match.group(3)
    tags = [platform] + [f"manylinux_2_{minor}_{arch}" for minor in range(glibc_minor, 4, -1)]
    tags += [f"{legacy}_{arch}" for legacy, minor in LEGACY_MANYLINUX_GLIBC.items() if minor <= glibc_minor]
    return list(dict.fromkeys(tags))


# ----------------------------------------------------------------------------- wheels

def canonical_name(name: str) -> str:
    """PEP 503: lower case, runs of -_. as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pin(pin: str) -> tuple[str, str]:
    name, sep, version = pin.partition("==")
    if not sep or not name or not version:
        raise BundleError(f"not a name==version pin: {pin!r}")
    return canonical_name(name), version


@dataclass(frozen=True)
class WheelName:
    name: str  # canonical
    version: str
    python_tags: frozenset
    abi_tags: frozenset
    platform_tags: frozenset


def parse_wheel_filename(filename: str) -> WheelName:
    """name-version[-build]-python-abi-platform.whl, compressed tag sets split on '.'."""
    parts = filename[: -len(".whl")].split("-")
    if not filename.endswith(".whl") or len(parts) not in (5, 6):
        raise BundleError(f"not a wheel file name: {filename}")
    python, abi, platform = parts[-3:]
    return WheelName(
        canonical_name(parts[0]), parts[1], frozenset(python.split(".")),
        frozenset(abi.split(".")), frozenset(platform.split(".")),
    )


def wheel_fits_target(wheel: WheelName, target: Target) -> bool:
    minor = int(target.python_version.split(".")[1])
    if "any" not in wheel.platform_tags and not wheel.platform_tags & set(compatible_platform_tags(target.platform)):
        return False
    if "none" in wheel.abi_tags:
        return bool(wheel.python_tags & {"py3", f"py3{minor}", target.abi})
    if "abi3" in wheel.abi_tags:
        return any(re.fullmatch(r"cp3(\d+)", tag) and int(tag[3:]) <= minor for tag in wheel.python_tags)
    return target.abi in wheel.abi_tags and target.abi in wheel.python_tags


def find_cached_wheel(folder: Path, pin: str, target: Target) -> Path | None:
    name, version = parse_pin(pin)
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.whl")):
        wheel = parse_wheel_filename(path.name)
        if wheel.name == name and wheel.version == version and wheel_fits_target(wheel, target):
            return path
    return None


def run(command: list[str], *, quiet: bool, env: dict | None = None, cwd: Path | None = None,
        what: str) -> subprocess.CompletedProcess:
    """Run a tool; on failure a BundleError (exit code 1) carrying its output."""
    LOG.debug("running: %s", shlex.join(command))
    result = subprocess.run(
        command, env=env, cwd=cwd, text=True,
        stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None,
    )
    if result.returncode != 0:
        output = f"\n{result.stdout[-4000:]}" if quiet and result.stdout else ""
        raise BundleError(f"{what} failed (exit code {result.returncode}): {shlex.join(command)}{output}", exit_code=1)
    return result


def build_sdist_wheels(pins: list[str], folder: Path) -> None:
    """`pip wheel --no-deps` for packages PyPI has as sdists only (needs the network)."""
    for pin in pins:
        LOG.info("building a wheel of %s from its sdist (PyPI has no wheel of it)", pin)
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(ZIP_EPOCH), PYTHONHASHSEED="0")
        with tempfile.TemporaryDirectory(prefix="sdist-wheel-", dir=folder) as scratch:
            run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                 "-w", scratch, pin], quiet=False, env=env, what=f"building a wheel of {pin}")
            for built in Path(scratch).glob("*.whl"):
                os.replace(built, folder / built.name)


def download_wheels(pins: list[str], target: Target, folder: Path) -> None:
    """`pip download --only-binary=:all:` for the target interpreter and platform (needs
    the network). --no-deps: KERNEL_WHEEL_PINS is the exact, complete set."""
    LOG.info("downloading %d wheel(s) for CPython %s on %s: %s", len(pins), target.python_version,
             target.platform, ", ".join(pins))
    platforms = [arg for tag in compatible_platform_tags(target.platform) for arg in ("--platform", tag)]
    with tempfile.TemporaryDirectory(prefix="download-", dir=folder) as scratch:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", *platforms, "--python-version", target.python_version,
             "--implementation", "cp", "--abi", target.abi, "--find-links", str(folder),
             "-d", scratch, *pins], quiet=False, what="pip download")
        for downloaded in Path(scratch).glob("*.whl"):
            os.replace(downloaded, folder / downloaded.name)


def ensure_cached_wheels(cache_root: Path, target: Target, *, offline: bool) -> dict[str, Path]:
    """The cached wheel of every pin, downloading (and building) the missing ones unless
    offline. A download lands in a scratch folder first: the cache never holds a partial file."""
    folder = cache_root / target.cache_name
    missing = [pin for pin in KERNEL_WHEEL_PINS if find_cached_wheel(folder, pin, target) is None]
    if missing and offline:
        raise BundleError(
            f"--offline, and the wheel cache {folder} lacks {', '.join(missing)}. Fill it once with the "
            f"network: python build_bundle.py --fetch-wheels --python-version {target.python_version} "
            f"--platform {target.platform} --wheel-cache {cache_root}"
        )
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        build_sdist_wheels([pin for pin in missing if parse_pin(pin)[0] in SDIST_ONLY], folder)
        download_wheels([pin for pin in missing if parse_pin(pin)[0] not in SDIST_ONLY], target, folder)
    wheels = {pin: find_cached_wheel(folder, pin, target) for pin in KERNEL_WHEEL_PINS}
    still_missing = [pin for pin, path in wheels.items() if path is None]
    if still_missing:
        raise BundleError(f"no wheel for {', '.join(still_missing)} in {folder} after downloading", exit_code=1)
    LOG.info("%d pinned wheels ready in %s", len(wheels), folder)
    return wheels


def check_pins_against_image() -> None:
    clash = sorted({parse_pin(pin)[0] for pin in KERNEL_WHEEL_PINS} & PROVIDED_BY_KAGGLE_IMAGE)
    if clash:
        raise BundleError(f"KERNEL_WHEEL_PINS must not hold packages of Kaggle's image: {', '.join(clash)}")


# ----------------------------------------------------------------------------- source

@dataclass(frozen=True)
class SourceState:
    commit: str
    commit_time: int
    dirty: bool  # the packed files differ from the commit


def git(repo: Path, *args: str) -> str:
    try:
        # --no-optional-locks: `git status` must not rewrite the index (read-only, and no
        # index.lock in the way of someone committing at the same time).
        result = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), *args], capture_output=True, text=True)
    except FileNotFoundError as error:
        raise BundleError("git is not installed: the bundle is stamped with the git commit") from error
    if result.returncode != 0:
        raise BundleError(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip()}")
    return result.stdout


def packed_source_paths() -> list[str]:
    """What the hms_offline wheel is built from (git pathspecs), plus the kernel script."""
    return ["pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "README*", "LICENSE*", PACKAGE,
            KERNEL_SCRIPT.as_posix()]


def read_source_state(repo: Path) -> SourceState:
    commit = git(repo, "rev-parse", "HEAD").strip()
    commit_time = int(git(repo, "log", "-1", "--format=%ct", "HEAD").strip())
    dirty = bool(git(repo, "status", "--porcelain", "--", *packed_source_paths()).strip())
    return SourceState(commit, commit_time, dirty)


def files_to_pack(repo: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files of the wheel's sources, as in the
    working tree (no __pycache__, no egg-info, nothing .gitignore excludes)."""
    listed = git(repo, "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--",
                 *packed_source_paths()[:-1]).split("\0")
    return sorted({name for name in listed if name and (repo / name).is_file()})


def local_version(base: str, source: SourceState) -> str:
    """0.1.0 -> 0.1.0+g<sha7>, and .dirty when the packed files differ from the commit."""
    return f"{base.split('+')[0]}+g{source.commit[:7]}" + (".dirty" if source.dirty else "")


VERSION_ASSIGNMENT = re.compile(r"""^(__version__\s*=\s*)(["'])([^"']*)\2""", re.MULTILINE)


def version_module(tree: Path, attr: str) -> Path:
    module = attr.rpartition(".")[0].replace(".", "/")
    for candidate in (tree / f"{module}.py", tree / module / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise BundleError(f"pyproject.toml takes the version from {attr}, but no such module is in the package")


def pyproject_table(text: str, table: str) -> str:
    """The body of one [table] of a TOML file (a regex reader: tomllib needs Python 3.11)."""
    match = re.search(rf"^\[{re.escape(table)}\][ \t]*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    return match.group(1) if match else ""


STATIC_VERSION = re.compile(r"""^(version\s*=\s*)(["'])([^"']*)\2""", re.MULTILINE)
VERSION_ATTR = re.compile(r"""^version\s*=\s*\{[^}]*\battr\s*=\s*["']([^"']+)["']""", re.MULTILINE)


def stamp_version(tree: Path, source: SourceState) -> str:
    """Write the commit-stamped version into the temporary source copy; returns it. The
    version is either static ([project] version = "...") or setuptools' dynamic attr
    (e.g. hms_offline.__version__); hms_offline/__init__.py's __version__ is stamped too."""
    pyproject_path = tree / "pyproject.toml"
    if not pyproject_path.is_file():
        raise BundleError("no pyproject.toml in the repo: the hms_offline wheel is built from it")
    text = pyproject_path.read_text(encoding="utf-8")
    project = pyproject_table(text, "project")
    static = STATIC_VERSION.search(project)
    init_path = tree / PACKAGE / "__init__.py"
    if static:
        version = local_version(static.group(3), source)
        stamped = STATIC_VERSION.sub(lambda m: f'{m.group(1)}"{version}"', project, count=1)
        pyproject_path.write_text(text.replace(project, stamped, 1), encoding="utf-8")
    else:
        attr = VERSION_ATTR.search(pyproject_table(text, "tool.setuptools.dynamic"))
        if not attr:
            raise BundleError("pyproject.toml has neither [project] version nor a setuptools dynamic version attr")
        init_path = version_module(tree, attr.group(1))
        match = VERSION_ASSIGNMENT.search(init_path.read_text(encoding="utf-8"))
        if not match:
            raise BundleError(f"no __version__ = '...' line in {init_path.relative_to(tree)}")
        version = local_version(match.group(3), source)
    if init_path.is_file() and VERSION_ASSIGNMENT.search(init_path.read_text(encoding="utf-8")):
        init_text = init_path.read_text(encoding="utf-8")
        init_path.write_text(VERSION_ASSIGNMENT.sub(lambda m: f'{m.group(1)}"{version}"', init_text, count=1),
                             encoding="utf-8")
    return version


def copy_source_tree(repo: Path, tree: Path) -> None:
    """A fixed-mode copy of the packed files: the build never writes into the repo."""
    for name in files_to_pack(repo):
        destination = tree / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo / name, destination)
        destination.chmod(0o644)


def build_package_wheel(repo: Path, source: SourceState, folder: Path) -> Path:
    """hms_offline as a wheel, version stamped with the commit; reproducible: a temporary
    source copy, SOURCE_DATE_EPOCH = commit time, no build isolation (no network)."""
    with tempfile.TemporaryDirectory(prefix="hms-offline-src-") as scratch:
        tree = Path(scratch) / "src"
        copy_source_tree(repo, tree)
        version = stamp_version(tree, source)
        LOG.info("building the %s wheel, version %s", PACKAGE, version)
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(max(source.commit_time, ZIP_EPOCH)),
                   PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
        out = Path(scratch) / "wheel"
        try:
            run([sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation",
                 "--no-index", "--disable-pip-version-check", "-q", "-w", str(out)],
                quiet=True, env=env, what=f"building the {PACKAGE} wheel")
        except BundleError as error:
            raise BundleError(f"{error}\n(--no-build-isolation needs setuptools and wheel installed in "
                              f"{sys.executable}: run `make setup`)", exit_code=1) from error
        built = sorted(out.glob("*.whl"))
        if len(built) != 1 or parse_wheel_filename(built[0].name).version != version:
            raise BundleError(f"expected one {PACKAGE} wheel of version {version}, pip made {[p.name for p in built]}",
                              exit_code=1)
        destination = folder / built[0].name
        shutil.copyfile(built[0], destination)
        return destination


# ----------------------------------------------------------------------------- weights

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_weights_manifest(path: Path) -> dict:
    """The manifest as plain JSON (hms_offline.manifest imports numpy; not needed here)."""
    if not path.is_file():
        raise BundleError(f"weights manifest not found: {path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BundleError(f"weights manifest {path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format_version") != 1:
        raise BundleError(f"weights manifest {path}: expected format_version 1, found "
                          f"{manifest.get('format_version') if isinstance(manifest, dict) else type(manifest).__name__}")
    if not isinstance(manifest.get("models"), list):
        raise BundleError(f"weights manifest {path}: 'models' must be a list")
    for index, model in enumerate(manifest["models"]):
        missing = [key for key in ("name", "file", "sha256") if not isinstance(model, dict) or key not in model]
        if missing:
            raise BundleError(f"weights manifest {path}: models[{index}] lacks {', '.join(missing)}")
    names = [model["name"] for model in manifest["models"]]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise BundleError(f"weights manifest {path}: duplicate model names {duplicates}")
    return manifest


def bundled_weight_name(model: dict) -> str:
    """weights/<model name><the file's suffixes>, e.g. weights/mobilenetv3_large_fold0.weights.h5."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(model["name"])).strip("._") or "model"
    suffixes = "".join(Path(model["file"]).suffixes)
    return f"weights/{safe}{suffixes}"


def check_weight_files(manifest: dict, manifest_dir: Path) -> None:
    """Refuse a missing weight file or one whose sha256 differs, naming it."""
    for model in manifest["models"]:
        path = manifest_dir / model["file"]
        if not path.is_file():
            raise BundleError(f"model {model['name']!r}: weight file {path} is missing")
        actual = sha256_of(path)
        if actual != model["sha256"]:
            raise BundleError(f"model {model['name']!r}: weight file {path} has sha256 {actual}, "
                              f"the manifest says {model['sha256']}")


def copy_weights(manifest: dict, manifest_dir: Path, dataset: Path) -> dict:
    """Copy every model file into weights/ (checking the sha256 of what was copied) and
    return the manifest with `file` relative to the dataset folder."""
    models = manifest["models"]
    if not models:
        LOG.warning("!" * 72)
        LOG.warning("THE WEIGHTS MANIFEST LISTS NO MODELS: the kernel will refuse to predict.")
        LOG.warning("Train fold models first (python -m hms_offline train ...) and pass --manifest.")
        LOG.warning("!" * 72)
    targets = [bundled_weight_name(model) for model in models]
    if len(set(targets)) != len(targets):
        raise BundleError(f"model names map to clashing weight file names: {targets}")
    copied = []
    for index, (model, relative) in enumerate(zip(models, targets), start=1):
        source = manifest_dir / model["file"]
        LOG.info("weights %d/%d: %s (%s)", index, len(models), model["name"], human_size(source.stat().st_size))
        destination = dataset / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        if copy_and_hash(source, destination) != model["sha256"]:
            raise BundleError(f"model {model['name']!r}: weight file {source} changed while it was copied")
        copied.append({**model, "file": relative})
    return {**manifest, "models": copied}


def copy_and_hash(source: Path, destination: Path) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(destination, "wb") as writer:
        for chunk in iter(lambda: reader.read(1 << 22), b""):
            digest.update(chunk)
            writer.write(chunk)
    destination.chmod(0o644)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- metadata

def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def wheel_lock(wheels: list[Path], target: Target) -> dict:
    packages = []
    for path in wheels:
        wheel = parse_wheel_filename(path.name)
        packages.append({
            "name": wheel.name, "version": wheel.version, "file": path.name, "sha256": sha256_of(path),
            "install_if": "missing" if wheel.name in INSTALL_ONLY_IF_MISSING else "missing_or_different",
        })
    return {"format_version": FORMAT_VERSION, "python_version": target.python_version,
            "platform": target.platform, "packages": sorted(packages, key=lambda p: p["name"])}


def dataset_title(slug: str) -> str:
    """6-50 characters, from the slug: hms-offline-bundle -> 'hms offline bundle'."""
    title = slug.replace("-", " ")
    return title if len(title) >= 6 else f"{title} bundle"


def kernel_slug(slug: str) -> str:
    return f"{slug}-inference"


def dataset_metadata(user: str, slug: str) -> dict:
    return {"title": dataset_title(slug), "id": f"{user}/{slug}", "licenses": [{"name": "CC0-1.0"}]}


def kernel_metadata(user: str, slug: str, gpu: bool) -> dict:
    # Kaggle derives a kernel's slug from its title: keep the two in step.
    return {
        "id": f"{user}/{kernel_slug(slug)}",
        "title": kernel_slug(slug).replace("-", " "),
        "code_file": "inference.py",
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": gpu,
        "enable_internet": False,
        "dataset_sources": [f"{user}/{slug}"],
        "competition_sources": [COMPETITION],
    }


def dataset_readme(user: str, slug: str, version: str, source: SourceState, target: Target, manifest: dict) -> str:
    lines = [
        f"# {dataset_title(slug)}",
        "",
        "Offline inference bundle for the Kaggle competition *HMS - Harmful Brain Activity Classification*,",
        "built by `build_bundle.py` of hms-offline. Attach it, with the competition data, to the kernel",
        f"`{user}/{kernel_slug(slug)}` (internet off): its `inference.py` installs the wheels of",
        "`wheels/lock.json` that the image lacks and writes `submission.csv`.",
        "",
        f"- hms_offline {version} (commit {source.commit}{', with uncommitted changes' if source.dirty else ''})",
        f"- wheels for CPython {target.python_version} on {target.platform}: "
        + ", ".join(KERNEL_WHEEL_PINS),
        f"- {len(manifest['models'])} model(s), listed in `weights_manifest.json`:",
        "",
        "| name | arch | fold | ensemble weight | CV KL |",
        "|---|---|---|---|---|",
    ]
    for model in manifest["models"]:
        lines.append(f"| {model['name']} | {model.get('arch', '')} | {model.get('fold', '')} | "
                     f"{model.get('ensemble_weight', '')} | {model.get('cv_kl', '')} |")
    if not manifest["models"]:
        lines.append("| (none: the kernel refuses to predict) | | | | |")
    lines += ["", "`BUNDLE.json` lists every file with its size and sha256.", ""]
    return "\n".join(lines)


def file_inventory(folder: Path, skip: tuple[str, ...] = ()) -> list[dict]:
    return [
        {"path": path.relative_to(folder).as_posix(), "size": path.stat().st_size, "sha256": sha256_of(path)}
        for path in sorted(p for p in folder.rglob("*") if p.is_file())
        if path.relative_to(folder).as_posix() not in skip
    ]


def bundle_record(dataset: Path, kernel: Path, source: SourceState, version: str, target: Target,
                  user: str, slug: str, built_at: str) -> dict:
    files = file_inventory(dataset, skip=("BUNDLE.json",))
    return {
        "format_version": FORMAT_VERSION,
        "built_at": built_at,  # the only field that differs between two builds of the same inputs
        "git": {"commit": source.commit, "commit_time": source.commit_time, "dirty": source.dirty},
        "dataset": f"{user}/{slug}",
        "kernel": f"{user}/{kernel_slug(slug)}",
        "versions": {
            "python": target.python_version,
            "platform": target.platform,
            "hms_offline": version,
            "pins": dict(parse_pin(pin) for pin in KERNEL_WHEEL_PINS),
        },
        "total_size": sum(item["size"] for item in files),
        "files": files,
        "kernel_files": file_inventory(kernel),
    }


# ----------------------------------------------------------------------------- build

@dataclass
class BuildOptions:
    kaggle_user: str
    manifest: Path
    out: Path
    dataset_slug: str
    target: Target
    gpu: bool
    wheel_cache: Path
    offline: bool
    repo: Path = REPO_ROOT


@dataclass
class BuildResult:
    dataset_dir: Path
    kernel_dir: Path
    version: str
    total_size: int
    warnings: list[str] = field(default_factory=list)


def check_names(user: str, slug: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", user or ""):
        raise BundleError(f"--kaggle-user must be a Kaggle user name (letters, digits, - or _), not {user!r}")
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{1,48})[a-z0-9]", slug):
        raise BundleError(f"--dataset-slug must be 3-50 lower-case letters, digits and hyphens, not {slug!r}")
    if slug == "kernel":
        raise BundleError("--dataset-slug 'kernel' would clash with the kernel folder beside the dataset")
    if not 6 <= len(dataset_title(slug)) <= 50:
        raise BundleError(f"the dataset title {dataset_title(slug)!r} must be 6-50 characters")


def build_bundle(options: BuildOptions) -> BuildResult:
    """Everything but the upload: checks first (cheap, no network), then the slow parts,
    all in a staging folder that replaces the previous dist only when complete."""
    check_names(options.kaggle_user, options.dataset_slug)
    check_pins_against_image()
    manifest_path = options.manifest.resolve()
    manifest = read_weights_manifest(manifest_path)
    check_weight_files(manifest, manifest_path.parent)
    kernel_script = options.repo / KERNEL_SCRIPT
    if not kernel_script.is_file():
        raise BundleError(f"the kernel script {kernel_script} is missing")
    source = read_source_state(options.repo)
    if source.dirty:
        LOG.warning("the working tree has uncommitted changes to the packed files: the version says .dirty")
    wheels = ensure_cached_wheels(options.wheel_cache, options.target, offline=options.offline)

    options.out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=options.out))
    try:
        dataset = staging / options.dataset_slug
        kernel = staging / "kernel"
        (dataset / "wheels").mkdir(parents=True)
        kernel.mkdir()
        version, bundled = assemble_dataset(options, manifest, manifest_path.parent, source, wheels, dataset)
        shutil.copyfile(kernel_script, kernel / "inference.py")
        write_json(kernel / "kernel-metadata.json", kernel_metadata(options.kaggle_user, options.dataset_slug, options.gpu))
        built_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record = bundle_record(dataset, kernel, source, version, options.target, options.kaggle_user,
                               options.dataset_slug, built_at)
        write_json(dataset / "BUNDLE.json", record)
        final_dataset = move_into_place(dataset, options.out / options.dataset_slug, staging)
        final_kernel = move_into_place(kernel, options.out / "kernel", staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    total = record["total_size"]
    result = BuildResult(final_dataset, final_kernel, version, total)
    LOG.info("dataset %s: %d files, %s (%d wheels, %d model files)", final_dataset, len(record["files"]),
             human_size(total), len(bundled), len(manifest["models"]))
    if total > KAGGLE_DATASET_LIMIT_BYTES:
        message = (f"the dataset is {human_size(total)}, past Kaggle's limit of "
                   f"{human_size(KAGGLE_DATASET_LIMIT_BYTES)} ({KAGGLE_DATASET_LIMIT_SOURCE}): the upload will fail")
        LOG.warning(message)
        result.warnings.append(message)
    return result


def assemble_dataset(options: BuildOptions, manifest: dict, manifest_dir: Path, source: SourceState,
                     wheels: dict[str, Path], dataset: Path) -> tuple[str, list[Path]]:
    wheel_dir = dataset / "wheels"
    bundled = []
    for pin, cached in wheels.items():
        shutil.copyfile(cached, wheel_dir / cached.name)
        (wheel_dir / cached.name).chmod(0o644)
        bundled.append(wheel_dir / cached.name)
    package_wheel = build_package_wheel(options.repo, source, wheel_dir)
    bundled.append(package_wheel)
    version = parse_wheel_filename(package_wheel.name).version
    write_json(wheel_dir / "lock.json", wheel_lock(bundled, options.target))
    bundled_manifest = copy_weights(manifest, manifest_dir, dataset)
    write_json(dataset / MANIFEST_NAME, bundled_manifest)
    write_json(dataset / "dataset-metadata.json", dataset_metadata(options.kaggle_user, options.dataset_slug))
    (dataset / "README.md").write_text(
        dataset_readme(options.kaggle_user, options.dataset_slug, version, source, options.target, bundled_manifest),
        encoding="utf-8")
    return version, bundled


def move_into_place(built: Path, final: Path, staging: Path) -> Path:
    """Swap the complete folder in; the previous one goes to the staging folder (deleted)."""
    if final.exists():
        os.replace(final, staging / f"previous-{final.name}")
    os.replace(built, final)
    return final


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


# ----------------------------------------------------------------------------- upload

def display_path(path: Path) -> str:
    """Relative to the current folder when inside it, else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def upload_commands(result: BuildResult, message: str) -> dict[str, list[str]]:
    dataset, kernel = display_path(result.dataset_dir), display_path(result.kernel_dir)
    return {
        "create": ["kaggle", "datasets", "create", "-p", dataset, "--dir-mode", "zip"],
        "version": ["kaggle", "datasets", "version", "-p", dataset, "-m", message, "--dir-mode", "zip"],
        "push": ["kaggle", "kernels", "push", "-p", kernel],
    }


def print_upload_commands(commands: dict[str, list[str]]) -> None:
    print("Upload with the kaggle CLI (--dir-mode zip: without it the CLI skips the subfolders):")
    print(f"  first upload of the dataset:  {shlex.join(commands['create'])}")
    print(f"  or, when it exists:           {shlex.join(commands['version'])}")
    print(f"  then the kernel:              {shlex.join(commands['push'])}")


def kaggle_credentials_present() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").is_file()


def push_bundle(user: str, slug: str, commands: dict[str, list[str]]) -> None:
    """Create or version the dataset, wait until Kaggle has processed it, push the kernel."""
    if shutil.which("kaggle") is None:
        raise BundleError("--push needs the kaggle CLI on PATH (pip install kaggle); "
                          "or upload with the commands printed above")
    if not kaggle_credentials_present():
        raise BundleError("--push needs Kaggle credentials: ~/.kaggle/kaggle.json (or $KAGGLE_CONFIG_DIR/"
                          "kaggle.json) or the KAGGLE_USERNAME and KAGGLE_KEY variables")
    dataset_id = f"{user}/{slug}"
    exists = subprocess.run(["kaggle", "datasets", "status", dataset_id], capture_output=True, text=True).returncode == 0
    LOG.info("dataset %s %s: uploading with `kaggle datasets %s`", dataset_id,
             "exists" if exists else "is new", "version" if exists else "create")
    run(commands["version" if exists else "create"], quiet=False, what="the dataset upload")
    wait_until_dataset_ready(dataset_id)
    run(commands["push"], quiet=False, what="kaggle kernels push")


def wait_until_dataset_ready(dataset_id: str) -> None:
    deadline = time.monotonic() + DATASET_READY_TIMEOUT_SECONDS
    while True:
        status = subprocess.run(["kaggle", "datasets", "status", dataset_id], capture_output=True, text=True)
        text = (status.stdout + status.stderr).strip().lower()
        if status.returncode == 0 and "ready" in text:
            LOG.info("dataset %s is ready", dataset_id)
            return
        if "error" in text or "fail" in text:
            raise BundleError(f"Kaggle could not process dataset {dataset_id}: {text}", exit_code=1)
        if time.monotonic() > deadline:
            raise BundleError(f"dataset {dataset_id} not ready after {DATASET_READY_TIMEOUT_SECONDS} s "
                              f"(last status: {text!r}); push the kernel later by hand", exit_code=1)
        LOG.info("waiting for Kaggle to process dataset %s (status: %s)", dataset_id, text or "?")
        time.sleep(DATASET_READY_POLL_SECONDS)


# ----------------------------------------------------------------------------- verify

# The environment Kaggle's base image is sure to provide, made once by `make kaggle-base`:
# Python with tensorflow (and the keras it requires), numpy, pandas, pyarrow and
# scikit-learn; no keras-cv, no hms_offline. Every verification puts a fresh, throwaway
# venv on top of it, so the base itself is never changed.
DEFAULT_KAGGLE_BASE = REPO_ROOT / ".venv-kaggle-base"
KAGGLE_BASE_SETUP = "make kaggle-base"
# The sample test data --verify generates when no --verify-data is given.
VERIFY_SYNTHETIC = {"n_train": 6, "n_test": 8, "seed": 0}
# What only the bundle's wheels provide: absent from the fresh environment before the
# kernel runs (else the verification would prove nothing), installed into it after.
MODULES_FROM_THE_BUNDLE = ("keras_cv", "hms_offline")
SUM_TOLERANCE = 1e-6
KERNEL_TIMEOUT_SECONDS = 60 * 60
KERNEL_SUMMARY_RULE = "=" * 60  # kernel/inference.py prints its summary below this line

SOCKET_GUARD = '''\
"""Written by build_bundle.py --verify: any attempt to open a network connection raises."""
import socket


def _refuse(*args, **kwargs):
    raise OSError("network access blocked by build_bundle.py --verify")


socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
'''


def local_target(python_version: str) -> Target:
    """The wheels this machine's own CPython runs: what the local verification installs."""
    if not sys.platform.startswith("linux"):
        raise BundleError(f"--verify runs the kernel as Kaggle does, on Linux; this machine is {sys.platform}")
    return parse_target(python_version, f"manylinux2014_{os.uname().machine}")


def ask_python(python: Path, expression: str):
    """The JSON value of `expression` in another interpreter, in isolated mode (no PYTHON*
    variables, no user site, no current folder on sys.path)."""
    code = f"import importlib.util, json, sys, sysconfig; print(json.dumps({expression}))"
    return json.loads(run([str(python), "-I", "-c", code], quiet=True, what=f"running {python}").stdout)


def python_version_of(python: Path) -> str:
    return ask_python(python, "'%d.%d' % sys.version_info[:2]")


def site_packages_of(python: Path) -> list[str]:
    return ask_python(python, "sorted({sysconfig.get_path('purelib'), sysconfig.get_path('platlib')})")


def module_origins(python: Path, modules: tuple[str, ...] = MODULES_FROM_THE_BUNDLE) -> dict[str, str | None]:
    """Where each top-level module would be imported from (None: not importable); nothing is imported."""
    return ask_python(python, f"{{name: getattr(importlib.util.find_spec(name), 'origin', None) for name in {list(modules)!r}}}")


def kaggle_base_python(kaggle_base: Path) -> Path:
    python = kaggle_base / "bin" / "python"
    if not python.is_file():
        raise BundleError(f"no Kaggle-base environment at {kaggle_base}: create it once (needs PyPI) with "
                          f"`{KAGGLE_BASE_SETUP}` (a venv with only tensorflow-cpu, numpy, pandas, pyarrow, scikit-learn)")
    return python


def make_fresh_env(base_python: Path, folder: Path) -> Path:
    """A new venv whose site-packages also holds the base's (a .pth file) and that installs
    into its own: pip sees the base's packages as installed, a wheel of another version
    shadows the base's copy without uninstalling it, and the base stays as it was. Its pip
    is the base's (--without-pip), as on Kaggle. Returns its python."""
    run([str(base_python), "-m", "venv", "--without-pip", str(folder)], quiet=True,
        what="creating the fresh environment")
    python = folder / "bin" / "python"
    lines = [f"import site; site.addsitedir({path!r})\n" for path in site_packages_of(base_python)]
    (Path(site_packages_of(python)[0]) / "kaggle_base.pth").write_text("".join(lines), encoding="utf-8")
    return python


def require_absent_before_install(python: Path) -> None:
    present = {name: origin for name, origin in module_origins(python).items() if origin}
    if present:
        raise BundleError(f"the fresh environment already imports {present} before the kernel installs anything: "
                          f"the Kaggle-base environment must hold neither keras-cv nor hms_offline "
                          f"(recreate it: rm -rf .venv-kaggle-base && {KAGGLE_BASE_SETUP})")


def require_installed_from_bundle(python: Path, env: Path) -> None:
    elsewhere = {name: origin for name, origin in module_origins(python).items()
                 if not origin or not Path(origin).resolve().is_relative_to(env.resolve())}
    if elsewhere:
        raise BundleError(f"after the kernel ran, these are not installed in the fresh environment {env}: {elsewhere}",
                          exit_code=1)


def find_built_bundle(dist: Path, slug: str) -> tuple[Path, Path]:
    """The dataset folder (the one holding wheels/lock.json) and kernel/inference.py of a build in `dist`."""
    kernel = dist / "kernel" / "inference.py"
    datasets = sorted(lock.parent.parent for lock in dist.glob("*/wheels/lock.json"))
    if not kernel.is_file() or not datasets:
        raise BundleError(f"{dist} holds no built bundle (kernel/inference.py and <dataset>/wheels/lock.json): "
                          f"build one first with python build_bundle.py --kaggle-user USER --out {dist}")
    if len(datasets) > 1:
        datasets = [dataset for dataset in datasets if dataset.name == slug]
        if not datasets:
            raise BundleError(f"{dist} holds several datasets; name one with --dataset-slug")
    return datasets[0], kernel


def bundle_for_local_python(dataset: Path, copy: Path, wheels: dict[str, Path], target: Target) -> None:
    """A copy of the built dataset whose pinned wheels are the same pins for this machine's
    Python, with lock.json regenerated for them; weights, manifest and the hms_offline wheel
    (pure Python) as built."""
    shutil.copytree(dataset, copy)
    wheel_dir = copy / "wheels"
    lock = json.loads((wheel_dir / "lock.json").read_text(encoding="utf-8"))
    package = canonical_name(PACKAGE)
    package_wheels = [wheel_dir / p["file"] for p in lock["packages"] if p["name"] == package]
    if len(package_wheels) != 1:
        raise BundleError(f"{dataset / 'wheels' / 'lock.json'} lists no single {package} wheel: not a build of build_bundle.py")
    for pinned in (p for p in lock["packages"] if p["name"] != package):
        (wheel_dir / pinned["file"]).unlink()
    local = []
    for cached in wheels.values():
        shutil.copyfile(cached, wheel_dir / cached.name)
        local.append(wheel_dir / cached.name)
    write_json(wheel_dir / "lock.json", wheel_lock(local + package_wheels, target))


def unshare_works() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rn", "true"], capture_output=True).returncode == 0


def offline_environment(guard_dir: Path) -> dict[str, str]:
    """The caller's variables without those that reach outside the bundle (PYTHON*, PIP_*, an
    active virtualenv), plus the socket guard; pip reads no configuration file."""
    kept = {name: value for name, value in os.environ.items()
            if not name.startswith(("PYTHON", "PIP_")) and name != "VIRTUAL_ENV"}
    return {**kept, "PYTHONPATH": str(guard_dir), "PYTHONNOUSERSITE": "1", "PIP_CONFIG_FILE": os.devnull,
            "TF_CPP_MIN_LOG_LEVEL": "2"}


@dataclass(frozen=True)
class NetworkBlock:
    """How verification runs are cut off from the network: a network namespace without
    interfaces (`unshare -rn`) where the machine allows it, and always a socket guard
    (a sitecustomize.py on PYTHONPATH) that makes every Python connection attempt raise."""

    guard_dir: Path
    namespace: bool

    @classmethod
    def install(cls, guard_dir: Path) -> "NetworkBlock":
        guard_dir.mkdir(parents=True, exist_ok=True)
        (guard_dir / "sitecustomize.py").write_text(SOCKET_GUARD, encoding="utf-8")
        return cls(guard_dir, unshare_works())

    def describe(self) -> str:
        if self.namespace:
            return "network namespace without interfaces (unshare -rn) + socket guard"
        return "socket guard only (unshare -rn is not permitted on this machine)"

    def run(self, command: list[str], cwd: Path, timeout: float = KERNEL_TIMEOUT_SECONDS) -> subprocess.CompletedProcess:
        prefix = ["unshare", "-rn"] if self.namespace else []
        LOG.debug("running offline: %s", shlex.join(prefix + command))
        try:
            return subprocess.run(prefix + command, cwd=cwd, env=offline_environment(self.guard_dir), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise BundleError(f"{shlex.join(command)} did not finish within {timeout:.0f} s", exit_code=1) from error


def synthesize_competition(folder: Path, *, n_train: int, n_test: int, seed: int) -> Path:
    """A synthetic, competition-shaped folder (python -m hms_offline synth, from this repo)."""
    LOG.info("generating synthetic competition data in %s (%d train rows, %d test rows, seed %d)",
             folder, n_train, n_test, seed)
    run([sys.executable, "-m", PACKAGE, "synth", "--out", str(folder), "--n-train", str(n_train),
         "--n-test", str(n_test), "--seed", str(seed)], quiet=True, cwd=REPO_ROOT,
        what=f"generating synthetic data with {sys.executable} -m {PACKAGE} synth (or pass --verify-data DIR)")
    return folder


def check_test_data(data: Path) -> None:
    missing = [name for name in ("test.csv", "sample_submission.csv", "test_spectrograms") if not (data / name).exists()]
    if missing:
        raise BundleError(f"--verify-data {data} is not a competition-shaped folder: it lacks {', '.join(missing)}")


def read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise BundleError(f"{path} is empty", exit_code=1)
    return rows[0], rows[1:]


def row_problem(row: list[str], width: int) -> str | None:
    """Why Kaggle would refuse this submission row, or None."""
    if len(row) != width:
        return f"{len(row)} fields, expected {width}"
    try:
        values = [float(value) for value in row[1:]]
    except ValueError:
        return f"not a number among {row[1:]}"
    if not all(math.isfinite(value) for value in values):
        return f"not finite: {row[1:]}"
    if not all(0 <= value <= 1 for value in values):
        return f"a probability outside [0, 1]: {row[1:]}"
    total = math.fsum(values)
    if abs(total - 1) > SUM_TOLERANCE:
        return f"sums to {total!r}, not 1 (within {SUM_TOLERANCE:g})"
    return None


def submission_problems(submission: Path, sample: Path) -> list[str]:
    """Everything that would make Kaggle refuse the submission: columns other than
    sample_submission.csv's, rows missing, extra or in another order, values not finite,
    outside [0, 1] or not summing to 1."""
    header, rows = read_csv_rows(submission)
    expected_header, expected_rows = read_csv_rows(sample)
    problems = []
    if header != expected_header:
        problems.append(f"columns {header}, but sample_submission.csv has {expected_header}")
    ids, expected_ids = [row[0] for row in rows], [row[0] for row in expected_rows]
    if ids != expected_ids:
        first = next((i for i, (a, b) in enumerate(zip(ids, expected_ids)) if a != b), min(len(ids), len(expected_ids)))
        problems.append(f"{len(ids)} rows where sample_submission.csv has {len(expected_ids)}; the ids first differ "
                        f"at data row {first + 1}")
    problems += [f"line {line}: {problem}" for line, row in enumerate(rows, start=2)
                 if (problem := row_problem(row, len(expected_header)))]
    return problems


def check_submission(submission: Path, sample: Path) -> int:
    """The number of rows of a valid submission; a BundleError listing what is wrong otherwise."""
    if not submission.is_file():
        raise BundleError(f"the kernel wrote no {submission}", exit_code=1)
    problems = submission_problems(submission, sample)
    if problems:
        listed = "\n  ".join(problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else []))
        raise BundleError(f"the submission {submission} would be refused by Kaggle:\n  {listed}", exit_code=1)
    return len(read_csv_rows(submission)[1])


def score_command(python: Path, solution: Path, submission: Path) -> list[str]:
    return [str(python), "-m", PACKAGE, "score", "--solution", str(solution), "--submission", str(submission)]


def parse_score(output: str) -> float:
    return float(output.strip().splitlines()[-1])


@dataclass
class Verification:
    submission: Path
    rows: int
    kl: float | None  # against the data's test_solution.csv, when it has one
    kernel_summary: str
    network_block: str
    seconds: float


def kernel_summary(output: str) -> str:
    """What kernel/inference.py prints after its rule line (its whole output if there is none)."""
    _, rule, summary = output.rpartition(KERNEL_SUMMARY_RULE)
    return summary.strip() if rule else output.strip()


def run_kernel(python: Path, work: Path, data: Path, block: NetworkBlock) -> str:
    result = block.run([str(python), str(work / KERNEL_SCRIPT), "--data-dir", str(data), "--bundle-dir",
                        str(work / "bundle"), "--output", str(work / "submission.csv"),
                        "--work-dir", str(work / "kernel-work")], cwd=work)
    if result.returncode != 0:
        raise BundleError(f"the kernel failed offline (exit code {result.returncode}); its last output:\n"
                          f"{result.stdout[-6000:]}", exit_code=1)
    return result.stdout


def verify_bundle(dist: Path, work: Path, *, data_dir: Path | None, kaggle_base: Path, wheel_cache: Path,
                  offline: bool, dataset_slug: str) -> Verification:
    """Run the built kernel on sample test data in a fresh environment that holds only the
    Kaggle base (no keras-cv, no hms_offline), network blocked; check the submission."""
    started = time.monotonic()
    dataset, kernel_script = find_built_bundle(dist, dataset_slug)
    base_python = kaggle_base_python(kaggle_base)
    target = local_target(python_version_of(base_python))
    wheels = ensure_cached_wheels(wheel_cache, target, offline=offline)
    work.mkdir(parents=True, exist_ok=True)
    LOG.info("verifying %s: a copy with the wheels for CPython %s, in %s", dataset, target.python_version, work)
    bundle_for_local_python(dataset, work / "bundle", wheels, target)
    (work / KERNEL_SCRIPT).parent.mkdir()
    shutil.copyfile(kernel_script, work / KERNEL_SCRIPT)
    data = data_dir.resolve() if data_dir else synthesize_competition(work / "data", **VERIFY_SYNTHETIC)
    check_test_data(data)
    python = make_fresh_env(base_python, work / "env")
    require_absent_before_install(python)
    block = NetworkBlock.install(work / "offline_guard")
    LOG.info("running the kernel in a fresh environment on %s, offline (%s)", kaggle_base, block.describe())
    output = run_kernel(python, work, data, block)
    require_installed_from_bundle(python, work / "env")
    submission = work / "submission.csv"
    rows = check_submission(submission, data / "sample_submission.csv")
    kl = None
    if (data / "test_solution.csv").is_file():
        scored = block.run(score_command(python, data / "test_solution.csv", submission), cwd=work)
        if scored.returncode != 0:
            raise BundleError(f"scoring the submission failed:\n{scored.stdout[-3000:]}", exit_code=1)
        kl = parse_score(scored.stdout)
    return Verification(submission, rows, kl, kernel_summary(output), block.describe(), time.monotonic() - started)


def submission_head(path: Path, rows: int = 5) -> str:
    with open(path, encoding="utf-8") as handle:
        return "".join(line for _, line in zip(range(rows + 1), handle)).rstrip("\n")


def print_verification(result: Verification) -> None:
    print("Kernel summary (fresh environment on the Kaggle base, wheels from the bundle):")
    print("  " + result.kernel_summary.replace("\n", "\n  "))
    print(f"Verified offline ({result.network_block}) in {result.seconds:.0f} s: keras_cv and hms_offline were "
          f"absent before the kernel installed them from the bundle; the submission has {result.rows} row(s) with the "
          f"columns and row order of sample_submission.csv, finite values in [0, 1], rows summing to 1 "
          f"(within {SUM_TOLERANCE:g}).")
    print("Head of the submission:")
    print("  " + submission_head(result.submission).replace("\n", "\n  "))
    if result.kl is not None:
        print(f"KL divergence against test_solution.csv: {result.kl:.6f}")


# ----------------------------------------------------------------------------- demo

DEMO_DIR = REPO_ROOT / "runs" / "demo"
DEMO_KAGGLE_USER = "demo"
DEMO_SYNTHETIC = {"n_train": 160, "n_test": 16, "seed": 0}
# Small on purpose, to take minutes on 2 CPU cores: a few short epochs of small batches,
# 2 folds of MobileNetV3 Large and 1 of the much slower EfficientNetV2 B2. So few steps need
# what the full recipe does not: a higher peak learning rate, a BatchNormalization momentum
# whose moving statistics settle within them, no MixUp or masking (they slow learning down).
DEMO_TRAINING = ("--n-splits", "2", "--batch-size", "8", "--warmup-epochs", "0.5", "--peak-learning-rate", "1e-3",
                 "--bn-momentum", "0.5", "--mixup-p", "0", "--time-mask-p", "0", "--freq-mask-p", "0",
                 "--progress", "epoch")
DEMO_RUNS = {
    "mobilenetv3_large": ("--folds", "all", "--epochs", "4", "--steps-per-epoch", "8"),
    "efficientnetv2_b2": ("--folds", "0", "--epochs", "2", "--steps-per-epoch", "4"),
}
FOLDS_NAME = "folds.csv"
CV_NAME = "cv.json"


def train_demo_runs(data: Path, folder: Path) -> list[Path]:
    """One run per architecture with the real training command; later runs reuse the first
    run's folds, so every architecture holds out the same patients per fold."""
    runs = []
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ}
    for arch, flags in DEMO_RUNS.items():
        run_dir = folder / arch
        same_folds = ("--folds-file", str(runs[0] / FOLDS_NAME)) if runs else ()
        LOG.info("training %s on %s -> %s", arch, data, run_dir)
        run([sys.executable, "-m", PACKAGE, "train", "--data-dir", str(data), "--arch", arch, "--out", str(run_dir),
             "--work-dir", str(folder / "spectrograms"), *DEMO_TRAINING, *flags, *same_folds],
            quiet=False, env=env, cwd=REPO_ROOT, what=f"training {arch}")
        runs.append(run_dir)
    return runs


def merge_manifests(paths: list[Path], out: Path) -> Path:
    """One manifest listing the models of several runs' manifests, each `file` made relative
    to `out`'s folder. The runs must agree on format, classes and preprocessing."""
    manifests = [read_weights_manifest(path) for path in paths]
    for path, manifest in zip(paths[1:], manifests[1:]):
        for key in ("format_version", "classes", "preprocessing"):
            if manifest.get(key) != manifests[0].get(key):
                raise BundleError(f"{path}: {key} differs from {paths[0]}'s; one ensemble needs the same")
    models = [
        {**model, "file": Path(os.path.relpath(path.parent.resolve() / model["file"], out.parent.resolve())).as_posix()}
        for path, manifest in zip(paths, manifests) for model in manifest["models"]
    ]
    names = [model["name"] for model in models]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise BundleError(f"the manifests {[str(p) for p in paths]} share model names {duplicates}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {**manifests[0], "models": models})
    return out


def class_prior_submission(data: Path, out: Path) -> Path:
    """The class-prior baseline: the mean vote fractions of train.csv's rows, predicted for
    every row of sample_submission.csv."""
    header, sample_rows = read_csv_rows(data / "sample_submission.csv")
    columns = header[1:]
    with open(data / "train.csv", newline="", encoding="utf-8") as handle:
        votes = [[float(row[column]) for column in columns] for row in csv.DictReader(handle)]
    fractions = [[vote / sum(row) for vote in row] for row in votes]
    prior = [math.fsum(column) / len(fractions) for column in zip(*fractions)]
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([row[0], *map(repr, prior)] for row in sample_rows)
    return out


def score_locally(solution: Path, submission: Path) -> float:
    return parse_score(run(score_command(Path(sys.executable), solution, submission), quiet=True, cwd=REPO_ROOT,
                           what="scoring").stdout)


def describe_run(run_dir: Path) -> str:
    cv = json.loads((run_dir / CV_NAME).read_text(encoding="utf-8"))
    return (f"{cv['arch']:<18} folds {','.join(map(str, cv['folds']))}: CV KL {cv['cv_kl']:.4f} on "
            f"{cv['oof_rows']} out-of-fold rows (class-prior baseline {cv['prior_kl']:.4f})")


def demo_command(args: argparse.Namespace) -> int:
    """Synthetic data -> a small fold ensemble of both architectures -> bundle -> offline verification."""
    started = time.monotonic()
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    data = synthesize_competition(DEMO_DIR / "data", **DEMO_SYNTHETIC)
    runs = train_demo_runs(data, DEMO_DIR)
    manifest = merge_manifests([run_dir / MANIFEST_NAME for run_dir in runs], DEMO_DIR / MANIFEST_NAME)
    built = build_bundle(BuildOptions(
        kaggle_user=DEMO_KAGGLE_USER, manifest=manifest, out=DEMO_DIR / "dist", dataset_slug=args.dataset_slug,
        target=parse_target(args.python_version, args.platform), gpu=False, wheel_cache=args.wheel_cache.resolve(),
        offline=args.offline, repo=args.repo.resolve(),
    ))
    verification = verify_bundle(DEMO_DIR / "dist", DEMO_DIR / "verify", data_dir=data,
                                 kaggle_base=args.kaggle_base.resolve(), wheel_cache=args.wheel_cache.resolve(),
                                 offline=args.offline, dataset_slug=args.dataset_slug)
    baseline = score_locally(data / "test_solution.csv", class_prior_submission(data, DEMO_DIR / "class_prior.csv"))
    print()
    print(f"hms-offline demo on synthetic data ({display_path(data)}: {DEMO_SYNTHETIC['n_train']} train rows, "
          f"{DEMO_SYNTHETIC['n_test']} test rows), trained with python -m hms_offline train:")
    for run_dir in runs:
        print(f"  {describe_run(run_dir)}")
    print(f"Bundle: {display_path(built.dataset_dir)} ({human_size(built.total_size)}, "
          f"{len(read_weights_manifest(manifest)['models'])} models) and {display_path(built.kernel_dir)}")
    print_verification(verification)
    print(f"On the {verification.rows} synthetic test rows: ensemble KL {verification.kl:.4f}, "
          f"class-prior baseline KL {baseline:.4f} (mean train vote fractions for every row)")
    print(f"Submission: {display_path(verification.submission)}. Demo done in {(time.monotonic() - started) / 60:.1f} min.")
    return 0


# ----------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kaggle-user", help="your Kaggle user name (owner of the dataset and kernel)")
    parser.add_argument("--manifest", type=Path,
                        help=f"weights manifest of the ensemble to ship (default: the repo's {MANIFEST_NAME})")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--dataset-slug", default=DEFAULT_DATASET_SLUG, help="Kaggle dataset slug")
    parser.add_argument("--python-version", default=DEFAULT_PYTHON_VERSION, help="Python of the Kaggle image")
    parser.add_argument("--platform", default=DEFAULT_PLATFORM, help="wheel platform tag of the Kaggle image")
    parser.add_argument("--gpu", action="store_true", help="kernel with a GPU accelerator")
    parser.add_argument("--push", action="store_true", help="upload with the kaggle CLI after building")
    parser.add_argument("--wheel-cache", type=Path, default=DEFAULT_WHEEL_CACHE,
                        help="downloaded wheels, one folder per target (default: .cache/wheels/)")
    parser.add_argument("--offline", action="store_true",
                        help="never download: every pinned wheel must be in the cache already")
    commands = parser.add_mutually_exclusive_group()
    commands.add_argument("--fetch-wheels", action="store_true",
                          help="only fill the wheel cache for the target (the set-up step), then exit")
    commands.add_argument("--verify", type=Path, metavar="DIST",
                          help="run the kernel built in DIST on sample test data in a fresh environment holding only "
                               "the Kaggle base, network blocked, and check the submission")
    commands.add_argument("--demo", action="store_true",
                          help=f"synthetic data -> train both architectures -> bundle -> verify, in "
                               f"{DEMO_DIR.relative_to(REPO_ROOT)}/")
    parser.add_argument("--verify-data", type=Path, metavar="DIR",
                        help="competition-shaped test data for --verify (default: a small synthetic competition)")
    parser.add_argument("--kaggle-base", type=Path, default=DEFAULT_KAGGLE_BASE,
                        help=f"venv with only what Kaggle's image surely has, for --verify and --demo "
                             f"(default: {DEFAULT_KAGGLE_BASE.name}/, made by `{KAGGLE_BASE_SETUP}`)")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT,
                        help="git checkout to pack hms_offline and kernel/inference.py from (default: this one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def fetch_wheels_command(args: argparse.Namespace) -> int:
    target = parse_target(args.python_version, args.platform)
    check_pins_against_image()
    wheels = ensure_cached_wheels(args.wheel_cache, target, offline=args.offline)
    total = sum(path.stat().st_size for path in wheels.values())
    print(f"{len(wheels)} wheels for CPython {target.python_version} on {target.platform} "
          f"({human_size(total)}) in {args.wheel_cache / target.cache_name}")
    return 0


def verify_command(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="hms-verify-") as work:
        result = verify_bundle(args.verify.resolve(), Path(work), data_dir=args.verify_data,
                               kaggle_base=args.kaggle_base.resolve(), wheel_cache=args.wheel_cache.resolve(),
                               offline=args.offline, dataset_slug=args.dataset_slug)
        print_verification(result)
    return 0


def build_command(args: argparse.Namespace) -> int:
    if not args.kaggle_user:
        raise BundleError("--kaggle-user is required to build a bundle")
    options = BuildOptions(
        kaggle_user=args.kaggle_user, manifest=args.manifest or args.repo / MANIFEST_NAME, out=args.out.resolve(),
        dataset_slug=args.dataset_slug, target=parse_target(args.python_version, args.platform),
        gpu=args.gpu, wheel_cache=args.wheel_cache.resolve(), offline=args.offline, repo=args.repo.resolve(),
    )
    result = build_bundle(options)
    print(f"Built {display_path(result.dataset_dir)} ({human_size(result.total_size)}) and "
          f"{display_path(result.kernel_dir)}; hms_offline {result.version}")
    commands = upload_commands(result, f"hms-offline {result.version}")
    print_upload_commands(commands)
    if args.push:
        push_bundle(args.kaggle_user, args.dataset_slug, commands)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(message)s", stream=sys.stderr)
    if args.fetch_wheels:
        command = fetch_wheels_command
    elif args.verify:
        command = verify_command
    elif args.demo:
        command = demo_command
    else:
        command = build_command
    try:
        return command(args)
    except BundleError as error:
        LOG.error("%s", error)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
