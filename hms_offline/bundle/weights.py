"""The weights manifest: checked by the kernel's own loader, then read as plain JSON
(hms_offline.models.manifest imports numpy), merged, brought to format 2, and its weight files and
exports copied, digest-checked, into the dataset."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from hms_offline.digests import copy_with_sha256, sha256_file, sha256_tree

from .common import LOG, BundleError, human_size, write_json

MANIFEST_FORMAT = 2  # what the bundle ships: a copy of hms_offline.models.manifest.FORMAT_VERSION


def check_with_kernel_loader(paths: list[Path], repo: Path, require_exports: bool = False) -> None:
    """Refuse, listing the problems, any manifest the kernel would refuse: `python -m hms_offline
    check-manifest` of the hms_offline being packed, run by this Python (the training venv's:
    that loader needs numpy, and this package only the standard library). `require_exports`:
    also every model's exports (listed, present, digests as listed), for the manifest the build bundles."""
    command = [sys.executable, "-m", "hms_offline", "check-manifest", *(["--require-exports"] if require_exports else []),
               *map(str, paths)]
    # Run from the repo so that `-m` imports the hms_offline it packs; leave no .pyc in it.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONSAFEPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    LOG.info("checking %s with the kernel's manifest loader", ", ".join(map(str, paths)))
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    problems = result.stdout.strip().splitlines()
    if result.returncode == 1 and problems:
        raise BundleError("the kernel would refuse the weights manifest:\n  " + "\n  ".join(problems))
    if result.returncode != 0:
        raise BundleError(f"checking the weights manifests failed (exit code {result.returncode}): "
                          f"{shlex.join(command)}\n{result.stderr[-4000:]}\nRun build_bundle.py with the Python of "
                          "the venv hms_offline trains in.", exit_code=1)


def read_weights_manifest(path: Path) -> dict:
    """The manifest as plain JSON; its fields are the kernel loader's to check."""
    if not path.is_file():
        raise BundleError(f"weights manifest not found: {path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BundleError(f"weights manifest {path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), list):
        raise BundleError(f"weights manifest {path}: expected an object with a 'models' list")
    return manifest


def duplicate_names(models: list[dict]) -> list[str]:
    """The model names listed more than once, sorted."""
    names = [model["name"] for model in models]
    return sorted({name for name in names if names.count(name) > 1})


def safe_model_name(model: dict) -> str:
    """The model's name as a file name: letters, digits, '.', '_' and '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(model["name"])).strip("._") or "model"


def bundled_weight_name(model: dict) -> str:
    """weights/<model name><the file's suffixes>, e.g. weights/mobilenetv3_large_fold0.weights.h5."""
    suffixes = "".join(Path(model["file"]).suffixes)
    return f"weights/{safe_model_name(model)}{suffixes}"


def bundled_export_names(model: dict) -> dict[str, str]:
    """exports/<model name>/saved_model (a folder) and exports/<model name>.tflite."""
    safe = safe_model_name(model)
    return {"saved_model": f"exports/{safe}/saved_model", "tflite": f"exports/{safe}.tflite"}


def check_weight_files(manifest: dict, manifest_dir: Path) -> None:
    """Refuse a missing weight file or one whose sha256 differs, naming it."""
    for model in manifest["models"]:
        path = manifest_dir / model["file"]
        if not path.is_file():
            raise BundleError(f"model {model['name']!r}: weight file {path} is missing")
        actual = sha256_file(path)
        if actual != model["sha256"]:
            raise BundleError(f"model {model['name']!r}: weight file {path} has sha256 {actual}, "
                              f"the manifest says {model['sha256']}")


def copy_weights(manifest: dict, manifest_dir: Path, dataset: Path) -> dict:
    """Copy every model file into weights/ and every model's exports (when it lists any) into
    exports/, checking the digest of what was copied, and return the manifest with `file` and
    the exports' paths relative to the dataset folder."""
    models = manifest["models"]
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
        if model.get("exports"):
            copied[-1]["exports"] = copy_exports(model, manifest_dir, dataset)
    return {**manifest, "models": copied}


def copy_exports(model: dict, manifest_dir: Path, dataset: Path) -> dict:
    """Copy the model's SavedModel folder to exports/<name>/saved_model/ and its TFLite file to
    exports/<name>.tflite, each digest checked after the copy; their listing relative to `dataset`."""
    listed = {}
    for kind, relative in bundled_export_names(model).items():
        entry = model["exports"].get(kind) or {}
        source = manifest_dir / entry.get("path", "")
        destination = dataset / relative
        if kind == "saved_model":
            if not source.is_dir():
                raise BundleError(f"model {model['name']!r}: its SavedModel export {source} is missing")
            copy_tree(source, destination)
            actual = sha256_tree(destination)
        else:
            if not source.is_file():
                raise BundleError(f"model {model['name']!r}: its TFLite export {source} is missing")
            destination.parent.mkdir(parents=True, exist_ok=True)
            actual = copy_and_hash(source, destination)
        if actual != entry.get("sha256"):
            raise BundleError(f"model {model['name']!r}: its {kind} export copied from {source} has digest {actual}, "
                              f"the export's is {entry.get('sha256')}")
        listed[kind] = {"path": relative, "sha256": actual}
    saved_model_size = sum(p.stat().st_size for p in (dataset / listed["saved_model"]["path"]).rglob("*") if p.is_file())
    LOG.info("exports of %s: %s/ (%s) and %s (%s)", model["name"], listed["saved_model"]["path"],
             human_size(saved_model_size), listed["tflite"]["path"],
             human_size((dataset / listed["tflite"]["path"]).stat().st_size))
    return listed


def copy_tree(source: Path, destination: Path) -> None:
    """Copy a folder's files (their bytes only: no timestamps or modes carried over)."""
    destination.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):
        target = destination / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_and_hash(path, target)


def copy_and_hash(source: Path, destination: Path) -> str:
    """Copy a file (mode 644) and return the sha256 of the bytes written."""
    digest = copy_with_sha256(source, destination)
    destination.chmod(0o644)
    return digest


def as_format_2(manifest: dict) -> dict:
    """A format-1 manifest (one top-level `preprocessing` for every model) as format 2 (each
    model's `input`, placed after its sha256); a format-2 one as it is. The kernel's loader
    reads both (hms_offline.models.manifest); the bundle ships format 2."""
    version = manifest.get("format_version")
    if version == MANIFEST_FORMAT:
        return manifest
    if version != 1:
        raise BundleError(f"weights manifest format_version {version!r}: this build reads 1 and {MANIFEST_FORMAT}")
    view = manifest.get("preprocessing")

    def with_input(model: dict) -> dict:
        items = [(key, value) for key, value in model.items() if key not in ("input", "exports")]
        at = next((i + 1 for i, (key, _) in enumerate(items) if key == "sha256"), len(items))
        return dict(items[:at] + [("input", json.loads(json.dumps(view)))] + items[at:])

    rest = {key: value for key, value in manifest.items() if key not in ("format_version", "preprocessing", "models")}
    return {"format_version": MANIFEST_FORMAT, **rest, "models": [with_input(model) for model in manifest["models"]]}


def _relative(path: str, manifest_dir: Path, base: Path) -> str:
    return Path(os.path.relpath(manifest_dir.resolve() / path, base.resolve())).as_posix()


def _rebased(model: dict, manifest_dir: Path, base: Path) -> dict:
    """The model with `file` and its exports' paths relative to `base` instead of `manifest_dir`."""
    rebased = {**model, "file": _relative(model["file"], manifest_dir, base)}
    if isinstance(model.get("exports"), dict):
        rebased["exports"] = {kind: {**entry, "path": _relative(entry["path"], manifest_dir, base)}
                              if isinstance(entry, dict) and isinstance(entry.get("path"), str) else entry
                              for kind, entry in model["exports"].items()}
    return rebased


def merged_manifest(paths: list[Path], base: Path) -> dict:
    """One manifest listing the models of several runs' manifests (or of one), each `file`
    made relative to the folder `base`. The runs must agree on the classes. Runs all in
    format 1 (one `preprocessing` for all their models) merge into format 1 and must agree on
    it; otherwise every run is brought to format 2, where each model carries its input view."""
    manifests = [read_weights_manifest(path) for path in paths]
    if len({manifest.get("format_version") for manifest in manifests}) > 1:
        manifests = [as_format_2(manifest) for manifest in manifests]
    keys = ("format_version", "classes") + (("preprocessing",) if manifests[0].get("format_version") == 1 else ())
    for path, manifest in zip(paths[1:], manifests[1:]):
        for key in keys:
            if manifest.get(key) != manifests[0].get(key):
                raise BundleError(f"{path}: {key} differs from {paths[0]}'s; one ensemble needs the same")
    models = [_rebased(model, path.parent, base) for path, manifest in zip(paths, manifests) for model in manifest["models"]]
    duplicates = duplicate_names(models)
    if duplicates:
        raise BundleError(f"the manifests {[str(p) for p in paths]} share model names {duplicates}")
    return {**manifests[0], "models": models}


def merge_manifests(paths: list[Path], out: Path) -> Path:
    """`merged_manifest`, written to `out`."""
    manifest = merged_manifest(paths, out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, manifest)
    return out
