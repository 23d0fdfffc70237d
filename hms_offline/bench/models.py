"""The bench's models: each architecture built once with random weights (the cost of a model
does not depend on its weights), saved, exported as the bundle ships it (SavedModel + TFLite,
proven against Keras by hms_offline.models.export, cached), and registered under several
names in one weights manifest: an ensemble of K entries as the kernel reads it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

CACHE_ENV = "HMS_BENCH_CACHE"
EXPORTED_ENGINES = ("tflite", "saved_model")


def default_cache() -> Path:
    """$HMS_BENCH_CACHE, else ~/.cache/hms_offline/bench (never inside the checkout)."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hms_offline" / "bench"
    return Path(os.environ.get(CACHE_ENV) or root)


def cached_weights(arch: str, cache: Path) -> Path:
    """Random weights of `arch`, made once per installed model stack and kept in `cache`,
    so their exports are cache hits on the next run."""
    from hms_offline.models.manifest import installed_versions

    key = hashlib.sha256(json.dumps([arch, installed_versions()], sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache) / "weights" / f"{arch}-{key}.weights.h5"
    if not path.is_file():
        import keras

        from hms_offline.models.registry import build_model

        keras.utils.set_random_seed(0)
        model = build_model(arch)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{os.getpid()}.{path.name}")  # Keras wants the .weights.h5 ending
        model.save_weights(str(temporary))
        os.replace(temporary, path)
        del model
        keras.backend.clear_session()
    return path


def write_bench_bundle(folder: Path, plan: dict[str, int], engines: tuple[str, ...], cache: Path) -> Path:
    """A bundle folder: weights_manifest.json listing `plan[arch]` entries (folds) of each arch,
    all of one arch sharing its weights and, when an exported engine is asked for, its exports."""
    from hms_offline.digests import sha256_file, sha256_tree
    from hms_offline.models.export import export_entry
    from hms_offline.models.manifest import Manifest, make_entry, write_manifest

    folder = Path(folder)
    entries = []
    for arch, folds in plan.items():
        weights = folder / "weights" / f"{arch}.weights.h5"
        weights.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached_weights(arch, cache), weights)
        exports = {}
        if set(engines) & set(EXPORTED_ENGINES):
            record = export_entry(make_entry(weights, folder, arch=arch, fold=0), folder, Path(cache) / "exports")
            target = folder / "exports" / arch
            target.mkdir(parents=True, exist_ok=True)
            shutil.copytree(record["saved_model"]["path"], target / "saved_model")
            shutil.copyfile(record["tflite"]["path"], target / "model.tflite")
            exports = {"saved_model": {"path": f"exports/{arch}/saved_model", "sha256": sha256_tree(target / "saved_model")},
                       "tflite": {"path": f"exports/{arch}/model.tflite", "sha256": sha256_file(target / "model.tflite")}}
        for fold in range(folds):
            entry = make_entry(weights, folder, arch=arch, fold=fold)
            entry.exports = exports
            entries.append(entry)
    write_manifest(Manifest(models=entries), folder / "weights_manifest.json")
    return folder
