"""Cross-validation folds: computed once, saved as folds.csv, reused by every model.

StratifiedGroupKFold (the starter's: 5 splits, shuffled, random_state 42), grouped by
`patient_id` so no patient is in two folds, stratified by the consensus class, over one row
per eeg_id (`eeg`, the default) or, as the starter notebook does, over every train.csv row
(`rows`; on the real 2,089-row sample the two partitions are unrelated, adjusted Rand index
0.02). The file maps each eeg_id to its fold (an EEG is one patient's, so it lies in one fold
either way); a second architecture trained with `--folds-file` gets the same validation
EEGs, so out-of-fold predictions line up.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.atomic import atomic_output
from hms_offline.constants import ID_COLUMN
from hms_offline.tables import read_csv_with_columns
from hms_offline.training.config import FOLD_UNITS
from hms_offline.training.labels import consensus_index, first_row_per_eeg

FOLD_COLUMNS = (ID_COLUMN, "patient_id", "fold")


def make_folds(labels: pd.DataFrame, n_splits: int = 5, seed: int = 42, unit: str = "eeg") -> pd.DataFrame:
    """`eeg_id, patient_id, fold` for every eeg_id of `labels`, split over one row per
    eeg_id (`unit="eeg"`) or over all rows in their train.csv order (`"rows"`, the starter's)."""
    from sklearn.model_selection import StratifiedGroupKFold

    if unit not in FOLD_UNITS:
        raise ValueError(f"unknown fold unit {unit!r}; known: {', '.join(FOLD_UNITS)}")
    table = labels.reset_index(drop=True)
    if unit == "eeg":
        table = table.iloc[first_row_per_eeg(table)].reset_index(drop=True)
    n_patients = table["patient_id"].nunique()
    if n_patients < n_splits:
        raise ValueError(f"{n_splits} folds need at least {n_splits} patients; train.csv has {n_patients}")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fold = np.full(len(table), -1)
    for index, (_, validation) in enumerate(splitter.split(table, y=consensus_index(table), groups=table["patient_id"])):
        fold[validation] = index
    folds = pd.DataFrame({ID_COLUMN: table[ID_COLUMN], "patient_id": table["patient_id"], "fold": fold})
    spread = folds.groupby(ID_COLUMN)["fold"].nunique()
    if (spread > 1).any():
        examples = ", ".join(map(str, spread.index[spread > 1][:5]))
        raise ValueError(f"eeg_id(s) of more than one patient, split across folds: {examples}")
    return folds.drop_duplicates(ID_COLUMN).reset_index(drop=True)


def write_folds(folds: pd.DataFrame, path: Path) -> Path:
    with atomic_output(path) as tmp:
        folds.loc[:, list(FOLD_COLUMNS)].to_csv(tmp, index=False)
    return Path(path)


def read_folds(path: Path) -> pd.DataFrame:
    folds = read_csv_with_columns(path, FOLD_COLUMNS, "folds file")
    check_patients_in_one_fold(folds, path)
    return folds


def check_patients_in_one_fold(folds: pd.DataFrame, source) -> None:
    spread = folds.groupby("patient_id")["fold"].nunique()
    if (spread > 1).any():
        examples = ", ".join(map(str, spread.index[spread > 1][:5]))
        raise ValueError(f"{source}: patients in more than one fold: {examples}")


def fold_of_rows(labels: pd.DataFrame, folds: pd.DataFrame, source) -> np.ndarray:
    """The fold of each labels row, by its eeg_id; every eeg_id must be in `folds`."""
    mapping = folds.drop_duplicates(ID_COLUMN).set_index(ID_COLUMN)["fold"]
    fold = labels[ID_COLUMN].map(mapping)
    if fold.isna().any():
        unknown = labels.loc[fold.isna(), ID_COLUMN].unique()
        raise ValueError(
            f"{source}: {len(unknown)} eeg_id(s) of train.csv have no fold "
            f"(e.g. {', '.join(map(str, unknown[:5]))}); was it made from another train.csv?"
        )
    return fold.to_numpy(dtype=int)
