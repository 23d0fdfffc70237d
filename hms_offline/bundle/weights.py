"""The weights manifest as plain JSON (hms_offline.manifest imports numpy), the weight
files' checks and their sha256-checked copy into the dataset."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from .common import LOG, BundleError, human_size, sha256_of, write_json


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
    duplicates = duplicate_names(manifest["models"])
    if duplicates:
        raise BundleError(f"weights manifest {path}: duplicate model names {duplicates}")
    return manifest


def duplicate_names(models: list[dict]) -> list[str]:
    """The model names listed more than once, sorted."""
    names = [model["name"] for model in models]
    return sorted({name for name in names if names.count(name) > 1})


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
    duplicates = duplicate_names(models)
    if duplicates:
        raise BundleError(f"the manifests {[str(p) for p in paths]} share model names {duplicates}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {**manifests[0], "models": models})
    return out
