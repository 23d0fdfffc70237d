"""`weights_manifest.json`: the fold ensemble a bundle ships, and its integrity checks.

Training writes it, `build_bundle.py` copies it with the weights, the kernel loads it.
Reading refuses the whole manifest, with an error naming the file and the field, when it
cannot be trusted at all: not JSON, an unknown format version, classes in another order, an
unknown preprocessing. One bad model entry (a missing or mistyped field, an unknown arch, a
missing weight file or one whose sha256 differs) costs only that entry: it is set aside in
`Manifest.rejected` with the reason, so the kernel predicts with the rest, while
`manifest_problems` (what `build_bundle.py` runs) reports every such reason and builds nothing.
"""

import dataclasses
import hashlib
import json
import math
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
    # The fold's training class prior (mean vote fractions, in CLASSES order): the kernel's
    # fallback prediction for a row it cannot predict. None in manifests older than it.
    class_prior: list[float] | None = None
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
    # (entry name, reason) of each entry set aside on reading; never written.
    rejected: list[tuple[str, str]] = field(default_factory=list, compare=False)

    def to_json(self) -> str:
        raw = dataclasses.asdict(self)
        del raw["rejected"]
        return json.dumps(raw, indent=2) + "\n"


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
    class_prior=None,
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
        class_prior=None if class_prior is None else [float(p) for p in class_prior],
        **installed_versions(),
    )


def write_manifest(manifest: Manifest, path: Path) -> Path:
    """Write atomically: a reader never sees a half-written manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, manifest.to_json())
    return path


def read_manifest(path: Path) -> Manifest:
    """Parse and check the manifest's fields (not the weight files: see `verify_files`).

    A problem with the whole manifest raises ManifestError; a bad entry is moved to
    `rejected` with its reason."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no weights manifest at {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: not valid JSON ({error})") from error
    return _parse(raw, path)


def load_manifest(path: Path) -> tuple[Manifest, Path]:
    """Read, check and verify every weight file; returns the manifest and its folder.

    Entries that fail are in `manifest.rejected`; none usable at all is a ManifestError."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME if path.is_dir() else path
    manifest = read_manifest(manifest_path)
    verify_files(manifest, manifest_path.parent)
    if not manifest.models:
        reasons = "".join(f"\n  {name}: {reason}" for name, reason in manifest.rejected)
        what = "no usable model" if manifest.rejected else "no models: nothing to predict with"
        raise ManifestError(f"{manifest_path}: the weights manifest lists {what}{reasons}")
    return manifest, manifest_path.parent


def manifest_problems(path: Path) -> list[str]:
    """Every reason the kernel would refuse this manifest or one of its entries; [] when it
    would use them all. What `build_bundle.py` checks before it builds anything."""
    try:
        manifest, _ = load_manifest(path)
    except (ManifestError, FileNotFoundError) as error:
        return [str(error)]
    return [f"{path}: model {name!r}: {reason}" for name, reason in manifest.rejected]


def verify_files(manifest: Manifest, root: Path) -> None:
    """Move each entry whose weight file is missing or differs from its sha256 to `rejected`."""
    kept = []
    for entry in manifest.models:
        problem = _weights_problem(entry, root)
        if problem:
            manifest.rejected.append((entry.name, problem))
        else:
            kept.append(entry)
    manifest.models = kept


def _weights_problem(entry: ModelEntry, root: Path) -> str | None:
    weights = weights_path(entry, root)
    if not weights.is_file():
        return f"weights file {weights} is missing"
    actual = sha256_file(weights)
    if actual != entry.sha256:
        return f"sha256 of {weights} is {actual}, the manifest says {entry.sha256}"
    return None


def weights_path(entry: ModelEntry, root: Path) -> Path:
    return Path(root) / entry.file


TOP_LEVEL_FIELDS = ("format_version", "classes", "preprocessing", "models")
# What each field of an entry must be: (check, description).
_ENTRY_TYPES = {
    "name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "arch": (lambda v: isinstance(v, str), "a string"),
    "fold": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "file": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "sha256": (lambda v: isinstance(v, str), "a string"),
    "input_shape": (lambda v: v == list(IMAGE_SHAPE), f"{list(IMAGE_SHAPE)}"),
    "include_rescaling": (lambda v: isinstance(v, bool), "true or false"),
    "ensemble_weight": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "cv_kl": (lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)), "a number or null"),
    "class_prior": (lambda v: v is None or _is_prior(v), f"null or {len(CLASSES)} numbers >= 0 summing to 1"),
}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_prior(value) -> bool:
    return (isinstance(value, list) and len(value) == len(CLASSES) and all(_is_number(v) and v >= 0 for v in value)
            and abs(sum(value) - 1.0) < 1e-3)


def _parse(raw, path: Path) -> Manifest:
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    for key in TOP_LEVEL_FIELDS:
        if key not in raw:
            raise ManifestError(f"{path}: missing top-level field {key!r}")
    if not isinstance(raw["models"], list):
        raise ManifestError(f"{path}: 'models' must be a list, found {type(raw['models']).__name__}")
    if not isinstance(raw["preprocessing"], dict):
        raise ManifestError(f"{path}: 'preprocessing' must be an object with 'name' and 'params'")
    manifest = Manifest(
        classes=raw["classes"], preprocessing=dict(raw["preprocessing"]), format_version=raw["format_version"]
    )
    _check_compatible(manifest, path)
    seen = set()
    for index, item in enumerate(raw["models"]):
        label = item.get("name") if isinstance(item, dict) and isinstance(item.get("name"), str) else f"models[{index}]"
        problem = _entry_problem(item) or ("has the name of an earlier entry" if label in seen else None)
        if problem:
            manifest.rejected.append((label, f"models[{index}] {problem}"))
            continue
        seen.add(label)
        manifest.models.append(ModelEntry(**{k: v for k, v in item.items() if k in _KNOWN_FIELDS}))
    return manifest


_KNOWN_FIELDS = {f.name for f in dataclasses.fields(ModelEntry)}
_REQUIRED_FIELDS = sorted(
    f.name for f in dataclasses.fields(ModelEntry)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)


def _entry_problem(item) -> str | None:
    """Why one `models[]` item cannot be used, or None."""
    if not isinstance(item, dict):
        return f"is a {type(item).__name__}, expected an object"
    missing = [key for key in _REQUIRED_FIELDS if key not in item]
    if missing:
        return f"lacks {missing}"
    for key, (check, expected) in _ENTRY_TYPES.items():
        if key in item and not check(item[key]):
            return f"field {key!r} is {item[key]!r}, expected {expected}"
    if item["arch"] not in ARCHITECTURES:
        return f"has unknown arch {item['arch']!r}; known: {sorted(ARCHITECTURES)}"
    return None


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
