"""A run's summary, read back from its folder: its out-of-fold rows in one `oof.csv`, its CV KL
(Kaggle's metric on all out-of-fold rows and per fold) beside the class-prior baseline in
`cv.json` (for a two-stage run, each stage's CV on the same rows under `stages`), and
`loss_curves.png`. Written after every finished fold."""

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.metric import kl_divergence
from hms_offline.training.config import read_config
from hms_offline.figures import integer_ticks, pyplot, save_figure
from hms_offline.training.run_folder import (CONFIG_NAME, CV_NAME, FOLD_SUMMARY_NAME, HISTORY_NAME, LOSS_PLOT_NAME,
                                             OOF_NAME, PREDICTED_COLUMNS, TRUE_COLUMNS, finished_folds, fold_dir,
                                             read_json, stage_dir, write_csv, write_json)

log = logging.getLogger(__name__)


def summarize_run(run_dir: Path) -> dict:
    """Write the run's `oof.csv`, `cv.json` and `loss_curves.png`; return the cv.json data."""
    run_dir = Path(run_dir)
    folds = finished_folds(run_dir)
    if not folds:
        raise ValueError(f"{run_dir}: no finished fold (fold*/{FOLD_SUMMARY_NAME})")
    config = read_config(run_dir / CONFIG_NAME)
    oof = pd.concat([pd.read_csv(fold_dir(run_dir, f["fold"]) / OOF_NAME) for f in folds], ignore_index=True)
    write_csv(oof, run_dir / OOF_NAME)
    priors = {f["fold"]: np.asarray(f["prior"]) for f in folds}
    prior_rows = np.stack([priors[fold] for fold in oof["fold"]])
    per_fold = [_fold_scores(summary, oof[oof["fold"] == summary["fold"]]) for summary in folds]
    summary = {
        "run": run_dir.name,
        "arch": config.arch,
        "input": config.input,
        "folds": [f["fold"] for f in folds],
        "n_splits": config.n_splits,
        "oof_rows": len(oof),
        "cv_kl": kl_divergence(oof[list(TRUE_COLUMNS)], oof[list(PREDICTED_COLUMNS)]),
        "prior_kl": kl_divergence(oof[list(TRUE_COLUMNS)], prior_rows),
        "parameters": folds[0]["parameters"],
        "trainable_parameters": folds[0]["trainable_parameters"],
        "per_fold": per_fold,
    }
    if config.stage2_min_votes is not None:
        summary["stages"] = stage_scores(run_dir, folds, oof, summary["cv_kl"], config.stage2_min_votes)
    write_json(summary, run_dir / CV_NAME)
    plot_loss_curves(run_dir, [f["fold"] for f in folds], run_dir / LOSS_PLOT_NAME)
    log.info(
        "%s: CV KL %.4f on %d out-of-fold rows (folds %s); class-prior baseline %.4f",
        run_dir, summary["cv_kl"], summary["oof_rows"], summary["folds"], summary["prior_kl"],
    )
    return summary


def stage_scores(run_dir: Path, folds: list[dict], oof: pd.DataFrame, last_kl: float, min_votes: int) -> list[dict]:
    """Each stage's CV KL on the run's out-of-fold rows: the first stage's from
    `fold<k>/stage1/oof.csv`, the second's the run's."""
    first = pd.concat([pd.read_csv(stage_dir(run_dir, f["fold"], 1) / OOF_NAME) for f in folds], ignore_index=True)
    if not first[["label_id", "fold"]].equals(oof[["label_id", "fold"]]):
        raise ValueError(f"{run_dir}: the stages' out-of-fold rows differ")
    first_summaries = [read_json(stage_dir(run_dir, f["fold"], 1) / FOLD_SUMMARY_NAME) for f in folds]
    return [
        {"stage": 1, "cv_kl": kl_divergence(first[list(TRUE_COLUMNS)], first[list(PREDICTED_COLUMNS)]),
         "min_votes": None, "train_rows": sum(s["train_rows"] for s in first_summaries)},
        {"stage": 2, "cv_kl": last_kl, "min_votes": min_votes, "train_rows": sum(f["train_rows"] for f in folds)},
    ]


def fold_history(run_dir: Path, fold: int) -> pd.DataFrame:
    """The fold's history, a first stage's epochs before its second's, numbered on."""
    history = pd.read_csv(fold_dir(run_dir, fold) / HISTORY_NAME)
    first = stage_dir(run_dir, fold, 1) / HISTORY_NAME
    if not first.is_file():
        return history
    before = pd.read_csv(first)
    return pd.concat([before, history.assign(epoch=history["epoch"] + before["epoch"].max())], ignore_index=True)


def _fold_scores(summary: dict, oof: pd.DataFrame) -> dict:
    prior = np.tile(np.asarray(summary["prior"]), (len(oof), 1))
    return {
        "fold": summary["fold"],
        "kl": kl_divergence(oof[list(TRUE_COLUMNS)], oof[list(PREDICTED_COLUMNS)]),
        "prior_kl": kl_divergence(oof[list(TRUE_COLUMNS)], prior),
        "best_val_loss": summary["best_val_loss"],
        "best_epoch": summary["best_epoch"],
        "epochs": summary["epochs"],
        "oof_rows": len(oof),
    }


def plot_loss_curves(run_dir: Path, folds: list[int], path: Path) -> Path:
    """Training (solid) and validation (dashed) loss per epoch, one colour per fold."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, fold in enumerate(folds):
        history = fold_history(run_dir, fold)
        colour = f"C{index}"
        axes.plot(history["epoch"], history["loss"], "-o", color=colour, label=f"fold {fold} train")
        axes.plot(history["epoch"], history["val_loss"], "--s", color=colour, label=f"fold {fold} val")
    axes.set(xlabel="epoch", ylabel="KL divergence loss", title=f"{Path(run_dir).name}: loss per fold")
    integer_ticks(axes)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", ncol=2)
    return save_figure(figure, path)
