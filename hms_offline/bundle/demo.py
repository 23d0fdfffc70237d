"""--demo's pieces: the demo's small training runs (both architectures on the Kaggle
spectrogram, MobileNetV3 on the EEG view), their ensemble weights fitted on the out-of-fold
predictions (`python -m hms_offline ensemble`), the class-prior baseline and its score."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

from .common import LOG, MANIFEST_NAME, PACKAGE, REPO_ROOT, run
from .submission_check import read_csv_rows
from .verify import parse_score, score_command

DEMO_DIR = REPO_ROOT / "runs" / "demo"
DEMO_KAGGLE_USER = "demo"
DEMO_SYNTHETIC = {"n_train": 160, "n_test": 16, "seed": 0}
# Small on purpose, to take minutes on 2 CPU cores: a few short epochs of small batches,
# 2 folds of MobileNetV3 Large and 1 of the much slower EfficientNetV2 B2. So few steps need
# what the full recipe does not: a higher peak learning rate, a BatchNormalization momentum
# whose moving statistics settle within them, no MixUp or masking (they slow learning down).
DEMO_TRAINING = ("--n-splits", "2", "--batch-size", "8", "--warmup-epochs", "0.5", "--peak-learning-rate", "1e-3",
                 "--bn-momentum", "0.5", "--mixup-p", "0", "--time-mask-p", "0", "--freq-mask-p", "0",
                 "--progress", "epoch")
# Run folder name -> its flags. Every run trains every fold, so their out-of-fold rows line up
# for `ensemble`.
DEMO_RUNS = {
    "mobilenetv3_large": ("--arch", "mobilenetv3_large", "--epochs", "4", "--steps-per-epoch", "8"),
    "mobilenetv3_large_eeg": ("--arch", "mobilenetv3_large", "--input", "eeg", "--epochs", "4",
                              "--steps-per-epoch", "8"),
    "efficientnetv2_b2": ("--arch", "efficientnetv2_b2", "--epochs", "2", "--steps-per-epoch", "4"),
}
ENSEMBLE_DIR = DEMO_DIR / "ensemble"
# Copies of hms_offline.training.run_folder.FOLDS_NAME and CV_NAME: what a run folder holds.
FOLDS_NAME = "folds.csv"
CV_NAME = "cv.json"


def train_demo_runs(data: Path, folder: Path) -> list[Path]:
    """Every run of DEMO_RUNS with the real training command; later runs reuse the first
    run's folds, so every run holds out the same patients per fold."""
    runs = []
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ}
    for name, flags in DEMO_RUNS.items():
        run_dir = folder / name
        same_folds = ("--folds-file", str(runs[0] / FOLDS_NAME)) if runs else ()
        LOG.info("training %s on %s -> %s", name, data, run_dir)
        run([sys.executable, "-m", PACKAGE, "train", "--data-dir", str(data), "--out", str(run_dir),
             "--work-dir", str(folder / "recordings"), *DEMO_TRAINING, *flags, *same_folds],
            quiet=False, env=env, cwd=REPO_ROOT, what=f"training {name}")
        runs.append(run_dir)
    return runs


def fit_demo_ensemble(runs: list[Path], out: Path) -> Path:
    """`python -m hms_offline ensemble` over the runs: their weights fitted on the out-of-fold
    predictions; returns the weights manifest it writes."""
    run([sys.executable, "-m", PACKAGE, "ensemble", *map(str, runs), "--out", str(out)],
        quiet=False, cwd=REPO_ROOT, what="fitting the ensemble weights")
    return out / MANIFEST_NAME


def class_prior_submission(data: Path, out: Path) -> Path:
    """The class-prior baseline: the mean vote fractions of train.csv's rows, predicted for
    every row of sample_submission.csv."""
    header, sample_rows = read_csv_rows(data / "sample_submission.csv")
    columns = header[1:]
    with open(data / "train.csv", newline="", encoding="utf-8") as handle:
        votes = [[float(row[column]) for column in columns] for row in csv.DictReader(handle)]
    fractions = [[vote / sum(row) for vote in row] for row in votes]
    prior = [math.fsum(column) / len(fractions) for column in zip(*fractions)]
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([row[0], *map(repr, prior)] for row in sample_rows)
    return out


def score_locally(solution: Path, submission: Path) -> float:
    return parse_score(run(score_command(Path(sys.executable), solution, submission), quiet=True, cwd=REPO_ROOT,
                           what="scoring").stdout)


def describe_run(run_dir: Path) -> str:
    cv = json.loads((run_dir / CV_NAME).read_text(encoding="utf-8"))
    return (f"{run_dir.name:<22} {cv['arch']:<18} input {cv.get('input', 'kaggle'):<6} folds {','.join(map(str, cv['folds']))}: CV KL {cv['cv_kl']:.4f} on "
            f"{cv['oof_rows']} out-of-fold rows (class-prior baseline {cv['prior_kl']:.4f})")
