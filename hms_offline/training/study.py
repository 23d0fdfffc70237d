"""`python -m hms_offline study`: MobileNetV3 Large and EfficientNetV2 B2 trained on the same
folds under one recipe, and the study report. The study folder:

    mobilenetv3_large/   a run folder of `train` (run_folder.py), its folds made (or --folds-file)
    efficientnetv2_b2/   a run folder of `train`, trained with --folds-file mobilenetv3_large/folds.csv
    study.md             the table below, the per-epoch losses and the gap, the plots, how to read them
    study.csv            per run: parameters (total, trainable), CV KL, class-prior KL, best epoch per
                         fold, training samples/s (its history), inference images/s (measured now)
    study_epochs.csv     per run, fold and epoch: loss, val_loss, gap = val_loss - loss
    study_losses.png     train (solid) and validation (dashed) loss per epoch of both runs
    study_gap.png        validation minus training loss per epoch of both runs

Every `train` flag but --arch, --out and --pretrained applies to both runs (the recipe too);
--pretrained-mobilenet / --pretrained-efficientnet give each run its own local preset. The
runs are `train` itself and the table `report`'s (compare.comparison_table), so the same
command again trains only what is missing (finished folds are skipped, an interrupted one
resumes) and then writes the report again, inference measured again. Both run folders are
checked before anything trains. TensorFlow is imported only when the runs train.
"""

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.atomic import write_text_atomically
from hms_offline.figures import integer_ticks, pyplot, save_figure
from hms_offline.training.compare import comparison_markdown, comparison_table, markdown_table
from hms_offline.training.config import TrainConfig, add_arguments, read_config
from hms_offline.training.run_folder import (CONFIG_NAME, CV_NAME, FOLDS_NAME, LOG_NAME, check_same_run,
                                             finished_folds, write_csv)
from hms_offline.training.summary import fold_history

log = logging.getLogger(__name__)

# The study's runs, in training order: arch -> the study flag giving its --pretrained.
# The first makes the folds, the second reuses them.
STUDY_RUNS = {"mobilenetv3_large": "pretrained_mobilenet", "efficientnetv2_b2": "pretrained_efficientnet"}
NOT_STUDY_FLAGS = ("arch", "out", "pretrained")  # TrainConfig fields the study sets per run

TABLE_NAME = "study.csv"
EPOCHS_NAME = "study_epochs.csv"
MARKDOWN_NAME = "study.md"
LOSSES_PLOT_NAME = "study_losses.png"
GAP_PLOT_NAME = "study_gap.png"

REFUSED_FLAGS = {
    "--arch": "study trains both mobilenetv3_large and efficientnetv2_b2, one run folder each; "
              "--arch is a `train` flag",
    "--pretrained": "study takes one preset per architecture: --pretrained-mobilenet DIR and/or "
                    "--pretrained-efficientnet DIR; --pretrained is a `train` flag",
}


class _Refused(argparse.Action):
    """A `train` flag the study sets itself: an error saying so, whatever its value."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(REFUSED_FLAGS[self.option_strings[0]])


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """Every `train` flag but --arch, --out and --pretrained (those two refused with a reason),
    and the study's own."""
    parser.add_argument("--out", type=Path, required=True,
                        help="the study folder: its run folders mobilenetv3_large/ and efficientnetv2_b2/, "
                             "study.{md,csv}, study_epochs.csv, study_losses.png, study_gap.png")
    add_arguments(parser, exclude=NOT_STUDY_FLAGS)
    parser.add_argument("--pretrained-mobilenet", type=Path, default=None, metavar="DIR",
                        help="local keras-cv preset folder for MobileNetV3 Large (e.g. mobilenet_v3_large_imagenet); "
                             "--pretrained of its run")
    parser.add_argument("--pretrained-efficientnet", type=Path, default=None, metavar="DIR",
                        help="local keras-cv preset folder for EfficientNetV2 B2 (e.g. efficientnetv2_b2_imagenet); "
                             "--pretrained of its run")
    parser.add_argument("--speed-images", type=int, default=32,
                        help="random images per arch for the inference images/s measurement (0: skip)")
    parser.add_argument("--speed-batch-size", type=int, default=8)
    for flag in REFUSED_FLAGS:
        parser.add_argument(flag, action=_Refused)


def study_configs(arguments: argparse.Namespace) -> list[TrainConfig]:
    """The two runs' configs from the study's flags: the recipe and every `train` flag given
    for both, each its arch, run folder and preset; the second the first's folds."""
    out = Path(arguments.out)
    configs = []
    for arch, pretrained_flag in STUDY_RUNS.items():
        values = argparse.Namespace(**vars(arguments))
        values.arch, values.out = arch, out / arch
        if getattr(arguments, pretrained_flag, None) is not None:
            values.pretrained = getattr(arguments, pretrained_flag)
        if configs:
            values.folds_file = configs[0].out / FOLDS_NAME
        configs.append(TrainConfig.from_arguments(values))
    return configs


def check_study(out: Path, configs: list[TrainConfig]) -> None:
    """Before anything trains: the study folder is not a run folder, each run folder is absent,
    a `train` run folder of the same settings (to resume) or what a failed start leaves, and
    each preset folder holds a preset. `configs` are resolved."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a study folder")
    for name in (CONFIG_NAME, CV_NAME):
        if (out / name).exists():
            raise ValueError(f"--out {out} holds {name}: it is a `train` run folder, not a study folder; "
                             "give the study a folder of its own")
    for config in configs:
        run_dir = config.out
        if config.pretrained is not None and not (config.pretrained / "config.json").is_file():
            flag = "--" + STUDY_RUNS[config.arch].replace("_", "-")
            raise FileNotFoundError(f"{flag}: {config.pretrained / 'config.json'} not found (a local keras-cv "
                                    "preset folder: config.json + model.weights.h5)")
        if not run_dir.exists():
            continue
        if not run_dir.is_dir():
            raise ValueError(f"{run_dir} is a file, not the study's {config.arch} run folder; use another --out")
        if (run_dir / CONFIG_NAME).is_file():
            check_same_run(config, run_dir)
            continue
        others = sorted(path.name for path in run_dir.iterdir() if path.name not in {LOG_NAME, FOLDS_NAME})
        if others:
            raise ValueError(f"{run_dir} is not a `train` run folder (no {CONFIG_NAME}; it holds "
                             f"{', '.join(others[:5])}), and the study's {config.arch} run goes there; "
                             "use another --out")


def run_study(configs: list[TrainConfig], out: Path, speed_images: int = 32, speed_batch_size: int = 8) -> pd.DataFrame:
    """Train both runs (what is not finished yet), then write the study report; returns its table."""
    configs = [config.resolved() for config in configs]
    out = Path(out).expanduser().resolve()
    check_study(out, configs)
    from hms_offline.training.run import train

    for number, config in enumerate(configs, 1):
        log.info("study run %d of %d: %s in %s", number, len(configs), config.arch, config.out)
        train(config)
    return write_study(out, [config.out for config in configs], speed_images, speed_batch_size)


def study_from_arguments(arguments: argparse.Namespace) -> pd.DataFrame:
    return run_study(study_configs(arguments), arguments.out, arguments.speed_images, arguments.speed_batch_size)


def write_study(out: Path, run_dirs: list[Path], speed_images: int = 32, speed_batch_size: int = 8) -> pd.DataFrame:
    """study.{md,csv}, study_epochs.csv, study_losses.png and study_gap.png of trained runs."""
    out, run_dirs = Path(out), [Path(run_dir) for run_dir in run_dirs]
    configs = [read_config(run_dir / CONFIG_NAME) for run_dir in run_dirs]
    table = comparison_table(run_dirs, speed_images, speed_batch_size)
    table.insert(2, "recipe", [config.recipe for config in configs])
    table.insert(3, "initial_weights", [initial_weights(config) for config in configs])
    epochs = epoch_losses(run_dirs)
    write_csv(table, out / TABLE_NAME)
    write_csv(epochs, out / EPOCHS_NAME)
    which = folds_shown(epochs)
    plot_losses(epochs, which, out / LOSSES_PLOT_NAME)
    plot_gap(epochs, which, out / GAP_PLOT_NAME)
    write_text_atomically(out / MARKDOWN_NAME, study_markdown(table, epochs, run_dirs, configs))
    log.info("wrote %s/study.{md,csv}, %s, %s, %s", out, EPOCHS_NAME, LOSSES_PLOT_NAME, GAP_PLOT_NAME)
    return table


def initial_weights(config: TrainConfig) -> str:
    return "random" if config.pretrained is None else f"preset {Path(config.pretrained).name}"


def epoch_losses(run_dirs: list[Path]) -> pd.DataFrame:
    """`run, arch, fold, epoch, loss, val_loss, gap` of every finished fold of every run
    (a two-stage fold's stages in a row); gap = val_loss - loss."""
    frames = []
    for run_dir in run_dirs:
        arch = read_config(run_dir / CONFIG_NAME).arch
        for fold in finished_folds(run_dir):
            history = fold_history(run_dir, fold["fold"])
            frames.append(pd.DataFrame({
                "run": run_dir.name, "arch": arch, "fold": fold["fold"], "epoch": history["epoch"],
                "loss": history["loss"], "val_loss": history["val_loss"],
                "gap": history["val_loss"] - history["loss"],
            }))
    return pd.concat(frames, ignore_index=True)


def folds_shown(epochs: pd.DataFrame) -> str:
    """What the per-epoch values are: one fold's, or the mean over several."""
    folds = sorted(epochs["fold"].unique())
    return f"fold {folds[0]}" if len(folds) == 1 else "mean over folds " + ", ".join(map(str, folds))


def mean_over_folds(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per run and epoch, the mean over folds of loss, val_loss and gap (the run order kept)."""
    means = epochs.groupby(["run", "epoch"], sort=False)[["loss", "val_loss", "gap"]].mean()
    return means.reset_index()


def plot_losses(epochs: pd.DataFrame, which: str, path: Path) -> Path:
    """Training (solid) and validation (dashed) loss per epoch, one colour per run."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    for index, (run, curve) in enumerate(mean_over_folds(epochs).groupby("run", sort=False)):
        axes.plot(curve["epoch"], curve["loss"], "-o", color=f"C{index}", label=f"{run} train")
        axes.plot(curve["epoch"], curve["val_loss"], "--s", color=f"C{index}", label=f"{run} validation")
    axes.set(xlabel="epoch", ylabel="KL divergence loss", title=f"training (solid) and validation (dashed) loss, {which}")
    integer_ticks(axes)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return save_figure(figure, path)


def plot_gap(epochs: pd.DataFrame, which: str, path: Path) -> Path:
    """val_loss - loss per epoch, one colour per run; with several folds their range shaded."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    means = mean_over_folds(epochs)
    for index, (run, curve) in enumerate(means.groupby("run", sort=False)):
        axes.plot(curve["epoch"], curve["gap"], "-o", color=f"C{index}", label=run)
        per_fold = epochs[epochs["run"] == run]
        if per_fold["fold"].nunique() > 1:
            spread = per_fold.groupby("epoch")["gap"].agg(["min", "max"])
            axes.fill_between(spread.index, spread["min"], spread["max"], color=f"C{index}", alpha=0.2)
    axes.axhline(0, color="grey", linewidth=0.8)
    several = epochs.groupby("run")["fold"].nunique().max() > 1
    axes.set(xlabel="epoch", ylabel="validation - training loss",
             title=f"generalisation gap, {which}" + (" (shaded: the folds' range)" if several else ""))
    integer_ticks(axes)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return save_figure(figure, path)


def study_markdown(table: pd.DataFrame, epochs: pd.DataFrame, run_dirs: list[Path], configs: list[TrainConfig]) -> str:
    first = configs[0]
    steps = sorted({fold["steps_per_epoch"] for run_dir in run_dirs for fold in finished_folds(run_dir)})
    which = folds_shown(epochs)
    wide = mean_over_folds(epochs).pivot(index="epoch", columns="run", values=["loss", "val_loss", "gap"])
    wide = pd.DataFrame({
        f"{run} {label}": wide[(column, run)] for run in table["run"]
        for column, label in (("loss", "train"), ("val_loss", "validation"), ("gap", "gap"))
    }).reset_index()
    return "\n".join([
        f"# Study: {' vs '.join(table['arch'])}",
        "",
        f"Recipe `{first.recipe}`, the same folds ({run_dirs[1].name}/ trained with `--folds-file "
        f"{run_dirs[0].name}/{FOLDS_NAME}`): folds {' '.join(table['folds'].unique())} of {first.n_splits}, "
        f"{first.epochs} epochs x {' or '.join(map(str, steps))} steps/epoch x batch {first.batch_size}, "
        f"{'all' if first.max_samples is None else first.max_samples} train.csv rows; initial weights: "
        + "; ".join(f"{row.arch} {row.initial_weights}" for row in table.itertuples()) + ".",
        "",
        comparison_markdown(table, measured_by="this `study` call, one architecture after the other").rstrip("\n"),
        "",
        f"## Loss per epoch ({which})",
        "",
        markdown_table(wide),
        "",
        f"![training and validation loss]({LOSSES_PLOT_NAME})",
        "",
        f"![generalisation gap]({GAP_PLOT_NAME})",
        "",
        "train: the mean KLDivergence over the epoch's training batches, augmented (MixUp, time and frequency "
        "masks) and with BatchNormalization in training mode; validation: val_loss on the fold's validation "
        "windows in inference mode, against the --validation-targets; gap = validation - train of the same "
        f"epoch (per fold in {EPOCHS_NAME}). Part of the gap is the augmentation's and the targets', not the "
        "model's: compare the two architectures' gaps, not their sign.",
        "",
    ])
