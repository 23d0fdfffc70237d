"""submission.csv: exactly the rows of sample_submission.csv, in its order, with its columns.

The competition has one row per `eeg_id`; re-packagings of it (MLE-bench's) repeat an
`eeg_id` once per test row and every one of those rows stays. The prediction for an
`eeg_id` is the mean over the test rows that carry it and could be predicted; an `eeg_id`
with none (no test row, or only rows that could not be predicted) gets the fallback
prediction. Every row is checked to be finite and to sum to 1 before the file is written,
atomically, to a path checked writable before any expensive work.
"""

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.atomic import atomic_output
from hms_offline.constants import ID_COLUMN, SUBMISSION_COLUMNS, VOTE_COLUMNS
from hms_offline.tables import csv_line, parse_ids, read_csv_with_columns

SUM_TOLERANCE = 1e-6
SUBMISSION_NAME = "submission.csv"
REQUIRED_TEST_COLUMNS = ("spectrogram_id", ID_COLUMN)  # patient_id is not needed to predict


@dataclass(frozen=True)
class SetAsideRow:
    """A test.csv row that cannot be used, and why."""

    line: int
    eeg_id: int | None
    spectrogram_id: int | None
    reason: str


@dataclass
class TestRows:
    """test.csv's usable rows (integer `spectrogram_id`, `eeg_id`, file `line`) and the rest."""

    rows: pd.DataFrame
    set_aside: list[SetAsideRow]


def read_test_rows(path: Path) -> TestRows:
    """test.csv; a row whose id cell is blank or not an integer is set aside, named by line.
    A file with no data row at all is an error: there is nothing to predict."""
    frame = read_csv_with_columns(path, REQUIRED_TEST_COLUMNS, "test.csv", text_columns=REQUIRED_TEST_COLUMNS)
    if frame.empty:
        raise ValueError(f"{path}: test.csv holds no row (only its header): nothing to predict")
    spectrogram_ids, bad_spectrogram = parse_ids(frame["spectrogram_id"])
    eeg_ids, bad_eeg = parse_ids(frame[ID_COLUMN])
    set_aside = [
        SetAsideRow(
            line=csv_line(position),
            eeg_id=_or_none(eeg_ids.iloc[position]),
            spectrogram_id=_or_none(spectrogram_ids.iloc[position]),
            reason="; ".join(
                f"{column} cell {problems[position]}"
                for column, problems in (("spectrogram_id", bad_spectrogram), (ID_COLUMN, bad_eeg))
                if position in problems
            ) + f" (test.csv line {csv_line(position)})",
        )
        for position in sorted(set(bad_spectrogram) | set(bad_eeg))
    ]
    usable = eeg_ids.notna() & spectrogram_ids.notna()
    rows = pd.DataFrame({
        "spectrogram_id": spectrogram_ids[usable].astype("int64"),
        ID_COLUMN: eeg_ids[usable].astype("int64"),
        "line": [csv_line(position) for position in np.flatnonzero(usable.to_numpy())],
    }).reset_index(drop=True)
    return TestRows(rows=rows, set_aside=set_aside)


def _or_none(value):
    return None if pd.isna(value) else int(value)


def read_sample_submission(path: Path) -> pd.DataFrame:
    """sample_submission.csv with exactly the submission's columns; `eeg_id` kept as its
    integer where the cell is one, else as its text (the row stays, on the fallback)."""
    frame = read_csv_with_columns(path, SUBMISSION_COLUMNS, "sample_submission.csv", text_columns=(ID_COLUMN,))
    expected = list(SUBMISSION_COLUMNS)
    if list(frame.columns) != expected:
        raise ValueError(f"{path}: columns {list(frame.columns)}, expected exactly {expected}")
    ids, problems = parse_ids(frame[ID_COLUMN])
    if not problems:
        frame[ID_COLUMN] = ids.astype("int64")
        return frame
    frame[ID_COLUMN] = [
        frame[ID_COLUMN].iloc[position] if position in problems else int(ids.iloc[position])
        for position in range(len(frame))
    ]
    return frame


def mean_by_eeg_id(eeg_ids: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """One row per eeg_id: the mean over its test rows with a finite prediction."""
    frame = pd.DataFrame(np.asarray(probabilities, dtype=np.float64), columns=list(VOTE_COLUMNS))
    frame[ID_COLUMN] = np.asarray(eeg_ids)
    predicted = frame[np.isfinite(frame[list(VOTE_COLUMNS)].to_numpy()).all(axis=1)]
    return predicted.groupby(ID_COLUMN, sort=False)[list(VOTE_COLUMNS)].mean()


def build_submission(
    sample: pd.DataFrame, eeg_ids: np.ndarray, probabilities: np.ndarray, fallback: np.ndarray | None = None
) -> pd.DataFrame:
    """The sample's rows and columns, filled with per-eeg_id means, each row renormalised
    to 1. A test row with a non-finite prediction does not count; a sample row left with no
    prediction gets `fallback` (without one, that is an error)."""
    per_eeg = mean_by_eeg_id(eeg_ids, probabilities)
    sample_ids = sample[ID_COLUMN].to_numpy(dtype=object)
    unpredicted = ~pd.Index(sample_ids).isin(per_eeg.index)
    if unpredicted.any() and fallback is None:
        missing = list(dict.fromkeys(sample_ids[unpredicted]))
        raise ValueError(f"no prediction for {len(missing)} eeg_id(s) of sample_submission.csv, e.g. {missing[:5]}")
    values = np.empty((len(sample), len(VOTE_COLUMNS)), dtype=np.float64)
    values[~unpredicted] = per_eeg.loc[sample_ids[~unpredicted]].to_numpy()
    if unpredicted.any():
        values[unpredicted] = np.asarray(fallback, dtype=np.float64)
    values = values / values.sum(axis=1, keepdims=True)
    submission = pd.DataFrame(values, columns=list(VOTE_COLUMNS))
    submission.insert(0, ID_COLUMN, sample[ID_COLUMN].to_numpy())
    check_submission(submission, sample)
    return submission


def unpredicted_rows(sample: pd.DataFrame, eeg_ids: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Positions of the sample's rows that `build_submission` fills with the fallback."""
    predicted = mean_by_eeg_id(eeg_ids, probabilities).index
    return np.flatnonzero(~pd.Index(sample[ID_COLUMN].to_numpy(dtype=object)).isin(predicted))


def check_submission(submission: pd.DataFrame, sample: pd.DataFrame) -> None:
    """What Kaggle checks before scoring: rows, ids, columns, finite values summing to 1."""
    if list(submission.columns) != list(sample.columns):
        raise ValueError(f"submission columns {list(submission.columns)} != sample's {list(sample.columns)}")
    if len(submission) != len(sample) or not np.array_equal(
        submission[ID_COLUMN].to_numpy(dtype=object), sample[ID_COLUMN].to_numpy(dtype=object)
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


def resolve_output(path: Path) -> Path:
    """The file the submission goes to, checked writable now, before any expensive work:
    an existing folder means `<folder>/submission.csv`; the folder is created if missing."""
    path = Path(path)
    if path.is_dir():
        path = path / SUBMISSION_NAME
    folder = path.parent
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"cannot write the submission to {path}: {blocking} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise ValueError(f"cannot write the submission to {path}: {error.strerror or error}") from error
    return path


def write_submission(submission: pd.DataFrame, path: Path) -> Path:
    with atomic_output(path) as tmp:
        submission.to_csv(tmp, index=False)
    return Path(path)
