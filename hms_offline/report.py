"""What training runs produced, read back from their folders.

- `summarize_run(run_dir)`: the run's out-of-fold rows in one `oof.csv`, its CV KL (Kaggle's
  metric on all out-of-fold rows and per fold) beside the class-prior baseline in `cv.json`,
  and `loss_curves.png`.
- `compare_runs(run_dirs, out)`: the study's side-by-side comparison (`comparison.md`,
  `comparison.csv`, `comparison.png`): arch, parameters, best val loss per fold, CV KL,
  training and inference throughput, the latter measured here, in one process.
"""

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.atomic import atomic_output, write_text_atomically
from hms_offline.config import read_config
from hms_offline.constants import ID_COLUMN, IMAGE_SHAPE, VOTE_COLUMNS

log = logging.getLogger(__name__)

TRUE_COLUMNS = tuple(f"true_{column}" for column in VOTE_COLUMNS)
PREDICTED_COLUMNS = tuple(f"pred_{column}" for column in VOTE_COLUMNS)
OOF_ID_COLUMNS = (ID_COLUMN, "label_id", "spectrogram_id", "patient_id", "fold")
FOLD_SUMMARY_NAME = "summary.json"
CV_NAME = "cv.json"
OOF_NAME = "oof.csv"
HISTORY_NAME = "history.csv"
CONFIG_NAME = "config.json"
LOSS_PLOT_NAME = "loss_curves.png"
FOLD_LOSS_PREFIX = "best_val_loss_fold"


def fold_dir(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / f"fold{fold}"


def kl_divergence(true: np.ndarray, predicted: np.ndarray) -> float:
    """Kaggle's KL metric (`metric.score`) of row-aligned probability arrays."""
    from hms_offline.metric import score

    rows = np.arange(len(true))
    solution = pd.DataFrame(np.asarray(true, dtype=np.float64), columns=list(VOTE_COLUMNS)).assign(row=rows)
    submission = pd.DataFrame(np.asarray(predicted, dtype=np.float64), columns=list(VOTE_COLUMNS)).assign(row=rows)
    return score(solution, submission, row_id_column_name="row")


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def write_json(data: dict, path: Path) -> Path:
    return write_text_atomically(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def finished_folds(run_dir: Path) -> list[dict]:
    """The summaries of the run's finished folds (a fold's summary.json is written last)."""
    summaries = [read_json(path) for path in Path(run_dir).glob(f"fold*/{FOLD_SUMMARY_NAME}")]
    return sorted(summaries, key=lambda summary: summary["fold"])


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
        "folds": [f["fold"] for f in folds],
        "n_splits": config.n_splits,
        "oof_rows": len(oof),
        "cv_kl": kl_divergence(oof[list(TRUE_COLUMNS)], oof[list(PREDICTED_COLUMNS)]),
        "prior_kl": kl_divergence(oof[list(TRUE_COLUMNS)], prior_rows),
        "parameters": folds[0]["parameters"],
        "trainable_parameters": folds[0]["trainable_parameters"],
        "per_fold": per_fold,
    }
    write_json(summary, run_dir / CV_NAME)
    plot_loss_curves(run_dir, [f["fold"] for f in folds], run_dir / LOSS_PLOT_NAME)
    log.info(
        "%s: CV KL %.4f on %d out-of-fold rows (folds %s); class-prior baseline %.4f",
        run_dir, summary["cv_kl"], summary["oof_rows"], summary["folds"], summary["prior_kl"],
    )
    return summary


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(run_dir: Path, folds: list[int], path: Path) -> Path:
    """Training (solid) and validation (dashed) loss per epoch, one colour per fold."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, fold in enumerate(folds):
        history = pd.read_csv(fold_dir(run_dir, fold) / HISTORY_NAME)
        colour = f"C{index}"
        axes.plot(history["epoch"], history["loss"], "-o", color=colour, label=f"fold {fold} train")
        axes.plot(history["epoch"], history["val_loss"], "--s", color=colour, label=f"fold {fold} val")
    axes.set(xlabel="epoch", ylabel="KL divergence loss", title=f"{Path(run_dir).name}: loss per fold")
    _integer_ticks(axes)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", ncol=2)
    return _save_figure(figure, path)


def _integer_ticks(axes) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save_figure(figure, path: Path) -> Path:
    plt = _pyplot()
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return Path(path)


def inference_images_per_second(arch: str, images: int, batch_size: int) -> float:
    """A short timed `predict` of random inputs (after one warm-up batch) on this machine."""
    from hms_offline.model import build_model

    model = build_model(arch)
    inputs = np.random.default_rng(0).normal(size=(images, *IMAGE_SHAPE)).astype(np.float32)
    model.predict(inputs[:batch_size], batch_size=batch_size, verbose=0)
    started = time.perf_counter()
    model.predict(inputs, batch_size=batch_size, verbose=0)
    return images / (time.perf_counter() - started)


def run_row(run_dir: Path) -> dict:
    """One row of the comparison for a trained run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / CV_NAME).is_file():
        raise FileNotFoundError(f"{run_dir}: no {CV_NAME}; is it a finished training run?")
    cv = read_json(run_dir / CV_NAME)
    histories = [pd.read_csv(fold_dir(run_dir, fold) / HISTORY_NAME) for fold in cv["folds"]]
    row = {
        "run": run_dir.name,
        "arch": cv["arch"],
        "parameters": cv["parameters"],
        "trainable_parameters": cv["trainable_parameters"],
        "folds": " ".join(map(str, cv["folds"])),
        "cv_kl": cv["cv_kl"],
        "prior_kl": cv["prior_kl"],
        "mean_best_val_loss": float(np.mean([f["best_val_loss"] for f in cv["per_fold"]])),
        "train_samples_per_s": training_speed(pd.concat(histories)),
    }
    row.update({f"{FOLD_LOSS_PREFIX}{f['fold']}": f["best_val_loss"] for f in cv["per_fold"]})
    return row


def training_speed(history: pd.DataFrame) -> float:
    """Median samples/s over epochs after the first (which includes tracing the model)."""
    later = history[history["epoch"] > 1]
    return float((later if len(later) else history)["train_samples_per_second"].median())


def compare_runs(run_dirs: list[Path], out: Path, speed_images: int = 32, speed_batch_size: int = 8) -> pd.DataFrame:
    """Side-by-side table (Markdown + CSV) and plots of trained runs; inference images/s of
    each architecture measured now, one after the other in this process (0 images: skipped)."""
    out = Path(out)
    table = pd.DataFrame([run_row(run_dir) for run_dir in run_dirs])
    if speed_images > 0:
        speeds = {
            arch: inference_images_per_second(arch, speed_images, speed_batch_size)
            for arch in table["arch"].unique()
        }
        table["inference_images_per_s"] = table["arch"].map(speeds)
    fold_columns = sorted(
        (c for c in table.columns if c.startswith(FOLD_LOSS_PREFIX)), key=lambda c: int(c[len(FOLD_LOSS_PREFIX):])
    )
    table = table[[c for c in table.columns if not c.startswith(FOLD_LOSS_PREFIX)] + fold_columns]
    write_csv(table, out / "comparison.csv")
    write_text_atomically(out / "comparison.md", comparison_markdown(table))
    plot_comparison(table, [Path(run_dir) for run_dir in run_dirs], out / "comparison.png")
    log.info("wrote %s/comparison.{md,csv,png}", out)
    return table


def comparison_markdown(table: pd.DataFrame) -> str:
    def cell(value) -> str:
        if isinstance(value, (float, np.floating)):
            return "" if np.isnan(value) else f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
        if isinstance(value, (int, np.integer)):
            return f"{value:,}"
        return str(value)

    lines = [
        "| " + " | ".join(table.columns) + " |",
        "|" + "|".join("---" for _ in table.columns) + "|",
        *("| " + " | ".join(cell(value) for value in row) + " |" for row in table.itertuples(index=False)),
    ]
    notes = (
        "\n\ncv_kl: Kaggle's KL metric on all out-of-fold rows; prior_kl: the same for predicting "
        "the training folds' mean vote fractions. Best val loss per fold is Keras's KLDivergence "
        "on the validation windows. Throughput: training samples/s from the run's history (its "
        "own machine; the median over epochs after the first, which includes tracing), inference "
        "images/s measured on this machine by one `report` call.\n"
    )
    return "\n".join(lines) + notes


def plot_comparison(table: pd.DataFrame, run_dirs: list[Path], path: Path) -> Path:
    """Validation loss per epoch of every fold of every run, CV KL vs prior, throughput."""
    plt = _pyplot()
    figure, (curves, scores, speed) = plt.subplots(1, 3, figsize=(15, 4.5))
    for index, (run_dir, row) in enumerate(zip(run_dirs, table.itertuples())):
        for number, fold in enumerate(row.folds.split()):
            history = pd.read_csv(fold_dir(run_dir, int(fold)) / HISTORY_NAME)
            curves.plot(history["epoch"], history["val_loss"], color=f"C{index}", alpha=0.8,
                        label=row.run if number == 0 else None)
    curves.set(xlabel="epoch", ylabel="validation loss", title="validation loss (each fold)")
    _integer_ticks(curves)
    curves.legend(fontsize="small")
    positions = np.arange(len(table))
    scores.bar(positions - 0.2, table["cv_kl"], width=0.4, label="CV KL")
    scores.bar(positions + 0.2, table["prior_kl"], width=0.4, label="class prior", color="grey")
    scores.set(xticks=positions, xticklabels=table["run"], ylabel="KL divergence", title="out-of-fold KL")
    scores.legend(fontsize="small")
    if "inference_images_per_s" in table:
        speed.bar(positions - 0.2, table["inference_images_per_s"], width=0.4, label="inference (here)")
    speed.bar(positions + 0.2, table["train_samples_per_s"], width=0.4, label="training (its run)", color="grey")
    speed.set(xticks=positions, xticklabels=table["run"], ylabel="images / s", title="throughput")
    speed.legend(fontsize="small")
    return _save_figure(figure, path)
