"""`python -m hms_offline report`: trained runs side by side (`comparison.md`, `comparison.csv`,
`comparison.png`): arch, parameters, best val loss and best epoch per fold, CV KL beside the class prior,
training throughput from each run's history and inference throughput measured here, every
architecture in the same process."""

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.atomic import write_text_atomically
from hms_offline.constants import IMAGE_SHAPE
from hms_offline.figures import integer_ticks, pyplot, save_figure
from hms_offline.training.run_folder import CV_NAME, HISTORY_NAME, fold_dir, read_json, write_csv

log = logging.getLogger(__name__)

FOLD_LOSS_PREFIX = "best_val_loss_fold"


def inference_images_per_second(arch: str, images: int, batch_size: int) -> float:
    """A short timed `predict` of random inputs (after one warm-up batch) on this machine."""
    from hms_offline.models.registry import build_model

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
        "input": cv.get("input", "kaggle"),
        "parameters": cv["parameters"],
        "trainable_parameters": cv["trainable_parameters"],
        "folds": " ".join(map(str, cv["folds"])),
        "cv_kl": cv["cv_kl"],
        "prior_kl": cv["prior_kl"],
        "stage1_cv_kl": cv["stages"][0]["cv_kl"] if "stages" in cv else float("nan"),
        "mean_best_val_loss": float(np.mean([f["best_val_loss"] for f in cv["per_fold"]])),
        "best_epochs": " ".join(str(f["best_epoch"]) for f in cv["per_fold"]),
        "train_samples_per_s": training_speed(pd.concat(histories)),
    }
    row.update({f"{FOLD_LOSS_PREFIX}{f['fold']}": f["best_val_loss"] for f in cv["per_fold"]})
    return row


def training_speed(history: pd.DataFrame) -> float:
    """Median samples/s over epochs after the first (which includes tracing the model)."""
    later = history[history["epoch"] > 1]
    return float((later if len(later) else history)["train_samples_per_second"].median())


def comparison_table(run_dirs: list[Path], speed_images: int = 32, speed_batch_size: int = 8) -> pd.DataFrame:
    """One row per trained run; inference images/s of each architecture measured now, one
    after the other in this process (0 images: skipped)."""
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
    return table[[c for c in table.columns if not c.startswith(FOLD_LOSS_PREFIX)] + fold_columns]


def compare_runs(run_dirs: list[Path], out: Path, speed_images: int = 32, speed_batch_size: int = 8) -> pd.DataFrame:
    """Side-by-side table (Markdown + CSV) and plots of trained runs (`comparison_table`)."""
    out = Path(out)
    table = comparison_table(run_dirs, speed_images, speed_batch_size)
    write_csv(table, out / "comparison.csv")
    write_text_atomically(out / "comparison.md", comparison_markdown(table))
    plot_comparison(table, [Path(run_dir) for run_dir in run_dirs], out / "comparison.png")
    log.info("wrote %s/comparison.{md,csv,png}", out)
    return table


def markdown_table(table: pd.DataFrame) -> str:
    """A frame as a Markdown table: floats to 4 decimals (thousands separated from 100 on)."""
    def cell(value) -> str:
        if isinstance(value, (float, np.floating)):
            return "" if np.isnan(value) else f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
        if isinstance(value, (int, np.integer)):
            return f"{value:,}"
        return str(value)

    lines = [
        "| " + " | ".join(map(str, table.columns)) + " |",
        "|" + "|".join("---" for _ in table.columns) + "|",
        *("| " + " | ".join(cell(value) for value in row) + " |" for row in table.itertuples(index=False)),
    ]
    return "\n".join(lines)


def comparison_markdown(table: pd.DataFrame, measured_by: str = "one `report` call") -> str:
    notes = (
        "\n\ncv_kl: Kaggle's KL metric on all out-of-fold rows; prior_kl: the same for predicting "
        "the training folds' mean vote fractions. Best val loss per fold is Keras's KLDivergence "
        "on the validation windows; best_epochs: the epoch kept, per fold. Throughput: training "
        "samples/s from the run's history (its own machine; the median over epochs after the first, "
        f"which includes tracing), inference images/s measured on this machine by {measured_by}.\n"
    )
    return markdown_table(table) + notes


def plot_comparison(table: pd.DataFrame, run_dirs: list[Path], path: Path) -> Path:
    """Validation loss per epoch of every fold of every run, CV KL vs prior, throughput."""
    plt = pyplot()
    figure, (curves, scores, speed) = plt.subplots(1, 3, figsize=(15, 4.5))
    for index, (run_dir, row) in enumerate(zip(run_dirs, table.itertuples())):
        for number, fold in enumerate(row.folds.split()):
            history = pd.read_csv(fold_dir(run_dir, int(fold)) / HISTORY_NAME)
            curves.plot(history["epoch"], history["val_loss"], color=f"C{index}", alpha=0.8,
                        label=row.run if number == 0 else None)
    curves.set(xlabel="epoch", ylabel="validation loss", title="validation loss (each fold)")
    integer_ticks(curves)
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
    return save_figure(figure, path)
