"""Fold-ensemble inference: competition test files -> submission.csv.

Streams the unique test spectrograms in batches, preprocesses each once with THE
preprocessing function, runs every model of the weights manifest on the batch and
combines their probabilities by `ensemble_weight`. Logs the time of every stage and
every model.
"""

import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hms_offline.constants import CLASSES, ID_COLUMN
from hms_offline.manifest import Manifest, ManifestError, load_manifest, weights_path
from hms_offline.preprocess import model_input
from hms_offline.submission import (
    build_submission,
    read_sample_submission,
    read_test_rows,
    write_submission,
)

log = logging.getLogger(__name__)


@dataclass
class PredictionSummary:
    rows: int = 0
    spectrograms: int = 0
    models: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    model_seconds: dict[str, float] = field(default_factory=dict)
    fallbacks: list = field(default_factory=list)  # spectrogram ids predicted as uniform

    def lines(self) -> list[str]:
        out = [
            f"submission rows: {self.rows}",
            f"test spectrograms: {self.spectrograms}",
            f"models: {len(self.models)} ({', '.join(self.models)})",
            f"uniform fallbacks: {len(self.fallbacks)}" + (f" ({self.fallbacks[:10]})" if self.fallbacks else ""),
        ]
        out += [f"stage {name}: {seconds:.1f} s" for name, seconds in self.stage_seconds.items()]
        out += [f"model {name}: {seconds:.1f} s" for name, seconds in self.model_seconds.items()]
        return out


@contextlib.contextmanager
def timed(into: dict[str, float], name: str):
    """Add the wall time of the block to `into[name]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[name] = into.get(name, 0.0) + time.perf_counter() - start


def load_models(manifest: Manifest, root: Path) -> list:
    """Build each model of the manifest from its recorded arch and load its weights."""
    from hms_offline.model import build_model

    models = []
    for entry in manifest.models:
        model = build_model(
            entry.arch,
            num_classes=len(CLASSES),
            input_shape=tuple(entry.input_shape),
            include_rescaling=entry.include_rescaling,
        )
        model.load_weights(str(weights_path(entry, root)))
        log.info("loaded %s (%s, fold %s, weight %.3g)", entry.name, entry.arch, entry.fold, entry.ensemble_weight)
        models.append(model)
    return models


class Ensemble:
    """The manifest's models, combined by their ensemble weights."""

    def __init__(self, manifest: Manifest, models: list):
        if not manifest.models:
            raise ManifestError("the weights manifest lists no models: nothing to predict with")
        weights = np.array([entry.ensemble_weight for entry in manifest.models], dtype=np.float64)
        if weights.sum() <= 0:
            raise ManifestError("the ensemble weights of the manifest sum to 0")
        self.names = [entry.name for entry in manifest.models]
        self.weights = weights / weights.sum()
        self.models = models
        self.seconds: dict[str, float] = {}

    def predict(self, images: np.ndarray) -> np.ndarray:
        combined = np.zeros((len(images), len(CLASSES)), dtype=np.float64)
        for name, weight, model in zip(self.names, self.weights, self.models):
            with timed(self.seconds, name):
                combined += weight * np.asarray(model.predict_on_batch(images), dtype=np.float64)
        return combined


def spectrogram_file(folder: Path, spectrogram_id) -> Path:
    path = Path(folder) / f"{spectrogram_id}.npy"
    if not path.exists():
        raise FileNotFoundError(f"test spectrogram {spectrogram_id}: {path} not found (was its parquet converted?)")
    return path


def load_image(folder: Path, spectrogram_id) -> np.ndarray:
    return model_input(np.load(spectrogram_file(folder, spectrogram_id)))


def load_batch(folder: Path, spectrogram_ids) -> np.ndarray:
    return np.stack([load_image(folder, sid) for sid in spectrogram_ids])


def uniform_prediction() -> np.ndarray:
    return np.full(len(CLASSES), 1.0 / len(CLASSES))


def is_probability_row(row: np.ndarray) -> bool:
    return bool(np.isfinite(row).all() and (row >= 0).all() and row.sum() > 0)


def predict_spectrograms(
    ensemble: Ensemble, folder: Path, spectrogram_ids, batch_size: int
) -> tuple[np.ndarray, list]:
    """Probabilities for each spectrogram id, in the given order, one batch in memory at a time.

    On a hidden test set nobody can inspect, one unreadable file or one non-finite output
    must not cost the whole submission: such a spectrogram gets the uniform distribution,
    and its id is returned (second value) and logged as an error.
    """
    out = np.zeros((len(spectrogram_ids), len(CLASSES)), dtype=np.float64)
    fallbacks = []
    starts = range(0, len(spectrogram_ids), batch_size)
    for start in tqdm(starts, desc="predict", unit="batch", disable=None):
        images, positions = [], []
        for position, sid in enumerate(spectrogram_ids[start : start + batch_size], start):
            try:
                images.append(load_image(folder, sid))
                positions.append(position)
            except (OSError, ValueError) as error:
                log.error("test spectrogram %s unreadable (%s): predicting the uniform distribution", sid, error)
                fallbacks.append(sid)
                out[position] = uniform_prediction()
        if images:
            out[positions] = ensemble.predict(np.stack(images))
        for position in positions:
            if not is_probability_row(out[position]):
                log.error("test spectrogram %s: non-finite ensemble output, predicting the uniform distribution",
                          spectrogram_ids[position])
                fallbacks.append(spectrogram_ids[position])
                out[position] = uniform_prediction()
    if len(fallbacks) == len(spectrogram_ids):
        raise ValueError(f"no test spectrogram could be predicted ({len(fallbacks)} tried): see the errors above")
    return out, fallbacks


def predict_competition(
    data_dir: Path,
    bundle_dir: Path,
    output: Path,
    work_dir: Path | None = None,
    batch_size: int = 16,
    workers: int | None = None,
) -> PredictionSummary:
    """test.csv + test_spectrograms/ + sample_submission.csv -> `output` (submission.csv)."""
    from hms_offline.convert import convert_tree

    data_dir, bundle_dir = Path(data_dir), Path(bundle_dir)
    summary = PredictionSummary()
    stages = summary.stage_seconds
    with tempfile.TemporaryDirectory(prefix="hms_work_") as scratch:
        work_dir = Path(work_dir) if work_dir else Path(scratch)
        with timed(stages, "read csv"):
            test = read_test_rows(data_dir / "test.csv")
            sample = read_sample_submission(data_dir / "sample_submission.csv")
        unique_ids = test["spectrogram_id"].drop_duplicates().tolist()
        with timed(stages, "convert"):
            converted = work_dir / "test_spectrograms"
            try:
                convert_tree(data_dir / "test_spectrograms", converted, workers=workers,
                             only={str(sid) for sid in unique_ids})
            except ValueError as error:  # the files that did convert are still used
                log.error("%s", error)
        with timed(stages, "load models"):
            manifest, root = load_manifest(bundle_dir)
            ensemble = Ensemble(manifest, load_models(manifest, root))
        with timed(stages, "predict"):
            per_spectrogram, summary.fallbacks = predict_spectrograms(ensemble, converted, unique_ids, batch_size)
            row_index = test["spectrogram_id"].map({sid: i for i, sid in enumerate(unique_ids)})
            per_row = per_spectrogram[row_index.to_numpy()]
        with timed(stages, "write"):
            submission = build_submission(sample, test[ID_COLUMN].to_numpy(), per_row)
            write_submission(submission, output)
    summary.rows = len(submission)
    summary.spectrograms = len(unique_ids)
    summary.models = ensemble.names
    summary.model_seconds = dict(ensemble.seconds)
    for line in summary.lines():
        log.info(line)
    log.info("wrote %s", output)
    return summary
