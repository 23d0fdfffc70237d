"""The competition's metric: Kaggle's KL divergence, from its notebooks
kaggle.com/code/metric/kullback-leibler-divergence and .../kaggle-metric-utilities.

Reproduced exactly, except that it leaves its inputs as they are, compares rows by position
rather than by index label, and refuses frames of different lengths.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.constants import ID_COLUMN, VOTE_COLUMNS


class ParticipantVisibleError(ValueError):
    """A bad solution or submission, reported as Kaggle reports it to the participant."""


def score(
    solution: pd.DataFrame,
    submission: pd.DataFrame,
    row_id_column_name: str,
    epsilon: float = 1e-15,
    micro_average: bool = True,
    sample_weights_column_name: str | None = None,
) -> float:
    """Kaggle's KL divergence of `submission` from `solution`, rows compared by position.

    Per row: sum over the solution's columns of y * log(y / clip(p, epsilon, 1 - epsilon)),
    counting 0 where y == 0. Micro average: the (weighted) mean of the row sums. Macro
    average: the mean over columns of each column's mean. NaN terms are skipped, as pandas
    sums skip them. Every column of both frames except the id (and the weights) must hold
    numbers in [0, 1] whose rows add to 1. The caller aligns the rows; its frames are left as
    they are.

    >>> score(pd.DataFrame({'id': range(4), 'ham': [0, 1, 1, 0], 'spam': [1, 0, 0, 1]}),
    ...       pd.DataFrame({'id': range(4), 'ham': [.1, .9, .8, .35], 'spam': [.9, .1, .2, .65]}),
    ...       row_id_column_name='id')  # doctest: +ELLIPSIS
    0.216161...
    """
    solution = solution.drop(columns=row_id_column_name)
    submission = submission.drop(columns=row_id_column_name)
    sample_weights = None
    if sample_weights_column_name:
        if sample_weights_column_name not in solution.columns:
            raise ParticipantVisibleError(
                f"{sample_weights_column_name} not found in solution columns"
            )
        sample_weights = solution.pop(sample_weights_column_name)
        if not micro_average:
            raise ParticipantVisibleError(
                "Sample weights are only valid if `micro_average` is `True`"
            )
    for column in solution.columns:
        if column not in submission.columns:
            raise ParticipantVisibleError(f"Missing submission column {column}")
    if len(submission) != len(solution):
        raise ParticipantVisibleError(
            f"Submission has {len(submission)} rows, solution has {len(solution)}"
        )
    _verify_valid_probabilities(solution, "solution")
    _verify_valid_probabilities(submission, "submission")
    try:
        return _kl_divergence(solution, submission, epsilon, micro_average, sample_weights)
    except Exception as error:
        if _participant_visible(str(error), solution):
            raise ParticipantVisibleError(str(error)) from error
        raise


def _verify_valid_probabilities(frame: pd.DataFrame, name: str) -> None:
    """kaggle_metric_utilities.verify_valid_probabilities: numbers in [0, 1] adding to 1."""
    if not pd.api.types.is_numeric_dtype(frame.to_numpy()):
        raise ParticipantVisibleError(f"All target values in {name} must be numeric")
    if frame.min().min() < 0:
        raise ParticipantVisibleError(f"All target values in {name} must be at least zero")
    if frame.max().max() > 1:
        raise ParticipantVisibleError(
            f"All target values in {name} must be no greater than one"
        )
    if not np.allclose(frame.sum(axis=1), 1):
        raise ParticipantVisibleError(
            f"Target values in {name} do not add to one within all rows"
        )


def _kl_divergence(
    solution: pd.DataFrame,
    submission: pd.DataFrame,
    epsilon: float,
    micro_average: bool,
    sample_weights: pd.Series | None,
) -> float:
    y = solution.to_numpy(dtype=float)
    p = np.clip(submission[solution.columns].to_numpy(dtype=float), epsilon, 1 - epsilon)
    # log(1) = 0 where y == 0: the scipy rel_entr convention Kaggle follows.
    ratio = np.divide(y, p, out=np.ones_like(y), where=y != 0)
    terms = pd.DataFrame(y * np.log(ratio))
    if micro_average:
        return float(np.average(terms.sum(axis=1), weights=sample_weights))
    return float(np.average(terms.mean()))


def _participant_visible(message: str, solution: pd.DataFrame) -> bool:
    """kaggle_metric_utilities.treat_as_participant_error, for a solution verified numeric."""
    if any(char.isnumeric() for char in message):
        return False
    has_bools = any(pd.api.types.is_bool_dtype(dtype) for dtype in solution.dtypes)
    return not (has_bools and ("true" in message.lower() or "false" in message.lower()))


def score_files(
    solution_csv: Path, submission_csv: Path, row_id_column_name: str = ID_COLUMN
) -> float:
    """`score` of two CSVs holding the same ids, each as many times, both sorted by id.

    The sort is stable, so the rows of a repeated id are matched in file order. The submission
    is scored on the solution's columns; its other columns are ignored.
    """
    solution = _read_with_ids(solution_csv, row_id_column_name)
    submission = _read_with_ids(submission_csv, row_id_column_name)
    _check_same_ids(
        solution[row_id_column_name], submission[row_id_column_name], solution_csv, submission_csv
    )
    submission = submission.loc[:, submission.columns.isin(solution.columns)]
    return score(
        _sorted_by(solution, row_id_column_name),
        _sorted_by(submission, row_id_column_name),
        row_id_column_name,
    )


def kl_divergence(true: np.ndarray, predicted: np.ndarray) -> float:
    """`score` of row-aligned `[rows, 6]` arrays: true vote fractions and predicted probabilities."""
    rows = np.arange(len(true))
    solution = pd.DataFrame(np.asarray(true, dtype=np.float64), columns=list(VOTE_COLUMNS)).assign(row=rows)
    submission = pd.DataFrame(np.asarray(predicted, dtype=np.float64), columns=list(VOTE_COLUMNS)).assign(row=rows)
    return score(solution, submission, row_id_column_name="row")

def _read_with_ids(path: Path, row_id_column_name: str) -> pd.DataFrame:
    frame = pd.read_csv(path)
    if row_id_column_name not in frame.columns:
        raise ValueError(f"{path}: no {row_id_column_name} column")
    return frame


def _check_same_ids(
    expected: pd.Series, actual: pd.Series, solution_csv: Path, submission_csv: Path
) -> None:
    """Same ids, each as many times, or a ValueError naming the submission file and the ids."""
    expected_counts = expected.value_counts(dropna=False)
    actual_counts = actual.value_counts(dropna=False)
    missing = expected_counts.index.difference(actual_counts.index)
    extra = actual_counts.index.difference(expected_counts.index)
    if len(missing) or len(extra):
        raise ValueError(
            f"{submission_csv}: ids differ from {solution_csv}: "
            f"missing {_preview(missing)}; extra {_preview(extra)}"
        )
    if len(actual) != len(expected):
        raise ValueError(
            f"{submission_csv}: {len(actual)} rows, {solution_csv} has {len(expected)}"
        )
    differs = expected_counts != actual_counts[expected_counts.index]
    repeated_differently = expected_counts.index[differs]
    if len(repeated_differently):
        raise ValueError(
            f"{submission_csv}: ids repeated a different number of times than in {solution_csv}: "
            f"{_preview(repeated_differently)}"
        )


def _preview(ids: pd.Index, limit: int = 10) -> str:
    """How many ids and the first few, e.g. `3 (4, 7, 9)`, or `none`."""
    if not len(ids):
        return "none"
    shown = [str(value) for value in sorted(ids)[:limit]]
    if len(ids) > limit:
        shown.append("...")
    return f"{len(ids)} ({', '.join(shown)})"


def _sorted_by(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    return frame.sort_values(column, kind="stable").reset_index(drop=True)
