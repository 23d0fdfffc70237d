import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hms_offline.constants import ID_COLUMN, VOTE_COLUMNS
from hms_offline.metric import score
from hms_offline.serving.submission import (
    build_submission,
    check_submission,
    read_sample_submission,
    read_test_rows,
    resolve_output,
    unpredicted_rows,
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


def test_a_non_finite_prediction_does_not_count_and_its_row_gets_the_fallback():
    with pytest.raises(ValueError, match="no prediction for 1 eeg_id"):
        build_submission(sample_for([1]), np.array([1]), np.array([[np.nan, 1, 0, 0, 0, 0]]))
    prior = np.array([0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    # eeg 7: one of its two test rows is NaN, the other counts alone; eeg 8: only NaN; eeg 9: no test row
    probabilities = np.array([one_hot(0), [np.inf] * 6, [np.nan] * 6])
    submission = build_submission(sample_for([7, 8, 9]), np.array([7, 7, 8]), probabilities, prior)
    np.testing.assert_allclose(submission[list(VOTE_COLUMNS)].to_numpy(), [one_hot(0), prior, prior])
    assert unpredicted_rows(sample_for([7, 8, 9]), np.array([7, 7, 8]), probabilities).tolist() == [1, 2]


def test_test_csv_cells_are_read_as_integer_ids_and_each_bad_cell_is_named_by_line(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("spectrogram_id,eeg_id,patient_id\n"
                    "1132726137,11,5\n"  # line 2
                    ",12,5\n"  # line 3: blank spectrogram_id
                    "33,,5\n"  # line 4: blank eeg_id
                    "44.0,x1,5\n"  # line 5: spectrogram id written as a float is fine; eeg_id is not an id
                    "55,15.0,5\n")
    test = read_test_rows(path)
    assert test.rows["spectrogram_id"].tolist() == [1132726137, 55]
    assert test.rows["spectrogram_id"].dtype == np.int64 and test.rows[ID_COLUMN].tolist() == [11, 15]
    assert test.rows["line"].tolist() == [2, 6]
    assert [(row.line, row.eeg_id, row.spectrogram_id) for row in test.set_aside] == [(3, 12, None), (4, None, 33), (5, None, 44)]
    assert test.set_aside[0].reason == "spectrogram_id cell blank (test.csv line 3)"
    assert test.set_aside[2].reason == "eeg_id cell 'x1' is not an integer id (test.csv line 5)"


def test_a_header_only_or_unparsable_test_csv_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("spectrogram_id,eeg_id,patient_id\n")
    with pytest.raises(ValueError, match=f"{path}: test.csv holds no row"):
        read_test_rows(path)
    path.write_bytes(b"spectrogram_id,eeg_id\n1,2\n3,4,5,6,7\n")
    with pytest.raises(ValueError, match=f"{path}: cannot be read as a CSV file"):
        read_test_rows(path)
    path.write_bytes(b"\xff\xfe\x00garbage\n\x00\x01")
    with pytest.raises(ValueError, match=str(path)):
        read_test_rows(path)


def test_a_bad_sample_id_keeps_its_row_and_text(tmp_path):
    path = tmp_path / "sample_submission.csv"
    sample_for([1, 2]).to_csv(path, index=False)
    path.write_text(path.read_text().replace("\n2,", "\nabc,"))
    sample = read_sample_submission(path)
    assert sample[ID_COLUMN].tolist() == [1, "abc"]
    prior = np.full(6, 1 / 6)
    submission = build_submission(sample, np.array([1]), np.array([one_hot(2)]), prior)
    assert submission[ID_COLUMN].tolist() == [1, "abc"]
    np.testing.assert_allclose(submission[list(VOTE_COLUMNS)].to_numpy(), [one_hot(2), prior])


def test_the_output_path_is_resolved_and_checked_before_any_work(tmp_path):
    assert resolve_output(tmp_path) == tmp_path / "submission.csv"
    assert resolve_output(tmp_path / "new" / "deeper" / "s.csv") == tmp_path / "new" / "deeper" / "s.csv"
    assert (tmp_path / "new" / "deeper").is_dir() and list((tmp_path / "new" / "deeper").iterdir()) == []
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match=f"{tmp_path / 'a_file'} is a file, not a folder"):
        resolve_output(tmp_path / "a_file" / "submission.csv")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        if os.access(read_only, os.W_OK):  # root ignores permission bits: an unwritable path of another kind
            target = Path("/proc/self/submission.csv")
        else:
            target = read_only / "submission.csv"
        with pytest.raises(ValueError, match=f"cannot write the submission to {target}"):
            resolve_output(target)
    finally:
        read_only.chmod(0o755)


submission_outputs = arrays(
    np.float64, st.tuples(st.integers(1, 12), st.just(6)),
    elements=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(0.0)),
)


@settings(max_examples=200, deadline=None)
@given(outputs=submission_outputs, data=st.data())
def test_the_writer_gives_a_valid_submission_for_any_model_output(outputs, data, tmp_path_factory):
    """NaN, inf, zeros, negatives, huge values: the rows Kaggle scores are always valid."""
    rows = len(outputs)
    eeg_ids = np.array(data.draw(st.lists(st.integers(1, 5), min_size=rows, max_size=rows)))
    sample = sample_for(sorted(set(eeg_ids.tolist()) | {99}))
    with np.errstate(over="ignore"):  # rows of huge values sum to inf: they cannot be normalised either
        sums = outputs.sum(axis=1)
    valid = np.isfinite(outputs).all(axis=1) & (outputs >= 0).all(axis=1) & (sums > 0) & np.isfinite(sums)
    # what the ensemble hands over: rows that are probabilities, NaN where it could not predict
    probabilities = np.where(valid[:, None], np.abs(outputs), np.nan)
    probabilities = probabilities / np.where(valid, sums, 1)[:, None]
    submission = build_submission(sample, eeg_ids, probabilities, np.full(6, 1 / 6))
    path = write_submission(submission, tmp_path_factory.mktemp("hypothesis") / "submission.csv")
    written = pd.read_csv(path)
    check_submission(written, sample)
    assert np.isfinite(score(sample, written, row_id_column_name=ID_COLUMN))  # Kaggle's metric accepts it


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
