"""The weights manifest: checked by the kernel's own loader, then read as plain JSON
(hms_offline.manifest imports numpy), merged, and its weight files copied, sha256-checked,
into the dataset."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from .common import LOG, BundleError, human_size, sha256_of, write_json


def check_with_kernel_loader(paths: list[Path], repo: Path) -> None:
    """Refuse, listing the problems, any manifest the kernel would refuse: `python -m hms_offline
    check-manifest` of the hms_offline being packed, run by this Python (the training venv's:
    that loader needs numpy, and this package only the standard library)."""
    command = [sys.executable, "-m", "hms_offline", "check-manifest", *map(str, paths)]
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


def merged_manifest(paths: list[Path], base: Path) -> dict:
    """One manifest listing the models of several runs' manifests (or of one), each `file`
    made relative to the folder `base`. The runs must agree on format, classes and preprocessing."""
    manifests = [read_weights_manifest(path) for path in paths]
    for path, manifest in zip(paths[1:], manifests[1:]):
        for key in ("format_version", "classes", "preprocessing"):
            if manifest.get(key) != manifests[0].get(key):
                raise BundleError(f"{path}: {key} differs from {paths[0]}'s; one ensemble needs the same")
    models = [
        {**model, "file": Path(os.path.relpath(path.parent.resolve() / model["file"], base.resolve())).as_posix()}
        for path, manifest in zip(paths, manifests) for model in manifest["models"]
    ]
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
