"""Fold-ensemble inference: competition test files -> submission.csv + inference_report.json.

Streams the distinct test samples in batches: worker processes read the parquet files the
ensemble's input views need straight into memory and show each sample in every view once
(serving/samples.py), a few batches ahead of the models (serving/stream.py); in this process
every model runs on its view's images of the batch, and their probabilities are combined by
`ensemble_weight` (serving/ensemble.py). Logs the time of every stage and every model.

On a hidden test set nobody can inspect, one bad input or one bad model must not cost the
whole submission:
- a model that cannot be loaded, or that raises or gives non-probabilities on a batch
  (after one retry image by image), is dropped; the weights are renormalised over the rest;
- a recording that cannot be read (or kills the worker reading it), or holds no usable signal, takes away the
  views that need it for that sample: the models of the other views predict it (a partial
  row, reported), and only a sample with no view left gets the fallback prediction: the
  ensemble's training class prior (uniform for manifests that do not record it);
- a test.csv row whose cells cannot be read is set aside.
The run fails only when no model can predict or test.csv holds no row; with `strict`, every
fallback, partial row, dropped model or set-aside row is an error (after the report is written).
"""

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from hms_offline.constants import CLASSES, ID_COLUMN
from hms_offline.models.engines import AUTO, EngineLoader, engine_order
from hms_offline.models.manifest import load_manifest
from hms_offline.serving.ensemble import Ensemble, NoModelError, load_members
from hms_offline.serving.inference_report import (
    REPORT_NAME, DroppedModel, FallbackRow, InferenceReport, runtime_versions, tensorflow_warnings, timed,
)
from hms_offline.serving.samples import batches, distinct_samples, find_test_files, sources_of
from hms_offline.serving.stream import StreamStats, read_ahead
from hms_offline.serving.submission import (
    build_submission,
    read_sample_submission,
    read_test_rows,
    resolve_output,
    unpredicted_rows,
    write_submission,
)

log = logging.getLogger(__name__)

# Images per model call: within 5 % of the best on CPU from 4 to 16 (README, "Engines: what runs the models").
DEFAULT_BATCH_SIZE = 16

__all__ = ["DEFAULT_BATCH_SIZE", "NoModelError", "StrictModeError", "default_workers", "predict_competition",
           "predict_sample", "predict_samples"]


def default_workers() -> int:
    """Reading worker processes by default: one per core (the engine's threads share them)."""
    return os.cpu_count() or 1


class StrictModeError(ValueError):
    """A `strict` run that departed from a clean one."""


def predict_samples(ensemble: Ensemble, prepared_batches, samples: pd.DataFrame, n_batches: int | None = None):
    """Probabilities for each sample (row of `samples`) from its batches as the workers
    prepared them (serving/stream.py), one batch predicted at a time.

    Returns the `[n, 6]` probabilities (NaN for a sample no model could be shown), {position:
    FallbackRow} for those, and a FallbackRow per sample predicted without some view, both
    in sample order."""
    out = np.full((len(samples), len(CLASSES)), np.nan)
    failed, partial = {}, {}
    several_views = len(ensemble.views) > 1
    with contextlib.closing(iter(prepared_batches)) as stream:
        for prepared in tqdm(stream, total=n_batches, desc="predict", unit="batch", disable=None):
            for (source, recording_id), problem in prepared.problems.items():
                log.error("test %s %s: %s: %s", source, recording_id, problem.stage, problem.reason)
            positions = np.array(prepared.positions)
            predicted = ensemble.predict(prepared.images, len(positions))
            out[positions] = predicted
            for index, missing in sorted(prepared.missing.items()):
                view, problem = next(iter(missing.items()))
                position = prepared.positions[index]
                sample = samples.iloc[position]
                row = FallbackRow(sample[ID_COLUMN], sample["spectrogram_id"], problem.stage,
                                  f"input view {view}: {problem.reason}" if several_views else problem.reason)
                if np.isnan(predicted[index]).any():
                    log.error("test sample eeg_id %s, spectrogram %s: %s: predicting the fallback",
                              row.eeg_id, row.spectrogram_id, row.reason)
                    failed[position] = row
                else:
                    log.error("test sample eeg_id %s, spectrogram %s: %s: predicted without it by the other views",
                              row.eeg_id, row.spectrogram_id, row.reason)
                    partial[position] = row
    return out, dict(sorted(failed.items())), [row for _, row in sorted(partial.items())]


def fallback_rows_of_submission(sample, test_rows, per_row, failed: list[FallbackRow], set_aside) -> list[FallbackRow]:
    """Each sample row predicted by the fallback, with the reason of its first test row."""
    first_problem = {}
    for row in [*set_aside, *failed]:
        first_problem.setdefault(row.eeg_id, row)
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
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    strict: bool = False,
    engine: str = AUTO,
    prepare_keras=None,
    load=None,
) -> InferenceReport:
    """test.csv + the test recordings + sample_submission.csv -> `output` (submission.csv)
    and inference_report.json beside it.

    `workers` processes read and preprocess the test files ahead of the models (default:
    `default_workers()`); `engine` runs every model (`auto`: the fastest that opens each; see
    hms_offline.models.engines); `prepare_keras` is called once before the first keras engine
    (the kernel installs keras-cv there); `load(entry, root)`, when given, opens a model
    instead (tests). The test files are read into memory: nothing is written but the
    submission and its report."""
    engine_order(engine, gpu=False)  # an unknown engine name fails now, not after the work
    for name, value in (("batch_size", batch_size), ("workers", workers)):
        if not (value is None and name == "workers") and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    workers = workers or default_workers()
    data_dir, bundle_dir = Path(data_dir), Path(bundle_dir)
    output = resolve_output(output)
    report = InferenceReport(submission=str(output), engine=engine, versions=runtime_versions())
    stages = report.stage_seconds
    with timed(stages, "read csv"):
        test = read_test_rows(data_dir / "test.csv")
        sample = read_sample_submission(data_dir / "sample_submission.csv")
    for row in test.set_aside:
        log.error("test.csv line %d set aside: %s", row.line, row.reason)
    report.set_aside_test_rows = [FallbackRow(r.eeg_id, r.spectrogram_id, "test.csv", r.reason) for r in test.set_aside]
    samples = distinct_samples(test.rows)
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
    report.views = ensemble.views
    with timed(stages, "find files"):
        sources = sources_of(ensemble.views)
        log.info("input views %s read %s", ", ".join(ensemble.views), " and ".join(sources))
        files, known = find_test_files(data_dir, samples, sources)
        for (source, recording_id), problem in known.items():
            log.error("test %s %s: %s: %s", source, recording_id, problem.stage, problem.reason)
        work = batches(samples, ensemble.views, files, known, batch_size)
    stream = StreamStats(workers)
    log.info("%d test samples in %d batches, read and preprocessed ahead of the models by %d worker process(es)",
             len(samples), len(work), workers)
    with timed(stages, "stream and predict"):
        per_sample, failed, report.partial_rows = predict_samples(ensemble, read_ahead(work, workers, stream),
                                                                  samples, len(work))
        per_row = per_sample[row_positions(test.rows, samples)]
    report.stream_seconds = stream.as_dict()
    fallback, report.fallback_source = ensemble.class_prior()
    report.fallback = fallback.tolist()
    with timed(stages, "write"):
        submission = build_submission(sample, test.rows[ID_COLUMN].to_numpy(), per_row, fallback)
        report.fallback_rows = fallback_rows_of_submission(sample, test.rows, per_row, list(failed.values()),
                                                         report.set_aside_test_rows)
        report.rows, report.spectrograms = len(submission), int(samples["spectrogram_id"].nunique())
        report.eegs = int(samples[ID_COLUMN].nunique()) if "eeg" in sources else 0
        report.models = [{"name": name, "engine": member.engine, "view": member.view, "file": member.file,
                          "weight": float(weight)}
                         for name, weight, member in zip(ensemble.names, ensemble.weights, ensemble.members)]
        report.models_dropped = ensemble.dropped
        report.model_seconds = dict(ensemble.seconds)
        _finish(report, submission, output, strict)
    return report


def predict_sample(bundle_dir: Path, images_of, engine: str = AUTO) -> tuple[np.ndarray, list[str]]:
    """One sample's probabilities from the bundle's ensemble, and the names of the models that
    predicted it; `images_of(views) -> {view: image}` shows the sample in the ensemble's views."""
    manifest, root = load_manifest(bundle_dir)
    members, dropped = load_members(manifest.models, root, EngineLoader(engine))
    ensemble = Ensemble(members, dropped)
    images = images_of(ensemble.views)
    probabilities = ensemble.predict({view: (np.array([0]), image[None]) for view, image in images.items()}, 1)[0]
    return probabilities, ensemble.names


def row_positions(test_rows, samples) -> np.ndarray:
    """For each usable test.csv row, the position of its sample."""
    index = {pair: i for i, pair in enumerate(zip(samples["spectrogram_id"], samples[ID_COLUMN]))}
    return np.array([index[pair] for pair in zip(test_rows["spectrogram_id"], test_rows[ID_COLUMN])], dtype=np.int64)


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
