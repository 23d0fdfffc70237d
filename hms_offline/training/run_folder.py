"""A run folder: the name and place of every file `train` writes, and the atomic writers and
the readers of its JSON and CSV files. A run folder holds one architecture's folds and
travels as a unit:

    config.json  folds.csv  train.log  oof.csv  cv.json  loss_curves.png  weights_manifest.json
    fold<k>/  <arch>_fold<k>.weights.h5  config.json  history.csv  oof.csv  summary.json
              checkpoint/  epoch_NNN.weights.h5  state.json    (only while the fold trains)
              stage1/  the same files of the first stage      (only with --stage2-min-votes:
                                                               fold<k>/ itself holds the second)

The run's weights_manifest.json is named by hms_offline.models.manifest.MANIFEST_NAME.
hms_offline/bundle/demo.py, standard library only, keeps a copy of the names it reads
(tests/test_one_home.py ties them to these).
"""

import json
from pathlib import Path

from hms_offline.atomic import atomic_output, write_text_atomically
from hms_offline.constants import ID_COLUMN, VOTE_COLUMNS
from hms_offline.training.config import TrainConfig, read_config

CONFIG_NAME = "config.json"  # the resolved TrainConfig, of the run and of each fold
FOLDS_NAME = "folds.csv"
LOG_NAME = "train.log"
OOF_NAME = "oof.csv"  # of each fold, and all finished folds' rows in the run's
CV_NAME = "cv.json"
LOSS_PLOT_NAME = "loss_curves.png"
HISTORY_NAME = "history.csv"
FOLD_SUMMARY_NAME = "summary.json"  # written last: a fold with one is finished
CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "state.json"
FIRST_STAGE_DIR = "stage1"  # of a two-stage fold; the fold's folder holds its last stage

# oof.csv: the row's ids and fold, its true vote fractions, the model's probabilities.
OOF_ID_COLUMNS = (ID_COLUMN, "label_id", "spectrogram_id", "patient_id", "fold")
TRUE_COLUMNS = tuple(f"true_{column}" for column in VOTE_COLUMNS)
PREDICTED_COLUMNS = tuple(f"pred_{column}" for column in VOTE_COLUMNS)


def fold_dir(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / f"fold{fold}"


def stage_dir(run_dir: Path, fold: int, stage: int) -> Path:
    """Where a two-stage fold's stage writes: `fold<k>/stage1/`, then `fold<k>/`."""
    return fold_dir(run_dir, fold) / FIRST_STAGE_DIR if stage == 1 else fold_dir(run_dir, fold)


def weights_name(arch: str, fold: int) -> str:
    return f"{arch}_fold{fold}.weights.h5"


def finished_folds(run_dir: Path) -> list[dict]:
    """The summaries of the run's finished folds, by fold number."""
    summaries = [read_json(path) for path in Path(run_dir).glob(f"fold*/{FOLD_SUMMARY_NAME}")]
    return sorted(summaries, key=lambda summary: summary["fold"])


def write_csv(frame, path: Path) -> Path:
    """A pandas frame as CSV, atomically."""
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def write_json(data: dict, path: Path) -> Path:
    return write_text_atomically(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def check_same_run(config: TrainConfig, run_dir: Path) -> None:
    """A run folder resumes only with the settings it was started with (the data location,
    the folds to train and the progress display may change)."""
    if not (run_dir / CONFIG_NAME).is_file():
        return
    differences = read_config(run_dir / CONFIG_NAME).differences(config)
    if differences:
        listed = "; ".join(f"{name}: {before!r} there, {now!r} now" for name, (before, now) in differences.items())
        raise ValueError(f"{run_dir} holds a run with other settings ({listed}); use another --out")
