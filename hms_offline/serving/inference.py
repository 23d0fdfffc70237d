"""Fold-ensemble inference: competition test files -> submission.csv + inference_report.json.

Streams the unique test spectrograms in batches, preprocesses each once with THE
preprocessing function, runs every model of the weights manifest on the batch and
combines their probabilities by `ensemble_weight`. Logs the time of every stage and
every model.

On a hidden test set nobody can inspect, one bad input or one bad model must not cost the
whole submission:
- a model that cannot be loaded, or that raises or gives non-probabilities on a batch
  (after one retry image by image), is dropped; the weights are renormalised over the rest;
- a row that cannot be predicted from its own data (its test.csv cells, its spectrogram
  file, a spectrogram with no usable signal) gets the fallback prediction: the ensemble's
  training class prior (uniform for manifests that do not record it).
The run fails only when no model can predict or test.csv holds no row; with `strict`, every
fallback, dropped model or set-aside row is an error (after the report is written).
"""

import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hms_offline.constants import CLASSES, ID_COLUMN
from hms_offline.features.spectrogram import model_input, signal_fraction
from hms_offline.models.engines import AUTO, EngineLoader, engine_order
from hms_offline.models.manifest import ManifestError, ModelEntry, load_manifest, weights_path
from hms_offline.serving.inference_report import (
    REPORT_NAME, DroppedModel, FallbackRow, InferenceReport, runtime_versions, tensorflow_warnings,
)
from hms_offline.serving.submission import (
    build_submission,
    read_sample_submission,
    read_test_rows,
    resolve_output,
    unpredicted_rows,
    write_submission,
)

log = logging.getLogger(__name__)

# A window with less than this share of cells holding power (finite, > 0) has no usable
# signal: its standardised image is (nearly) constant and a model's answer to it means
# nothing, so its row gets the fallback. Real test spectrograms hold power in ~100%.
MIN_SIGNAL_FRACTION = 0.1
# Images per model call: within 5 % of the best on CPU from 4 to 16 (README, benchmarks/).
DEFAULT_BATCH_SIZE = 16


class NoModelError(ManifestError):
    """No model of the ensemble can predict."""


class StrictModeError(ValueError):
    """A `strict` run that departed from a clean one."""


@contextlib.contextmanager
def timed(into: dict[str, float], name: str):
    """Add the wall time of the block to `into[name]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[name] = into.get(name, 0.0) + time.perf_counter() - start


@dataclass
class Member:
    """One model of the ensemble: its manifest entry, the engine running it, its file."""

    entry: ModelEntry
    model: object  # predict_on_batch(images) -> probabilities
    file: str

    @property
    def engine(self) -> str:
        return getattr(self.model, "name", type(self.model).__name__)


def load_members(entries: list[ModelEntry], root: Path, load) -> tuple[list[Member], list[DroppedModel]]:
    """Open every entry with `load(entry, root)`; one that fails is dropped with the reason."""
    members, dropped = [], []
    for entry in entries:
        file = str(weights_path(entry, root))
        try:
            members.append(Member(entry, load(entry, root), file))
        except Exception as error:  # any failure of one model's files costs only that model
            reason = f"cannot be loaded from {file}: {type(error).__name__}: {error}"
            log.error("MODEL DROPPED: %s %s", entry.name, reason)
            dropped.append(DroppedModel(entry.name, file, reason))
            continue
        log.info("loaded %s (%s, fold %s, weight %.3g) with engine %s", entry.name, entry.arch, entry.fold,
                 entry.ensemble_weight, members[-1].engine)
    return members, dropped


def probability_problem(output: np.ndarray, rows: int) -> str | None:
    """Why a model's batch output is not `rows` probability rows, or None."""
    if output.shape != (rows, len(CLASSES)):
        return f"output shape {output.shape}, expected {(rows, len(CLASSES))}"
    if not np.isfinite(output).all():
        return f"non-finite output on {int((~np.isfinite(output).all(axis=1)).sum())} of {rows} images"
    if (output < 0).any() or (output.sum(axis=1) <= 0).any():
        return "output rows that are not probabilities (negative, or summing to 0)"
    return None


class Ensemble:
    """The loaded models, combined by their ensemble weights renormalised over the models
    still in it; a model that fails on a batch leaves it, and the batch is predicted by the rest."""

    def __init__(self, members: list[Member], dropped: list[DroppedModel] | None = None):
        self.members = list(members)
        self.dropped = list(dropped or [])
        self.seconds: dict[str, float] = {}
        if not self.members:
            raise NoModelError("no model of the ensemble could be loaded" + self._dropped_listing())
        if sum(member.entry.ensemble_weight for member in self.members) <= 0:
            raise NoModelError("the ensemble weights of the loaded models sum to 0")

    @property
    def names(self) -> list[str]:
        return [member.entry.name for member in self.members]

    @property
    def weights(self) -> np.ndarray:
        raw = np.array([member.entry.ensemble_weight for member in self.members], dtype=np.float64)
        return raw / raw.sum()

    def _dropped_listing(self) -> str:
        return "".join(f"\n  {model.name}: {model.reason}" for model in self.dropped)

    def _run(self, member: Member, images: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        """The member's probabilities on the batch; on an error, one retry image by image."""
        try:
            output = np.asarray(member.model.predict_on_batch(images), dtype=np.float64)
        except Exception as error:  # retried below; a second failure drops the model
            log.error("model %s failed on a batch of %d (%s: %s): retrying image by image",
                      member.entry.name, len(images), type(error).__name__, error)
            try:
                output = np.concatenate([
                    np.asarray(member.model.predict_on_batch(images[i : i + 1]), dtype=np.float64)
                    for i in range(len(images))
                ])
            except Exception as retry_error:
                return None, f"raised on a batch, and again image by image: {type(retry_error).__name__}: {retry_error}"
        return output, probability_problem(output, len(images))

    def predict(self, images: np.ndarray) -> np.ndarray:
        outputs = {}
        for member in list(self.members):
            with timed(self.seconds, member.entry.name):
                output, problem = self._run(member, images)
            if problem:
                self._drop(member, problem)
            else:
                outputs[member.entry.name] = output
        if not self.members:
            raise NoModelError("every model of the ensemble failed" + self._dropped_listing())
        return sum(weight * outputs[name] for name, weight in zip(self.names, self.weights))

    def _drop(self, member: Member, reason: str) -> None:
        log.error("MODEL DROPPED: %s (%s): %s; the ensemble goes on without it", member.entry.name, member.file, reason)
        self.members.remove(member)
        self.dropped.append(DroppedModel(member.entry.name, member.file, reason))

    def class_prior(self) -> tuple[np.ndarray, str]:
        """The fallback prediction: the weighted mean of the models' training class priors,
        uniform when one of them does not record its prior (manifests older than it)."""
        priors = [member.entry.class_prior for member in self.members]
        if any(prior is None for prior in priors):
            return np.full(len(CLASSES), 1.0 / len(CLASSES)), "uniform (the manifest records no class prior)"
        prior = np.average(np.array(priors, dtype=np.float64), axis=0, weights=self.weights)
        return prior / prior.sum(), f"class prior of the training rows, weighted over {len(priors)} model(s)"


def read_window(folder: Path, spectrogram_id) -> tuple[np.ndarray | None, FallbackRow | None]:
    """The model input of one converted spectrogram, or why it cannot be predicted."""
    path = Path(folder) / f"{spectrogram_id}.npy"
    try:
        spectrogram = np.load(path)
        image = model_input(spectrogram)
    except (OSError, ValueError, EOFError) as error:
        return None, FallbackRow(None, spectrogram_id, "load", f"{path} unreadable: {error}")
    fraction = signal_fraction(spectrogram)
    if fraction < MIN_SIGNAL_FRACTION:
        return None, FallbackRow(
            None, spectrogram_id, "signal",
            f"no usable signal: {fraction:.1%} of its 400x300 window finite and > 0, "
            f"fewer than {MIN_SIGNAL_FRACTION:.0%} ({spectrogram.shape[1]} time steps)",
        )
    return image, None


def predict_spectrograms(
    ensemble: Ensemble, folder: Path, spectrogram_ids, batch_size: int
) -> tuple[np.ndarray, dict]:
    """Probabilities for each spectrogram id, in the given order, one batch in memory at a
    time; rows that cannot be predicted are NaN, their reason (a FallbackRow) in the dict."""
    out = np.full((len(spectrogram_ids), len(CLASSES)), np.nan)
    failed = {}
    for start in tqdm(range(0, len(spectrogram_ids), batch_size), desc="predict", unit="batch", disable=None):
        images, positions = [], []
        for position, sid in enumerate(spectrogram_ids[start : start + batch_size], start):
            image, problem = read_window(folder, sid)
            if problem:
                log.error("test spectrogram %s: %s: predicting the fallback", sid, problem.reason)
                failed[sid] = problem
            else:
                images.append(image)
                positions.append(position)
        if images:
            out[positions] = ensemble.predict(np.stack(images))
    return out, failed


def convert_test_spectrograms(source: Path, converted: Path, ids, workers: int | None) -> dict:
    """Convert the parquet files of `ids`; {id: FallbackRow} for each one with no .npy."""
    from hms_offline.convert import ConversionError, convert_tree

    reasons = {}
    try:
        convert_tree(source, converted, workers=workers, only={str(sid) for sid in ids}, isolate=True)
    except ConversionError as error:  # the files that did convert are still used
        log.error("%s", error)
        reasons = error.failures
    except (ValueError, FileNotFoundError) as error:  # nothing to convert at all
        log.error("%s", error)
        reasons = {str(sid): str(error) for sid in ids}
    return {
        sid: FallbackRow(None, sid, "convert", reasons.get(
            str(sid), f"no parquet file for it in {source} (looked for {sid}.parquet or {sid}.pq, any case)"))
        for sid in ids
        if not (converted / f"{sid}.npy").is_file()
    }


def fallback_rows_of_submission(sample, test_rows, per_row, failed, set_aside) -> list[FallbackRow]:
    """Each sample row predicted by the fallback, with the reason of its first test row."""
    first_problem = {}
    for row in set_aside:
        first_problem.setdefault(row.eeg_id, row)
    for spectrogram_id, eeg_id in zip(test_rows["spectrogram_id"], test_rows[ID_COLUMN]):
        if spectrogram_id in failed:
            first_problem.setdefault(eeg_id, failed[spectrogram_id])
    rows = []
    for position in unpredicted_rows(sample, test_rows[ID_COLUMN].to_numpy(), per_row):
        eeg_id = sample[ID_COLUMN].iloc[position]
        problem = first_problem.get(eeg_id)
        if problem is not None:
            rows.append(FallbackRow(eeg_id, problem.spectrogram_id, problem.stage, problem.reason))
        elif isinstance(eeg_id, str):
            rows.append(FallbackRow(eeg_id, None, "sample_submission.csv",
                                    f"eeg_id cell {eeg_id!r} is not an integer id (line {position + 2})"))
        else:
            rows.append(FallbackRow(eeg_id, None, "test.csv", "no row of test.csv carries this eeg_id"))
    return rows


def predict_competition(
    data_dir: Path,
    bundle_dir: Path,
    output: Path,
    work_dir: Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    strict: bool = False,
    engine: str = AUTO,
    prepare_keras=None,
    load=None,
) -> InferenceReport:
    """test.csv + test_spectrograms/ + sample_submission.csv -> `output` (submission.csv)
    and inference_report.json beside it.

    `engine` runs every model (`auto`: the fastest that opens each; see hms_offline.models.engines);
    `prepare_keras` is called once before the first keras engine (the kernel installs
    keras-cv there); `load(entry, root)`, when given, opens a model instead (tests)."""
    engine_order(engine, gpu=False)  # an unknown engine name fails now, not after the work
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    data_dir, bundle_dir = Path(data_dir), Path(bundle_dir)
    output = resolve_output(output)
    report = InferenceReport(submission=str(output), engine=engine, versions=runtime_versions())
    stages = report.stage_seconds
    with tempfile.TemporaryDirectory(prefix="hms_work_") as scratch:
        work_dir = Path(work_dir) if work_dir else Path(scratch)
        with timed(stages, "read csv"):
            test = read_test_rows(data_dir / "test.csv")
            sample = read_sample_submission(data_dir / "sample_submission.csv")
        for row in test.set_aside:
            log.error("test.csv line %d set aside: %s", row.line, row.reason)
        report.set_aside_test_rows = [FallbackRow(r.eeg_id, r.spectrogram_id, "test.csv", r.reason) for r in test.set_aside]
        unique_ids = test.rows["spectrogram_id"].drop_duplicates().tolist()
        with timed(stages, "load models"):
            manifest, root = load_manifest(bundle_dir)
            rejected = [DroppedModel(name, str(root), reason) for name, reason in manifest.rejected]
            for model in rejected:
                log.error("MODEL DROPPED: %s: %s", model.name, model.reason)
            members, dropped = load_members(manifest.models, root, load or EngineLoader(engine, prepare_keras))
            ensemble = Ensemble(members, rejected + dropped)
        report.version_warnings = tensorflow_warnings([member.entry for member in members],
                                                      report.versions.get("tensorflow"))
        for warning in report.version_warnings:
            log.warning("%s", warning)
        with timed(stages, "convert"):
            converted = work_dir / "test_spectrograms"
            failed = convert_test_spectrograms(data_dir / "test_spectrograms", converted, unique_ids, workers)
        with timed(stages, "predict"):
            readable = [sid for sid in unique_ids if sid not in failed]
            per_spectrogram, unreadable = predict_spectrograms(ensemble, converted, readable, batch_size)
            failed.update(unreadable)
            index = {sid: i for i, sid in enumerate(readable)}
            per_row = np.full((len(test.rows), len(CLASSES)), np.nan)
            known = test.rows["spectrogram_id"].map(index)
            per_row[known.notna().to_numpy()] = per_spectrogram[known.dropna().astype(int).to_numpy()]
        fallback, report.fallback_source = ensemble.class_prior()
        report.fallback = fallback.tolist()
        with timed(stages, "write"):
            submission = build_submission(sample, test.rows[ID_COLUMN].to_numpy(), per_row, fallback)
            report.fallback_rows = fallback_rows_of_submission(sample, test.rows, per_row, failed,
                                                             report.set_aside_test_rows)
            report.rows, report.spectrograms = len(submission), len(unique_ids)
            report.models = [{"name": name, "engine": member.engine, "file": member.file, "weight": float(weight)}
                             for name, weight, member in zip(ensemble.names, ensemble.weights, ensemble.members)]
            report.models_dropped = ensemble.dropped
            report.model_seconds = dict(ensemble.seconds)
            _finish(report, submission, output, strict)
    return report


def _finish(report: InferenceReport, submission, output: Path, strict: bool) -> None:
    """Log and write the report; then the submission, unless `strict` and the run was not clean."""
    if report.fallback_rows and len(report.fallback_rows) == report.rows:
        report.warnings.append(
            f"EVERY ONE of the {report.rows} submission rows is the fallback prediction: the submission "
            "scores like the class prior; see the reasons above")
    for line in report.lines():
        log.info(line)
    report_path = report.write(output.parent / REPORT_NAME)
    problems = report.problems()
    if strict and problems:
        listing = "".join(f"\n  {problem}" for problem in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise StrictModeError(
            f"--strict: {len(problems)} problem(s), no submission written (see {report_path}):{listing}{more}")
    for warning in report.warnings:
        log.warning("!" * 20 + " %s", warning)
    write_submission(submission, output)
    log.info("wrote %s and %s", output, report_path)
