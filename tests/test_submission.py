import numpy as np
import pandas as pd
import pytest

from hms_offline.constants import ID_COLUMN, VOTE_COLUMNS
from hms_offline.submission import (
    build_submission,
    check_submission,
    read_sample_submission,
    write_submission,
)


def sample_for(eeg_ids) -> pd.DataFrame:
    frame = pd.DataFrame({ID_COLUMN: eeg_ids})
    for column in VOTE_COLUMNS:
        frame[column] = 1 / 6
    return frame


def one_hot(index: int, scale: float = 1.0) -> list[float]:
    row = [0.0] * 6
    row[index] = scale
    return row


def test_rows_columns_and_order_are_the_samples():
    sample = sample_for([30, 10, 20])
    probabilities = np.array([one_hot(0), one_hot(1), one_hot(2)])  # test rows for 10, 20, 30
    submission = build_submission(sample, np.array([10, 20, 30]), probabilities)
    assert list(submission.columns) == [ID_COLUMN, *VOTE_COLUMNS]
    assert submission[ID_COLUMN].tolist() == [30, 10, 20]
    np.testing.assert_array_equal(submission[list(VOTE_COLUMNS)].to_numpy(), [one_hot(2), one_hot(0), one_hot(1)])


def test_an_eeg_id_with_several_test_rows_gets_their_mean_and_repeated_sample_rows_stay():
    sample = sample_for([7, 7, 8])  # MLE-bench style: one row per test row
    probabilities = np.array([one_hot(0), one_hot(1), one_hot(5)])
    submission = build_submission(sample, np.array([7, 7, 8]), probabilities)
    assert submission[ID_COLUMN].tolist() == [7, 7, 8]
    expected_7 = [0.5, 0.5, 0, 0, 0, 0]
    np.testing.assert_allclose(submission.iloc[0, 1:].to_numpy(dtype=float), expected_7)
    np.testing.assert_allclose(submission.iloc[1, 1:].to_numpy(dtype=float), expected_7)
    np.testing.assert_allclose(submission.iloc[2, 1:].to_numpy(dtype=float), one_hot(5))


def test_rows_are_renormalised_to_sum_to_one():
    sample = sample_for([1])
    submission = build_submission(sample, np.array([1]), np.array([[2.0, 2.0, 0, 0, 0, 0]]))
    np.testing.assert_allclose(submission.iloc[0, 1:].to_numpy(dtype=float), [0.5, 0.5, 0, 0, 0, 0])


def test_an_eeg_id_without_prediction_is_refused():
    with pytest.raises(ValueError, match=r"no prediction for 1 eeg_id.*\[99\]"):
        build_submission(sample_for([1, 99]), np.array([1]), np.array([one_hot(0)]))


def test_non_finite_predictions_are_refused():
    with pytest.raises(ValueError, match="not finite probabilities"):
        build_submission(sample_for([1]), np.array([1]), np.array([[np.nan, 1, 0, 0, 0, 0]]))


def test_check_submission_refuses_wrong_columns_and_rows():
    sample = sample_for([1, 2])
    with pytest.raises(ValueError, match="columns"):
        check_submission(sample.drop(columns=["other_vote"]), sample)
    with pytest.raises(ValueError, match="rows"):
        check_submission(sample.iloc[::-1].reset_index(drop=True), sample)
    bad = sample.copy()
    bad.loc[1, "seizure_vote"] = 0.5
    with pytest.raises(ValueError, match="first at row 1"):
        check_submission(bad, sample)


def test_read_sample_submission_names_the_missing_column(tmp_path):
    path = tmp_path / "sample_submission.csv"
    sample_for([1]).drop(columns=["lpd_vote"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"sample_submission.csv: missing column\(s\) 'lpd_vote'"):
        read_sample_submission(path)


def test_write_submission_round_trips_and_leaves_no_temporary_file(tmp_path):
    sample = sample_for([5, 6])
    submission = build_submission(sample, np.array([6, 5]), np.array([one_hot(3), one_hot(4)]))
    path = write_submission(submission, tmp_path / "submission.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]
    pd.testing.assert_frame_equal(pd.read_csv(path), submission)
