"""`weights_manifest.json`: the fold ensemble a bundle ships, and its integrity checks.

Training writes it, `build_bundle.py` copies it with the weights and the exports, the kernel
loads it. Format 2 (written always) gives each model entry its input view (`input`: the
transform of the data it was trained on, by name and parameters) and, in a bundle, its
exported graphs (`exports`: a TF SavedModel folder and a TFLite file, each with its digest).
Format 1 (one top-level `preprocessing` for every model, no exports) is still read: its
`preprocessing` becomes each entry's `input`.

Reading refuses the whole manifest, with an error naming the file and the field, when it
cannot be trusted at all: not JSON, an unknown format version, classes in another order. One
bad model entry (a missing or mistyped field, an unknown arch, an unknown input view or other
parameters of it, a missing weight file or one whose sha256 differs) costs only that entry: it
is set aside in `Manifest.rejected` with the reason, so the kernel predicts with the rest,
while `manifest_problems` (what `build_bundle.py` runs) reports every such reason and builds
nothing. A missing or damaged export never rejects its entry: `export_problem` says why that
export cannot be used, and the kernel runs the model with another engine.
"""

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from hms_offline.atomic import write_text_atomically
from hms_offline.constants import CLASSES, IMAGE_SHAPE
from hms_offline.digests import sha256_file, sha256_tree
from hms_offline.features.views import VIEWS, view_record
from hms_offline.models.registry import ARCHITECTURES

FORMAT_VERSION = 2  # what this code writes
READABLE_FORMATS = (1, 2)
MANIFEST_NAME = "weights_manifest.json"
# The exported graphs an entry may list, and what each is on disk.
EXPORT_KINDS = ("saved_model", "tflite")
_EXPORT_IS_FOLDER = {"saved_model": True, "tflite": False}

__all__ = [
    "EXPORT_KINDS", "FORMAT_VERSION", "MANIFEST_NAME", "Manifest", "ManifestError", "ModelEntry", "export_path",
    "export_problem", "export_problems", "installed_versions", "load_manifest", "make_entry", "manifest_problems",
    "read_manifest", "verify_files", "weights_path", "write_manifest",
]


class ManifestError(ValueError):
    """The manifest or one of its weight files cannot be trusted."""


@dataclass
class ModelEntry:
    name: str
    arch: str
    fold: int
    file: str  # a Keras `.weights.h5`, relative to the manifest's folder
    sha256: str
    # The input view: {"name": ..., "params": {...}}, one of features/views.py's VIEWS.
    input: dict = field(default_factory=view_record)
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
    # kind (EXPORT_KINDS) -> {"path": relative to the manifest's folder, "sha256": digest};
    # written by build_bundle.py; empty (and not written) elsewhere.
    exports: dict = field(default_factory=dict)


@dataclass
class Manifest:
    format_version: int = FORMAT_VERSION  # in memory always the current format (see read_format)
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    models: list[ModelEntry] = field(default_factory=list)
    # (entry name, reason) of each entry set aside on reading; never written.
    rejected: list[tuple[str, str]] = field(default_factory=list, compare=False)
    # The format_version of the file it was read from (1 or 2); always written as FORMAT_VERSION.
    read_format: int = field(default=FORMAT_VERSION, compare=False)

    def to_json(self) -> str:
        models = []
        for entry in self.models:
            raw = dataclasses.asdict(entry)
            if not raw["exports"]:
                del raw["exports"]
            models.append(raw)
        raw = {"format_version": FORMAT_VERSION, "classes": list(self.classes), "models": models}
        return json.dumps(raw, indent=2) + "\n"


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
    input_view: dict | None = None,
) -> ModelEntry:
    """An entry for a weights file, its sha256 and the installed versions filled in; its
    input view is this code's spectrogram transform unless `input_view` names another."""
    weights_file = Path(weights_file)
    relative = os.path.relpath(weights_file.resolve(), Path(manifest_dir).resolve())
    return ModelEntry(
        name=name or f"{arch}_fold{fold}",
        arch=arch,
        fold=fold,
        file=Path(relative).as_posix(),
        sha256=sha256_file(weights_file),
        input=json.loads(json.dumps(input_view)) if input_view is not None else view_record(),
        input_shape=list(input_shape),
        include_rescaling=include_rescaling,
        ensemble_weight=ensemble_weight,
        cv_kl=cv_kl,
        class_prior=None if class_prior is None else [float(p) for p in class_prior],
        **installed_versions(),
    )


def write_manifest(manifest: Manifest, path: Path) -> Path:
    """Write atomically (in format FORMAT_VERSION): a reader never sees a half-written manifest."""
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

    Entries that fail are in `manifest.rejected`; none usable at all is a ManifestError.
    Exports are not verified here: see `export_problem`."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME if path.is_dir() else path
    manifest = read_manifest(manifest_path)
    verify_files(manifest, manifest_path.parent)
    if not manifest.models:
        reasons = "".join(f"\n  {name}: {reason}" for name, reason in manifest.rejected)
        what = "no usable model" if manifest.rejected else "no models: nothing to predict with"
        raise ManifestError(f"{manifest_path}: the weights manifest lists {what}{reasons}")
    return manifest, manifest_path.parent


def manifest_problems(path: Path, require_exports: bool = False) -> list[str]:
    """Every reason the kernel would refuse this manifest or one of its entries; [] when it
    would use them all. What `build_bundle.py` checks before it builds anything.

    With `require_exports` (what the build checks of the manifest it bundles), also every
    entry lacking one of EXPORT_KINDS or whose export is missing or differs from its digest."""
    try:
        manifest, root = load_manifest(path)
    except (ManifestError, FileNotFoundError) as error:
        return [str(error)]
    problems = [f"{path}: model {name!r}: {reason}" for name, reason in manifest.rejected]
    if require_exports:
        problems += [f"{path}: model {name!r}: {reason}" for name, reason in export_problems(manifest, root)]
    return problems


def verify_files(manifest: Manifest, root: Path) -> None:
    """Move each entry whose weight file is missing or differs from its sha256 to `rejected`.
    (A bad export does not reject its entry: only that engine is unavailable for it.)"""
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


# ----------------------------------------------------------------------------- exports

def _check_kind(kind: str) -> str:
    if kind not in EXPORT_KINDS:
        raise ValueError(f"unknown export kind {kind!r}; known: {', '.join(EXPORT_KINDS)}")
    return kind


def _export_listing(entry: ModelEntry, kind: str):
    exports = entry.exports if isinstance(entry.exports, dict) else {}
    return exports.get(_check_kind(kind))


def _listing_is_valid(listing) -> bool:
    return (isinstance(listing, dict) and isinstance(listing.get("path"), str) and listing["path"] != ""
            and isinstance(listing.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", listing["sha256"]) is not None)


def export_path(entry: ModelEntry, root: Path, kind: str) -> Path | None:
    """Where the entry's `kind` export ("saved_model": a folder, "tflite": a file) is, or
    None when its manifest entry lists none. Check it with `export_problem` before use."""
    listing = _export_listing(entry, kind)
    return Path(root) / listing["path"] if _listing_is_valid(listing) else None


def export_problem(entry: ModelEntry, root: Path, kind: str) -> str | None:
    """Why the entry's `kind` export cannot be used, or None when it can: not listed, a
    malformed listing, missing, or its digest (`sha256_tree` of the SavedModel folder,
    `sha256_file` of the TFLite file) differs from the manifest's."""
    listing = _export_listing(entry, kind)
    if listing is None:
        return f"the manifest lists no {kind} export"
    if not _listing_is_valid(listing):
        return f"its {kind} export is listed as {listing!r}, expected {{\"path\": ..., \"sha256\": <64 hex digits>}}"
    path = Path(root) / listing["path"]
    if _EXPORT_IS_FOLDER[kind]:
        if not path.is_dir():
            return f"{kind} export folder {path} is missing"
        actual = sha256_tree(path)
    else:
        if not path.is_file():
            return f"{kind} export file {path} is missing"
        actual = sha256_file(path)
    if actual != listing["sha256"]:
        return f"digest of {kind} export {path} is {actual}, the manifest says {listing['sha256']}"
    return None


def export_problems(manifest: Manifest, root: Path) -> list[tuple[str, str]]:
    """(entry name, reason) for every export of EXPORT_KINDS an entry lacks or cannot use."""
    return [(entry.name, problem) for entry in manifest.models for kind in EXPORT_KINDS
            if (problem := export_problem(entry, root, kind))]


# ----------------------------------------------------------------------------- parsing

TOP_LEVEL_FIELDS = {1: ("format_version", "classes", "preprocessing", "models"), 2: ("format_version", "classes", "models")}
# What each field of an entry must be: (check, description).
_ENTRY_TYPES = {
    "name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "arch": (lambda v: isinstance(v, str), "a string"),
    "fold": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "file": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "sha256": (lambda v: isinstance(v, str), "a string"),
    "input": (lambda v: isinstance(v, dict) and isinstance(v.get("name"), str) and isinstance(v.get("params"), dict),
              'an object {"name": ..., "params": {...}}'),
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
    if "format_version" not in raw:
        raise ManifestError(f"{path}: missing top-level field 'format_version'")
    version = raw["format_version"]
    if isinstance(version, bool) or version not in READABLE_FORMATS:
        raise ManifestError(f"{path}: format_version {version!r}, this code reads "
                            f"{' and '.join(map(str, READABLE_FORMATS))}")
    for key in TOP_LEVEL_FIELDS[version]:
        if key not in raw:
            raise ManifestError(f"{path}: missing top-level field {key!r}")
    if not isinstance(raw["models"], list):
        raise ManifestError(f"{path}: 'models' must be a list, found {type(raw['models']).__name__}")
    if raw["classes"] != list(CLASSES):
        raise ManifestError(f"{path}: classes {raw['classes']}, expected {list(CLASSES)}")
    items = raw["models"]
    if version == 1:
        items = _format_1_items(raw, path)
    manifest = Manifest(classes=list(raw["classes"]), read_format=version)
    seen = set()
    for index, item in enumerate(items):
        label = item.get("name") if isinstance(item, dict) and isinstance(item.get("name"), str) else f"models[{index}]"
        problem = _entry_problem(item) or ("has the name of an earlier entry" if label in seen else None)
        if problem:
            manifest.rejected.append((label, f"models[{index}] {problem}"))
            continue
        seen.add(label)
        manifest.models.append(ModelEntry(**{k: v for k, v in item.items() if k in _KNOWN_FIELDS}))
    return manifest


def _format_1_items(raw: dict, path: Path) -> list:
    """Format 1's entries as format 2's: the top-level `preprocessing` becomes each one's
    `input`; format 1 had no exports."""
    preprocessing = raw["preprocessing"]
    if not isinstance(preprocessing, dict):
        raise ManifestError(f"{path}: 'preprocessing' must be an object with 'name' and 'params'")
    view = {"name": preprocessing.get("name"), "params": preprocessing.get("params", {})}
    return [
        {**{k: v for k, v in item.items() if k not in ("input", "exports")}, "input": json.loads(json.dumps(view))}
        if isinstance(item, dict) else item
        for item in raw["models"]
    ]


_KNOWN_FIELDS = {f.name for f in dataclasses.fields(ModelEntry)}
# Fields without a default, and `input` (its default is for code that makes entries).
_REQUIRED_FIELDS = sorted(
    [f.name for f in dataclasses.fields(ModelEntry)
     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING] + ["input"]
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
    view, params = item["input"]["name"], item["input"]["params"]
    if view not in VIEWS:
        return f"has unknown input view {view!r}; this code implements {sorted(VIEWS)}"
    if params != VIEWS[view].params:
        return f"input {view!r}: preprocessing parameters {params} differ from this code's {VIEWS[view].params}"
    return None
