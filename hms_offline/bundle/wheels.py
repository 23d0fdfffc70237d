"""The wheels the kernel installs: the target interpreter and platform, the pins, what
Kaggle's image provides (never shipped), the download cache and lock.json."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .common import FORMAT_VERSION, LOG, REPO_ROOT, ZIP_EPOCH, BundleError, run, sha256_of

DEFAULT_PYTHON_VERSION = "3.12"  # the current Kaggle image
DEFAULT_PLATFORM = "manylinux2014_x86_64"
DEFAULT_WHEEL_CACHE = REPO_ROOT / ".cache" / "wheels"

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


def check_pins_against_image() -> None:
    clash = sorted({parse_pin(pin)[0] for pin in KERNEL_WHEEL_PINS} & PROVIDED_BY_KAGGLE_IMAGE)
    if clash:
        raise BundleError(f"KERNEL_WHEEL_PINS must not hold packages of Kaggle's image: {', '.join(clash)}")


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
