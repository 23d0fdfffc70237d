"""submission.csv: exactly the rows of sample_submission.csv, in its order, with its columns.

The competition has one row per `eeg_id`; re-packagings of it (MLE-bench's) repeat an
`eeg_id` once per test row and every one of those rows stays. The prediction for an
`eeg_id` is the mean over the test rows that carry it. Every row is checked to be finite
and to sum to 1 before the file is written, atomically.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.atomic import atomic_output
from hms_offline.constants import ID_COLUMN, SUBMISSION_COLUMNS, VOTE_COLUMNS
from hms_offline.tables import read_csv_with_columns

SUM_TOLERANCE = 1e-6
REQUIRED_TEST_COLUMNS = ("spectrogram_id", ID_COLUMN)  # patient_id is not needed to predict


def read_sample_submission(path: Path) -> pd.DataFrame:
    frame = read_csv_with_columns(path, SUBMISSION_COLUMNS, "sample_submission.csv")
    expected = list(SUBMISSION_COLUMNS)
    if list(frame.columns) != expected:
        raise ValueError(f"{path}: columns {list(frame.columns)}, expected exactly {expected}")
    return frame


def read_test_rows(path: Path) -> pd.DataFrame:
    return read_csv_with_columns(path, REQUIRED_TEST_COLUMNS, "test.csv")


def mean_by_eeg_id(eeg_ids: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """One row per eeg_id: the mean of the probabilities of the test rows that carry it."""
    frame = pd.DataFrame(np.asarray(probabilities, dtype=np.float64), columns=list(VOTE_COLUMNS))
    frame[ID_COLUMN] = np.asarray(eeg_ids)
    return frame.groupby(ID_COLUMN, sort=False)[list(VOTE_COLUMNS)].mean()


def build_submission(sample: pd.DataFrame, eeg_ids: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """The sample's rows and columns, filled with per-eeg_id means, each row renormalised to 1."""
    per_eeg = mean_by_eeg_id(eeg_ids, probabilities)
    missing = sorted(set(sample[ID_COLUMN]) - set(per_eeg.index))
    if missing:
        raise ValueError(
            f"no prediction for {len(missing)} eeg_id(s) of sample_submission.csv, e.g. {missing[:5]}"
        )
    values = per_eeg.loc[sample[ID_COLUMN].to_numpy()].to_numpy()
    values = values / values.sum(axis=1, keepdims=True)
    submission = pd.DataFrame(values, columns=list(VOTE_COLUMNS))
    submission.insert(0, ID_COLUMN, sample[ID_COLUMN].to_numpy())
    check_submission(submission, sample)
    return submission


def check_submission(submission: pd.DataFrame, sample: pd.DataFrame) -> None:
    """What Kaggle checks before scoring: rows, ids, columns, finite values summing to 1."""
    if list(submission.columns) != list(sample.columns):
        raise ValueError(f"submission columns {list(submission.columns)} != sample's {list(sample.columns)}")
    if len(submission) != len(sample) or not np.array_equal(
        submission[ID_COLUMN].to_numpy(), sample[ID_COLUMN].to_numpy()
    ):
        raise ValueError("submission rows differ from sample_submission.csv's rows or their order")
    values = submission[list(VOTE_COLUMNS)].to_numpy(dtype=np.float64)
    bad_rows = ~np.isfinite(values).all(axis=1) | (values < 0).any(axis=1) | (values > 1).any(axis=1)
    bad_rows |= np.abs(values.sum(axis=1) - 1.0) > SUM_TOLERANCE
    if bad_rows.any():
        first = int(np.flatnonzero(bad_rows)[0])
        raise ValueError(
            f"{int(bad_rows.sum())} submission row(s) not finite probabilities summing to 1, "
            f"first at row {first}: {values[first].tolist()}"
        )


def write_submission(submission: pd.DataFrame, path: Path) -> Path:
    with atomic_output(path) as tmp:
        submission.to_csv(tmp, index=False)
    return Path(path)
