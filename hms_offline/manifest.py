"""`weights_manifest.json`: the fold ensemble a bundle ships, and its integrity checks.

Training writes it, `build_bundle.py` copies it with the weights, the kernel loads it.
Loading refuses, with an error naming the entry and the file, anything it cannot trust:
an unknown format version, classes in another order, an unknown preprocessing, an unknown
arch, a missing weight file or one whose sha256 differs.
"""

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from hms_offline.atomic import write_text_atomically
from hms_offline.constants import CLASSES, IMAGE_SHAPE
from hms_offline.model import ARCHITECTURES
from hms_offline.preprocess import PREPROCESSING_NAME, PREPROCESSING_PARAMS

FORMAT_VERSION = 1
MANIFEST_NAME = "weights_manifest.json"


class ManifestError(ValueError):
    """The manifest or one of its weight files cannot be trusted."""


@dataclass
class ModelEntry:
    name: str
    arch: str
    fold: int
    file: str  # a Keras `.weights.h5`, relative to the manifest's folder
    sha256: str
    input_shape: list[int] = field(default_factory=lambda: list(IMAGE_SHAPE))
    include_rescaling: bool = True
    ensemble_weight: float = 1.0
    cv_kl: float | None = None
    tensorflow: str | None = None
    keras: str | None = None
    keras_cv: str | None = None


@dataclass
class Manifest:
    format_version: int = FORMAT_VERSION
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    preprocessing: dict = field(
        default_factory=lambda: {"name": PREPROCESSING_NAME, "params": dict(PREPROCESSING_PARAMS)}
    )
    models: list[ModelEntry] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def installed_versions() -> dict[str, str | None]:
    """Versions of the model stack, read from package metadata (no import of TensorFlow)."""
    distributions = {
        "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu"),
        "keras": ("keras",),
        "keras_cv": ("keras-cv",),
    }
    return {
        key: next(filter(None, map(_version_or_none, candidates)), None)
        for key, candidates in distributions.items()
    }


def _version_or_none(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def make_entry(
    weights_file: Path,
    manifest_dir: Path,
    *,
    arch: str,
    fold: int,
    name: str | None = None,
    include_rescaling: bool = True,
    ensemble_weight: float = 1.0,
    cv_kl: float | None = None,
    input_shape=IMAGE_SHAPE,
) -> ModelEntry:
    """An entry for a weights file, its sha256 and the installed versions filled in."""
    weights_file = Path(weights_file)
    relative = os.path.relpath(weights_file.resolve(), Path(manifest_dir).resolve())
    return ModelEntry(
        name=name or f"{arch}_fold{fold}",
        arch=arch,
        fold=fold,
        file=Path(relative).as_posix(),
        sha256=sha256_file(weights_file),
        input_shape=list(input_shape),
        include_rescaling=include_rescaling,
        ensemble_weight=ensemble_weight,
        cv_kl=cv_kl,
        **installed_versions(),
    )


def write_manifest(manifest: Manifest, path: Path) -> Path:
    """Write atomically: a reader never sees a half-written manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, manifest.to_json())
    return path


def read_manifest(path: Path) -> Manifest:
    """Parse and check the manifest's fields (not the weight files: see `verify_files`)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"no weights manifest at {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}: not valid JSON ({error})") from error
    manifest = _parse(raw, path)
    _check_compatible(manifest, path)
    return manifest


def load_manifest(path: Path) -> tuple[Manifest, Path]:
    """Read, check and verify every weight file; returns the manifest and its folder."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME if path.is_dir() else path
    manifest = read_manifest(manifest_path)
    verify_files(manifest, manifest_path.parent)
    return manifest, manifest_path.parent


def verify_files(manifest: Manifest, root: Path) -> None:
    for entry in manifest.models:
        weights = weights_path(entry, root)
        if not weights.exists():
            raise ManifestError(f"model {entry.name!r}: weights file {weights} is missing")
        actual = sha256_file(weights)
        if actual != entry.sha256:
            raise ManifestError(
                f"model {entry.name!r}: sha256 of {weights} is {actual}, the manifest says {entry.sha256}"
            )


def weights_path(entry: ModelEntry, root: Path) -> Path:
    return Path(root) / entry.file


def _parse(raw: dict, path: Path) -> Manifest:
    known = {f.name for f in dataclasses.fields(ModelEntry)}
    required = {f.name for f in dataclasses.fields(ModelEntry) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    for key in ("format_version", "classes", "preprocessing", "models"):
        if key not in raw:
            raise ManifestError(f"{path}: missing top-level field {key!r}")
    models = []
    for index, item in enumerate(raw["models"]):
        missing = required - set(item)
        if missing:
            raise ManifestError(f"{path}: models[{index}] lacks {sorted(missing)}")
        models.append(ModelEntry(**{k: v for k, v in item.items() if k in known}))
    return Manifest(
        models=models,
        classes=list(raw["classes"]),
        preprocessing=dict(raw["preprocessing"]),
        format_version=raw["format_version"],
    )


def _check_compatible(manifest: Manifest, path: Path) -> None:
    if manifest.format_version != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format_version {manifest.format_version}, this code reads {FORMAT_VERSION}"
        )
    if manifest.classes != list(CLASSES):
        raise ManifestError(f"{path}: classes {manifest.classes}, expected {list(CLASSES)}")
    name = manifest.preprocessing.get("name")
    if name != PREPROCESSING_NAME:
        raise ManifestError(
            f"{path}: unknown preprocessing {name!r}; this code implements {PREPROCESSING_NAME!r}"
        )
    params = manifest.preprocessing.get("params", {})
    if params != PREPROCESSING_PARAMS:
        raise ManifestError(
            f"{path}: preprocessing parameters {params} differ from this code's {PREPROCESSING_PARAMS}"
        )
    for entry in manifest.models:
        if entry.arch not in ARCHITECTURES:
            raise ManifestError(
                f"{path}: model {entry.name!r} has unknown arch {entry.arch!r}; known: {sorted(ARCHITECTURES)}"
            )
        if not entry.ensemble_weight >= 0:
            raise ManifestError(f"{path}: model {entry.name!r} has ensemble_weight {entry.ensemble_weight}, must be >= 0")
