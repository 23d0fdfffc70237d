"""`python -m hms_offline export`: each model of a weights manifest as a TF SavedModel and a
TFLite file, each proven equal to the Keras model on a probe batch, cached by the weights.

For every entry: the Keras model is rebuilt (`hms_offline.models.registry.build_model` +
`load_weights`), exported with `model.export(dir, format="tf_saved_model")`, and that
SavedModel converted with `tf.lite.TFLiteConverter.from_saved_model`. The proof: on
PROBE_IMAGES model inputs made by THE preprocessing from seeded random spectrograms shaped
like real ones (positive, log-normal power falling with frequency), the SavedModel's
probabilities (`tf.saved_model.load(dir).serve`) must equal Keras `predict_on_batch`'s within
TOLERANCES["saved_model"] and the TFLite interpreter's (2 threads) within TOLERANCES["tflite"];
else the export fails naming the model and the largest difference, and nothing is cached.

Cache: `<cache>/<weights sha256>/<variant>/` holding `saved_model/`, `model.tflite` and
`export.json` (what was exported, how, the digests, the measured differences, the seconds);
`<variant>` is a digest of what else decides the graph (arch, include_rescaling, input shape,
the TensorFlow / Keras / keras-cv versions, the probe, EXPORT_FORMAT). An export is built in
a temporary folder beside it and renamed into place once proven, so the cache never holds a
half-written or unproven export; a hit (its files matching the digests of its export.json,
its measured differences within today's tolerances) costs a hash of the files, no TensorFlow.

The command writes a JSON report (`--out`) naming, per model, the cached files, their digests,
the differences and the seconds (`models`), and every model that failed with the reason
(`failed`); it exits 1 when any failed. TensorFlow is imported only when a model is exported.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from hms_offline.atomic import write_text_atomically
from hms_offline.digests import sha256_file, sha256_tree

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # of a cache folder's export.json and of the report
TOLERANCES = {"saved_model": 1e-5, "tflite": 1e-4}  # max |probability difference| to Keras
PROBE_IMAGES = 4
PROBE_SEED = 0
TFLITE_THREADS = 2
SAVED_MODEL_NAME = "saved_model"
TFLITE_NAME = "model.tflite"
RECORD_NAME = "export.json"
CACHE_ENV = "HMS_EXPORT_CACHE"  # overrides the default cache folder


class ExportError(ValueError):
    """A model could not be exported, or an export failed its proof."""


def default_cache() -> Path:
    """$HMS_EXPORT_CACHE, else `.cache/exports/` of the checkout holding this package."""
    return Path(os.environ.get(CACHE_ENV) or Path(__file__).resolve().parents[2] / ".cache" / "exports")


# ----------------------------------------------------------------------------- the probe

def probe_spectrograms(images: int = PROBE_IMAGES, seed: int = PROBE_SEED) -> list:
    """`images` random `[400, 300]` power spectrograms: per chain, log-normal power whose
    median falls with frequency (about e^3 at the lowest bin to e^-4 at the highest, like
    the real ones' 0.01 .. ~4000), each image with its own gain and slow drift in time."""
    import numpy as np

    from hms_offline.constants import IMAGE_HEIGHT, N_FREQUENCIES, WINDOW_COLUMNS

    rng = np.random.default_rng(seed)
    frequency = np.tile(np.arange(1, N_FREQUENCIES + 1), IMAGE_HEIGHT // N_FREQUENCIES)[:, None]
    time_axis = np.linspace(0.0, 1.0, WINDOW_COLUMNS)[None, :]
    spectrograms = []
    for _ in range(images):
        gain = rng.normal(0.0, 0.7)
        drift = rng.normal(0.0, 0.8) * np.sin(2 * np.pi * (time_axis * rng.uniform(0.5, 3) + rng.uniform()))
        log_median = 3.0 - 1.5 * np.log(frequency) + gain + drift
        spectrograms.append(np.exp(rng.normal(log_median, 1.2)).astype(np.float32))
    return spectrograms


def probe_batch(images: int = PROBE_IMAGES, seed: int = PROBE_SEED):
    """The proof's model inputs: `probe_spectrograms` through THE preprocessing, `[n, 400, 300, 3]`."""
    import numpy as np

    from hms_offline.features.spectrogram import model_input

    return np.stack([model_input(spectrogram) for spectrogram in probe_spectrograms(images, seed)])


# ----------------------------------------------------------------------------- the cache

def variant(entry) -> dict:
    """Besides the weights, what decides an entry's exported graph (and its proof)."""
    from hms_offline.models.manifest import installed_versions

    return {"export_format": EXPORT_FORMAT, "arch": entry.arch, "include_rescaling": entry.include_rescaling,
            "input_shape": list(entry.input_shape), **installed_versions(),
            "probe": {"images": PROBE_IMAGES, "seed": PROBE_SEED}}


def cache_folder(cache: Path, entry) -> Path:
    key = hashlib.sha256(json.dumps(variant(entry), sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache) / entry.sha256 / key


def cached_record(folder: Path, expected_variant: dict) -> dict | None:
    """The export.json of a usable cached export in `folder`, else None (and why, logged)."""
    record_path = folder / RECORD_NAME
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("variant") != expected_variant:
            log.info("cached export %s was made for %s: exporting again", folder, record.get("variant"))
            return None
        for kind, digest in ((k, sha256_tree if k == "saved_model" else sha256_file) for k in TOLERANCES):
            path = folder / record[kind]["path"]
            if not path.exists() or digest(path) != record[kind]["sha256"]:
                log.warning("cached export %s: its %s %s differs from export.json: exporting again", folder, kind, path)
                return None
            if not record[kind]["max_difference"] <= TOLERANCES[kind]:
                log.info("cached export %s: %s differs from Keras by %.3g, past today's tolerance %g: "
                         "exporting again", folder, kind, record[kind]["max_difference"], TOLERANCES[kind])
                return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("cached export %s is unreadable (%s): exporting again", folder, error)
        return None
    return record


def _install(work: Path, folder: Path, expected_variant: dict) -> None:
    """Rename the proven export `work` to `folder`, replacing an unusable one there. When
    another process installed a usable one first, keep theirs."""
    if folder.exists():
        stale = folder.with_name(f".{folder.name}.stale-{os.getpid()}")
        os.replace(folder, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(work, folder)
    except OSError:
        if cached_record(folder, expected_variant) is None:
            raise


# ----------------------------------------------------------------------------- exporting

def max_difference(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def run_tflite(path: Path, images, threads: int = TFLITE_THREADS):
    """The TFLite file's outputs on `images`, run as the kernel's tflite engine runs it."""
    from hms_offline.models.engines import TFLiteEngine

    return TFLiteEngine.from_path(path, threads).predict_on_batch(images)


def run_saved_model(folder: Path, images):
    """The SavedModel's outputs on `images`, run as the kernel's saved_model engine runs it."""
    from hms_offline.models.engines import SavedModelEngine

    return SavedModelEngine.from_path(folder).predict_on_batch(images)


def check_proof(name: str, differences: dict[str, float]) -> None:
    """Raise naming the model when an export's difference to Keras passes its tolerance."""
    failed = [f"its {kind} export differs from the Keras model by {differences[kind]:.3g} on the probe batch "
              f"(tolerance {TOLERANCES[kind]:g})" for kind in TOLERANCES if not differences[kind] <= TOLERANCES[kind]]
    if failed:
        raise ExportError(f"model {name!r}: " + "; ".join(failed))


def write_exports(model, folder: Path, seconds: dict | None = None) -> tuple[Path, Path]:
    """A Keras model -> `folder`/saved_model/ and `folder`/model.tflite (converted from the
    SavedModel); the seconds of each step into `seconds`."""
    import tensorflow as tf

    seconds = {} if seconds is None else seconds
    started = time.perf_counter()
    saved_model = folder / SAVED_MODEL_NAME
    model.export(str(saved_model), format="tf_saved_model", verbose=False)
    seconds["saved_model"] = time.perf_counter() - started
    tflite = folder / TFLITE_NAME
    tflite.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert())
    seconds["tflite"] = time.perf_counter() - started - seconds["saved_model"]
    return saved_model, tflite


def _export_fresh(entry, root: Path, folder: Path, expected_variant: dict) -> dict:
    import keras
    import numpy as np

    from hms_offline.models.manifest import weights_path
    from hms_offline.models.registry import build_model

    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".exporting", dir=folder.parent))
    seconds = {}
    started = time.perf_counter()
    model = None
    try:
        weights = weights_path(entry, root)
        try:
            model = build_model(entry.arch, input_shape=tuple(entry.input_shape),
                                include_rescaling=entry.include_rescaling)
            model.load_weights(str(weights))
        except Exception as error:
            raise ExportError(f"model {entry.name!r}: cannot load {weights} as {entry.arch}: "
                              f"{type(error).__name__}: {error}") from error
        seconds["build"] = time.perf_counter() - started
        saved_model, tflite = write_exports(model, work, seconds)

        images = probe_batch()
        expected = np.asarray(model.predict_on_batch(images))
        differences = {"saved_model": max_difference(run_saved_model(saved_model, images), expected),
                       "tflite": max_difference(run_tflite(tflite, images), expected)}
        seconds["proof"] = time.perf_counter() - started - sum(seconds.values())
        spread = float(np.max(np.ptp(expected, axis=0)))
        if spread < 1e-6:
            log.warning("model %s gives the same probabilities for every probe image: its proof cannot tell "
                        "an export from another (a model that was never trained?)", entry.name)
        check_proof(entry.name, differences)
        seconds["total"] = time.perf_counter() - started
        record = {
            "export_format": EXPORT_FORMAT,
            "variant": expected_variant,
            "name": entry.name,
            "weights_sha256": entry.sha256,
            "saved_model": {"path": SAVED_MODEL_NAME, "sha256": sha256_tree(saved_model),
                            "max_difference": differences["saved_model"]},
            "tflite": {"path": TFLITE_NAME, "sha256": sha256_file(tflite), "size": tflite.stat().st_size,
                       "max_difference": differences["tflite"]},
            "probe_output_spread": spread,
            "seconds": {key: round(value, 3) for key, value in seconds.items()},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        write_text_atomically(work / RECORD_NAME, json.dumps(record, indent=2) + "\n")
        _install(work, folder, expected_variant)
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)
        del model
        keras.backend.clear_session()
        gc.collect()


def export_entry(entry, root: Path, cache: Path) -> dict:
    """The entry's proven exports, from the cache or made now: what the report lists for it."""
    started = time.perf_counter()
    folder = cache_folder(cache, entry)
    expected_variant = variant(entry)
    record = cached_record(folder, expected_variant)
    cached = record is not None
    if not cached:
        log.info("exporting %s (%s) into %s", entry.name, entry.arch, folder)
        record = _export_fresh(entry, root, folder, expected_variant)
    result = {
        "arch": entry.arch,
        "weights_sha256": entry.sha256,
        "cached": cached,
        "seconds": round(time.perf_counter() - started, 3),
        "export_seconds": record["seconds"],
        "folder": str(folder),
        **{kind: {"path": str(folder / record[kind]["path"]), "sha256": record[kind]["sha256"],
                  "max_difference": record[kind]["max_difference"]} for kind in TOLERANCES},
    }
    log.info("%s: %s; max |difference| to Keras: SavedModel %.3g, TFLite %.3g", entry.name,
             "cached" if cached else f"exported and proven in {record['seconds']['total']:.1f} s",
             result["saved_model"]["max_difference"], result["tflite"]["max_difference"])
    return result


def export_manifests(paths: list[Path], cache: Path | None = None) -> dict:
    """Export every model of the manifests; the report (see the module's docstring)."""
    from hms_offline.models.manifest import ManifestError, installed_versions, load_manifest

    cache = Path(cache) if cache is not None else default_cache()
    report = {"format_version": EXPORT_FORMAT, **installed_versions(), "cache": str(cache.resolve()),
              "tolerances": dict(TOLERANCES), "probe": {"images": PROBE_IMAGES, "seed": PROBE_SEED},
              "models": {}, "failed": {}}
    entries = []
    for path in map(Path, paths):
        try:
            manifest, root = load_manifest(path)
        except ManifestError as error:
            raise ExportError(str(error)) from error
        for name, reason in manifest.rejected:
            report["failed"][name] = f"{path}: {reason}"
        entries += [(entry, root) for entry in manifest.models]
    names = [entry.name for entry, _ in entries]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ExportError(f"the manifests {[str(p) for p in paths]} share model names {repeated}")
    for entry, root in entries:
        try:
            report["models"][entry.name] = export_entry(entry, root, cache)
        except ExportError as error:
            log.error("%s", error)
            report["failed"][entry.name] = str(error)
    return report


def write_report(report: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomically(path, json.dumps(report, indent=2) + "\n")
