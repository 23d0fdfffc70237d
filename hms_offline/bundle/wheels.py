"""The keras engine's wheels: the CPython versions and platform the bundle ships them for,
the pins and why each is shipped and when the kernel installs it, what Kaggle's image
provides (never shipped), the download cache, the lock of each Python
(wheels/lock-cp3XY.json) and the build's static check of every lock."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hms_offline.digests import sha256_file

from .common import LOG, REPO_ROOT, ZIP_EPOCH, BundleError, run
from .kaggle_image import ImagePins, PinsError, read_image_pins
from .requirements import (Requirement, RequirementError, read_wheel_metadata, specifier_contains,
                           target_environment)

# Every CPython the bundle ships the keras engine's wheels for, one lock each: Kaggle's image
# went 3.10 -> 3.11 (April 2025) -> 3.12 (December 2025), and Colab's base, which it is built
# on, moved to 3.13 in August 2026. The pure wheels ship once; binary ones once per Python.
DEFAULT_PYTHON_VERSIONS = ("3.11", "3.12", "3.13")
DEFAULT_PLATFORM = "manylinux2014_x86_64"
DEFAULT_WHEEL_CACHE = REPO_ROOT / ".cache" / "wheels"
LOCK_FORMAT_VERSION = 2  # 1 was the single wheels/lock.json, for one Python, without `why`
WHEELS_DIR = "wheels"  # the dataset's folder of wheels and their locks (Target.lock_name)

# What the kernel installs for the keras engine only (from the bundle, `pip install
# --no-index --no-deps`), and only what the image lacks: keras-cv and keras themselves, and
# what `import keras_cv` needs at import time beyond TensorFlow's own install. Found and
# proven by experiment: in a fresh venv with only `pip install tensorflow-cpu==2.21.0
# pandas pyarrow scikit-learn` (Python 3.11 and 3.12), these wheels installed with
# --no-deps make `import keras_cv` (which imports tensorflow_datasets at module level)
# and `import keras` work with the network blocked (`unshare -rn`), and tensorflow_datasets
# imports whole (it swallows a failed submodule import with an "ERROR:absl" log, so
# "keras_cv imports" alone is not enough). Each one is needed: keras_cv imports `tree`
# (dm-tree) and `regex`; tensorflow_datasets imports etils, toml, promise, tqdm,
# immutabledict and tensorflow_metadata. Not needed at import, so not shipped: kagglehub
# (only loads presets, which the project never uses), keras-core, psutil, simple-parsing,
# array-record, PyYAML (all in Kaggle's image: the static check counts on that). Every pin
# has wheels for CPython 3.11, 3.12 and 3.13 on manylinux2014 x86_64 (checked with `pip
# download --only-binary=:all: --python-version 3.1X`): dm-tree stays at 0.1.9 because
# 0.1.10 has no manylinux2014 wheel for 3.11 or 3.13.
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

# Why each pin ships, and why the image's own copy, when it has one, is kept: every lock
# entry says so in its `why`. "Checked in the Kaggle-shaped base" = in .venv-kaggle-base
# (`make kaggle-base`: Python 3.12, tensorflow 2.20.0, keras 3.13.2, keras-cv 0.9.0, dm-tree
# 0.1.10, tensorflow-datasets 4.9.9), both architectures built with keras-cv, weights saved
# by the training stack (keras 3.15.1) loaded, predictions equal (max difference 0.0).
WHY_SHIPPED = {
    "keras-cv": "the keras engine builds every model with keras-cv (0.9.0, its last release); "
                "an image's keras-cv 0.9.0 is this release",
    "keras": "keras-cv's Keras 3; weights saved by keras 3.15.1 load and predict identically under the image's "
             "keras 3.13.2 (max difference 0.0, checked in the Kaggle-shaped base)",
    "tensorflow-datasets": "keras_cv imports it at module level; the image's 4.9.9 works with keras-cv 0.9.0 "
                           "(checked in the Kaggle-shaped base)",
    "tensorflow-metadata": "tensorflow_datasets imports it; its generated *_pb2 modules refuse a protobuf runtime "
                           "older than the one they were generated with, so the image's copy, made for the image's "
                           "protobuf, is the safer one",
    "etils": "tensorflow_datasets imports it",
    "dm-tree": "keras_cv imports it as `tree`; 0.1.9 has manylinux2014 wheels for CPython 3.11-3.13 (0.1.10 "
               "does not), and the image's 0.1.10 works with keras-cv 0.9.0 (checked in the Kaggle-shaped base)",
    "regex": "keras_cv imports it",
    "promise": "tensorflow_datasets imports it; PyPI has only its sdist, built into a pure wheel here",
    "toml": "tensorflow_datasets imports it",
    "tqdm": "tensorflow_datasets imports it (hms_offline too; the image has it)",
    "immutabledict": "tensorflow_datasets imports it",
}

# The kernel's rule per lock entry: "missing" (install only where the image lacks the
# package) for every pin, unless the bundle cannot work with the image's version: then
# "missing_or_different" (replace any other installed version), and the reason goes into
# the entry's `why` and the kernel's log. None needs it today: the image's keras 3.13.2,
# dm-tree 0.1.10 and tensorflow-datasets 4.9.9 all work (see WHY_SHIPPED).
REPLACE_OTHER_VERSIONS: dict[str, str] = {}
KEEP_INSTALLED = "missing"  # the `install_if` words of a lock entry
REPLACE_OTHER_VERSION = "missing_or_different"
INSTALL_RULES = (KEEP_INSTALLED, REPLACE_OTHER_VERSION)

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

    @property
    def lock_name(self) -> str:
        """What the kernel reads on CPython X.Y: lock-cpXY.json in the dataset's wheels/."""
        return f"lock-{self.abi}.json"


def parse_target(python_version: str, platform: str) -> Target:
    if not re.fullmatch(r"3\.\d{1,2}", python_version):
        raise BundleError(f"--python-version must look like 3.12, not {python_version!r}")
    if not re.fullmatch(r"[a-z0-9_]+", platform):
        raise BundleError(f"--platform must be a wheel platform tag such as {DEFAULT_PLATFORM}, not {platform!r}")
    return Target(python_version, platform)


def parse_targets(python_versions: list[str] | tuple[str, ...], platform: str) -> tuple[Target, ...]:
    """One target per Python, in the order given, each once."""
    versions = list(dict.fromkeys(python_versions))
    if not versions:
        raise BundleError("at least one --python-version is needed")
    return tuple(parse_target(version, platform) for version in versions)


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


def ensure_wheel_sets(cache_root: Path, targets: tuple[Target, ...], *, offline: bool) -> dict[Target, dict[str, Path]]:
    """ensure_cached_wheels for every target; offline, one error naming everything missing."""
    if offline:
        missing = {target: [pin for pin in KERNEL_WHEEL_PINS
                            if find_cached_wheel(cache_root / target.cache_name, pin, target) is None]
                   for target in targets}
        missing = {target: pins for target, pins in missing.items() if pins}
        if missing:
            listing = "; ".join(f"{cache_root / target.cache_name} lacks {', '.join(pins)}"
                                for target, pins in missing.items())
            versions = " ".join(f"--python-version {target.python_version}" for target in missing)
            raise BundleError(f"--offline, and the wheel cache is not filled: {listing}. Fill it once with the "
                              f"network: python build_bundle.py --fetch-wheels {versions} --platform "
                              f"{targets[0].platform} --wheel-cache {cache_root} (or `make wheels`)")
    return {target: ensure_cached_wheels(cache_root, target, offline=offline) for target in targets}


def ship_wheels(wheel_sets: dict[Target, dict[str, Path]], wheel_dir: Path) -> dict[Target, list[Path]]:
    """Copy every target's wheels into the dataset's wheels/: a pure wheel (the same file name
    for every Python) once, a binary one per Python. Returns each target's shipped files."""
    shipped = {}
    for target, wheels in wheel_sets.items():
        shipped[target] = []
        for cached in wheels.values():
            copy = wheel_dir / cached.name
            if not copy.exists():  # a pure wheel already copied for another Python: the same release
                shutil.copyfile(cached, copy)
                copy.chmod(0o644)
            shipped[target].append(copy)
    return shipped


def check_pins_against_image() -> None:
    names = [parse_pin(pin)[0] for pin in KERNEL_WHEEL_PINS]
    clash = sorted(set(names) & PROVIDED_BY_KAGGLE_IMAGE)
    if clash:
        raise BundleError(f"KERNEL_WHEEL_PINS must not hold packages of Kaggle's image: {', '.join(clash)}")
    unexplained = sorted(set(names) - set(WHY_SHIPPED))
    if unexplained:
        raise BundleError(f"KERNEL_WHEEL_PINS without a reason in WHY_SHIPPED: {', '.join(unexplained)}")


def install_rule(name: str) -> tuple[str, str]:
    """The kernel's `install_if` for a package and the `why` beside it."""
    why = WHY_SHIPPED.get(name, "")
    if name in REPLACE_OTHER_VERSIONS:
        return REPLACE_OTHER_VERSION, f"{why}; REPLACES another installed version: {REPLACE_OTHER_VERSIONS[name]}"
    return KEEP_INSTALLED, f"{why}; installed only where the image lacks it (any installed version is kept)"


def wheel_lock(wheels: list[Path], target: Target) -> dict:
    """lock-cpXY.json: every wheel the keras engine may install on that Python."""
    packages = []
    for path in wheels:
        wheel = parse_wheel_filename(path.name)
        install_if, why = install_rule(wheel.name)
        packages.append({"name": wheel.name, "version": wheel.version, "file": path.name, "sha256": sha256_file(path),
                         "install_if": install_if, "why": why})
    return {"format_version": LOCK_FORMAT_VERSION, "python_version": target.python_version,
            "platform": target.platform, "packages": sorted(packages, key=lambda p: p["name"])}


# ----------------------------------------------------------------------------- static check

@dataclass
class LockCheck:
    """What the static check of one lock found: problems stop the build; notes are logged."""

    lock: str
    problems: list[str]
    notes: list[str]


def check_lock(lock: dict, wheel_dir: Path, target: Target, image: ImagePins) -> LockCheck:
    """Every wheel of the lock installs on the target (its tags, its Requires-Python), and every
    Requires-Dist of it (markers evaluated for the target; extras followed into the lock's
    wheels) is met by the lock or by the image's pins. A version range is checked against the
    lock's version, and against the image's own where the image's copy is what the kernel
    keeps (install_if "missing") - on the image's Python only: the pins describe that image.
    Elsewhere a requirement the image meets is checked by name (a note says so)."""
    name = target.lock_name
    problems, notes = [], []
    environment = target_environment(target.python_version, target.platform)
    in_lock = {package["name"]: package for package in lock["packages"]}
    in_image = image.by_name()
    image_python = target.python_version == image.python_version
    metadata, queue, seen = {}, [(package["name"], ()) for package in lock["packages"]], set()
    while queue:
        package_name, extras = queue.pop(0)
        if (package_name, extras) in seen:
            continue
        seen.add((package_name, extras))
        package = in_lock[package_name]
        wheel_name = package["file"]
        if package_name not in metadata:
            try:
                metadata[package_name] = read_wheel_metadata(wheel_dir / wheel_name)
            except RequirementError as error:
                problems.append(f"{name}: {error}")
                continue
            if not wheel_fits_target(parse_wheel_filename(wheel_name), target):
                problems.append(f"{name}: {wheel_name} does not install on CPython {target.python_version} "
                                f"{target.platform} (its tags)")
            requires_python = metadata[package_name].requires_python
            if requires_python and not specifier_contains(requires_python, target.python_version):
                problems.append(f"{name}: {wheel_name} requires Python {requires_python}, not "
                                f"{target.python_version}")
        for requirement in metadata[package_name].requires_dist:
            try:
                if not requirement.applies(environment, extras):
                    continue
            except RequirementError as error:
                problems.append(f"{name}: {wheel_name} requires {requirement.text!r}: {error}")
                continue
            found = requirement_problem(requirement, in_lock, in_image, image_python, image)
            where = f"{name}: {wheel_name} requires {requirement.text!r}"
            if found.startswith("note: "):
                notes.append(f"{where}: {found[len('note: '):]}")
            elif found:
                problems.append(f"{where}: {found}")
            if requirement.name in in_lock and requirement.extras:
                queue.append((requirement.name, requirement.extras))
    return LockCheck(name, problems, notes)


def requirement_problem(requirement: Requirement, in_lock: dict, in_image: dict, image_python: bool,
                        image: ImagePins) -> str:
    """'' when met, 'note: ...' when met by name only, else the problem."""
    spec, pinned = requirement.specifier, in_image.get(requirement.name)
    package = in_lock.get(requirement.name)
    if package is None and pinned is None:
        return f"met neither by the lock nor by the image's pins ({image.source.name})"
    problems = []
    if package is not None and spec and not specifier_contains(spec, package["version"]):
        problems.append(f"the lock has {package['name']} {package['version']}")
    image_copy_used = pinned is not None and (package is None or package["install_if"] == KEEP_INSTALLED)
    if image_copy_used and spec and image_python and pinned.version and not specifier_contains(spec, pinned.version):
        problems.append(f"the image has {pinned.name} {pinned.version}, which the kernel keeps")
    if problems:
        return "; ".join(problems)
    if image_copy_used and spec and (not image_python or not pinned.version):
        return (f"note: met by the image's {pinned.name} by name only (its version there is not in "
                f"{image.source.name}, which describes the CPython {image.python_version} image)")
    return ""


def check_locks(locks: dict[Target, tuple[dict, Path]], image: ImagePins | None = None) -> None:
    """The static check of every lock (with the folder holding its wheels); any problem
    stops the build, naming the lock, the wheel and the requirement."""
    try:
        image = image or read_image_pins()
    except PinsError as error:
        raise BundleError(str(error)) from None
    problems = []
    for target, (lock, wheel_dir) in locks.items():
        result = check_lock(lock, wheel_dir, target, image)
        for note in result.notes:
            LOG.debug("%s", note)
        if result.notes:
            LOG.info("%s: %d version range(s) met by the image's packages checked by name only (their versions are "
                     "known for CPython %s only; -v lists them)", result.lock, len(result.notes), image.python_version)
        problems += result.problems
        if not result.problems:
            LOG.info("%s: %d wheel(s) install on CPython %s; every requirement met by the lock or by %s",
                     result.lock, len(lock["packages"]), target.python_version, image.source.name)
    if problems:
        raise BundleError(f"the static check of the keras engine's locks failed ({len(problems)} problem(s)): the "
                          f"kernel could not install them as locked\n  " + "\n  ".join(problems))


def check_wheel_sets(wheel_sets: dict[Target, dict[str, Path]], image: ImagePins | None = None) -> None:
    """check_locks of the locks the build will write, on the cached wheels (before any slow work)."""
    locks = {}
    for target, wheels in wheel_sets.items():
        folders = {path.parent for path in wheels.values()}
        if len(folders) != 1:
            raise BundleError(f"the wheels for CPython {target.python_version} are not in one folder: {sorted(folders)}")
        locks[target] = (wheel_lock(list(wheels.values()), target), folders.pop())
    check_locks(locks, image)
