"""`python -m hms_offline train`: the fold models of one architecture, resumable.

The run reads train.csv, makes or reuses the folds, converts the spectrograms it needs,
trains each configured fold that is not finished (`fold.py`, on the hardware of
`strategy.py`, resuming from `checkpoint.py`'s state) and, after each fold, writes the run's
summary (`summary.py`) and weights manifest. The folder's layout: `run_folder.py`. A fold is
finished once its `summary.json` exists (written last) and is never trained again.
"""

import contextlib
import logging
from pathlib import Path

import pandas as pd

from hms_offline.atomic import write_text_atomically
from hms_offline.models.registry import IMAGENET_PRESETS
from hms_offline.models.manifest import MANIFEST_NAME, Manifest, make_entry, write_manifest
from hms_offline.training.config import TrainConfig
from hms_offline.training.recipes import STARTER
from hms_offline.features.views import get_view, view_record
from hms_offline.training.data import check_offsets, prepare_recordings
from hms_offline.training.fold import train_fold
from hms_offline.training.folds import fold_of_rows, make_folds, read_folds, write_folds
from hms_offline.training.labels import read_train_labels
from hms_offline.training.run_folder import (CONFIG_NAME, FOLD_SUMMARY_NAME, FOLDS_NAME, LOG_NAME, check_same_run,
                                             finished_folds, fold_dir)
from hms_offline.training.strategy import training_strategy
from hms_offline.training.summary import summarize_run

log = logging.getLogger(__name__)


def train(config: TrainConfig) -> dict:
    """Train the configured folds (finished ones are skipped, an interrupted one resumes);
    returns the run's cv.json data."""
    config = config.resolved()
    run_dir = config.out
    run_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(run_dir / LOG_NAME):
        log_recipe(config)
        check_same_run(config, run_dir)
        # Before anything else touches TensorFlow: --cpu-replicas splits the CPU before its runtime starts.
        with training_strategy(config.mixed_precision, config.cpu_replicas, config.batch_size) as strategy:
            labels = read_train_labels(config.data_dir / "train.csv")
            folds = load_or_make_folds(config, labels, run_dir)
            labels = labels.assign(fold=fold_of_rows(labels, folds, run_dir / FOLDS_NAME))
            labels = limit_rows(labels, config.max_samples, config.seed)
            sources = get_view(config.view).sources
            check_offsets(labels, sources, config.data_dir / "train.csv")
            folders = prepare_recordings(config.data_dir, labels, sources, config.work_dir, config.spectrogram_dir)
            # Written once the inputs are known to be good: they define the run folder.
            write_folds(folds, run_dir / FOLDS_NAME)
            write_text_atomically(run_dir / CONFIG_NAME, config.to_json())
            summary = None
            for fold in config.fold_list():
                if (fold_dir(run_dir, fold) / FOLD_SUMMARY_NAME).is_file():
                    log.info("fold %d is already finished in %s: skipped", fold, run_dir)
                    continue
                train_fold(config, labels, folders, fold, strategy)
                summary = finish_run(config, run_dir)
        return summary or finish_run(config, run_dir)


@contextlib.contextmanager
def log_to_file(path: Path):
    """Also write the package's log records to `path` (appended: a resumed run continues it)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("hms_offline")
    level = package.level
    package.setLevel(min(package.getEffectiveLevel(), logging.INFO))  # fold / epoch summaries
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
        handler.close()


def log_recipe(config: TrainConfig) -> None:
    """Which recipe the run follows, and for the starter's what it cannot reproduce here."""
    log.info("recipe %s: %s, schedule %s, folds over %s, sampling %s, validation %s (%s targets), labels %s, "
             "mixed precision %s", config.recipe, config.arch, config.schedule, config.fold_unit, config.sampling,
             config.validation_rows, config.validation_targets, config.labels, config.mixed_precision)
    if config.recipe == STARTER and config.pretrained is None:
        log.warning(
            "the starter began from ImageNet weights (keras-cv preset %s); without --pretrained (a local "
            "preset folder) this run starts from random weights, BatchNormalization momentum capped at %g",
            IMAGENET_PRESETS.get(config.arch, "?"), config.bn_momentum)


def load_or_make_folds(config: TrainConfig, labels: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """The run's folds: from --folds-file, from its own folds.csv of an earlier start, or made now."""
    own = run_dir / FOLDS_NAME
    if config.folds_file is not None:
        folds = read_folds(config.folds_file)
        if own.is_file() and not read_folds(own).equals(folds):
            raise ValueError(f"{own} differs from --folds-file {config.folds_file}; use another --out")
        log.info("folds from %s", config.folds_file)
    elif own.is_file():
        folds = read_folds(own)
    else:
        folds = make_folds(labels, config.n_splits, config.fold_seed, config.fold_unit)
        log.info("folds: StratifiedGroupKFold(n_splits=%d, shuffle=True, random_state=%d) by patient_id over %s",
                 config.n_splits, config.fold_seed,
                 "one row per eeg_id" if config.fold_unit == "eeg" else "all train.csv rows")
    n_splits = int(folds["fold"].max()) + 1
    if n_splits != config.n_splits:
        raise ValueError(f"the folds file has {n_splits} folds, but n_splits is {config.n_splits}")
    return folds


def limit_rows(labels: pd.DataFrame, max_samples: int | None, seed: int) -> pd.DataFrame:
    if max_samples is None or max_samples >= len(labels):
        return labels
    log.info("--max-samples: %d of %d train.csv rows", max_samples, len(labels))
    return labels.sample(n=max_samples, random_state=seed).sort_index().reset_index(drop=True)


def finish_run(config: TrainConfig, run_dir: Path) -> dict:
    """cv.json, oof.csv, loss_curves.png and weights_manifest.json from the finished folds."""
    summary = summarize_run(run_dir)
    kl_by_fold = {scores["fold"]: scores["kl"] for scores in summary["per_fold"]}
    entries = [
        make_entry(
            fold_dir(run_dir, fold["fold"]) / fold["weights"],
            run_dir,
            arch=config.arch,
            fold=fold["fold"],
            include_rescaling=config.include_rescaling,
            ensemble_weight=1.0,
            cv_kl=kl_by_fold[fold["fold"]],
            class_prior=fold["prior"],
            input_view=view_record(config.view),
        )
        for fold in finished_folds(run_dir)
    ]
    write_manifest(Manifest(models=entries), run_dir / MANIFEST_NAME)
    return summary
