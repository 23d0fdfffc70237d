import doctest
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hms_offline import metric
from hms_offline.metric import ParticipantVisibleError, score, score_files

REPO_ROOT = Path(__file__).resolve().parents[1]
TIGHT = 1e-6


def ham_spam() -> tuple[pd.DataFrame, pd.DataFrame]:
    solution = pd.DataFrame({"id": range(4), "ham": [0, 1, 1, 0], "spam": [1, 0, 0, 1]})
    submission = pd.DataFrame(
        {"id": range(4), "ham": [0.1, 0.9, 0.8, 0.35], "spam": [0.9, 0.1, 0.2, 0.65]}
    )
    return solution, submission


def three_class() -> tuple[pd.DataFrame, pd.DataFrame]:
    solution = pd.DataFrame(
        {"id": range(3), "ham": [0, 0.5, 0.5], "spam": [0.1, 0.5, 0.5], "other": [0.9, 0, 0]}
    )
    submission = pd.DataFrame(
        {"id": range(3), "ham": [0.2, 0.3, 0.5], "spam": [0.1, 0.5, 0.5], "other": [0.7, 0.2, 0]}
    )
    return solution, submission


def two_rows(**extra_solution_columns) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Row 0 costs log 2 (all in column a), row 1 costs 0."""
    solution = pd.DataFrame(
        {"id": [0, 1], "a": [1.0, 0.5], "b": [0.0, 0.5], **extra_solution_columns}
    )
    submission = pd.DataFrame({"id": [0, 1], "a": [0.5, 0.5], "b": [0.5, 0.5]})
    return solution, submission


# --- Kaggle's public examples -------------------------------------------------------------


def test_ham_spam_example():
    value = score(*ham_spam(), row_id_column_name="id")
    assert value == pytest.approx(0.216161, abs=TIGHT)
    assert f"{value:.6f}".startswith("0.21616")


def test_identical_frames_score_zero():
    solution, _ = three_class()
    assert score(solution, solution.copy(), "id") == 0.0


def test_three_class_example():
    value = score(*three_class(), "id")
    assert value == pytest.approx(0.160531, abs=TIGHT)
    assert str(value).startswith("0.160531")


def test_docstring_example_runs():
    assert doctest.testmod(metric).failed == 0


def test_returns_a_python_float():
    assert type(score(*ham_spam(), "id")) is float


# --- the caller's frames ----------------------------------------------------------------


@pytest.mark.parametrize(
    "frames, kwargs",
    [
        (ham_spam(), {}),  # int solution columns: Kaggle's casts them to float in place
        (three_class(), {"micro_average": False}),
        (two_rows(w=[3.0, 1.0]), {"sample_weights_column_name": "w"}),
    ],
)
def test_caller_frames_unchanged(frames, kwargs):
    solution, submission = frames
    solution_before, submission_before = solution.copy(), submission.copy()
    score(solution, submission, "id", **kwargs)
    assert solution.equals(solution_before)
    assert submission.equals(submission_before)


# --- the arithmetic -----------------------------------------------------------------------


def test_zero_prediction_is_clipped_to_epsilon():
    solution = pd.DataFrame({"id": [0], "a": [1.0], "b": [0.0]})
    submission = pd.DataFrame({"id": [0], "a": [0.0], "b": [1.0]})
    expected = 1.0 * math.log(1.0 / 1e-15)  # 34.538776...
    assert score(solution, submission, "id") == pytest.approx(expected, rel=1e-12)


def test_clipping_follows_epsilon_both_ends():
    solution = pd.DataFrame({"id": [0], "a": [0.5], "b": [0.5]})
    submission = pd.DataFrame({"id": [0], "a": [0.0], "b": [1.0]})
    eps = 1e-3
    expected = 0.5 * math.log(0.5 / eps) + 0.5 * math.log(0.5 / (1 - eps))
    assert score(solution, submission, "id", epsilon=eps) == pytest.approx(expected, rel=1e-12)


def test_zero_targets_contribute_nothing():
    solution = pd.DataFrame({"id": [0], "a": [1.0], "b": [0.0], "c": [0.0]})
    submission = pd.DataFrame({"id": [0], "a": [0.5], "b": [0.5], "c": [0.0]})
    assert score(solution, submission, "id") == pytest.approx(math.log(2), rel=1e-12)


def test_micro_is_mean_of_row_sums_macro_is_mean_of_column_means():
    solution, submission = two_rows()
    # Row sums: [log 2, 0]; column means: a = log 2 / 2, b = 0.
    assert score(solution, submission, "id") == pytest.approx(math.log(2) / 2, rel=1e-12)
    assert score(solution, submission, "id", micro_average=False) == pytest.approx(
        math.log(2) / 4, rel=1e-12
    )


def test_sample_weights_weight_the_row_sums():
    # Weights are taken out of the solution before its checks, so they need not be probabilities.
    solution, submission = two_rows(w=[3.0, 1.0])
    value = score(solution, submission, "id", sample_weights_column_name="w")
    assert value == pytest.approx((3 * math.log(2) + 1 * 0.0) / 4, rel=1e-12)


def test_rows_compared_by_position_not_by_id():
    solution, submission = two_rows()
    reversed_ids = submission.assign(id=[1, 0])
    assert score(solution, reversed_ids, "id") == score(solution, submission, "id")


def test_extra_submission_columns_are_checked_but_not_scored():
    solution, submission = two_rows()
    assert score(solution, submission.assign(extra=0.0), "id") == pytest.approx(math.log(2) / 2)
    with pytest.raises(ParticipantVisibleError, match="do not add to one"):
        score(solution, submission.assign(extra=0.1), "id")


def test_sums_within_allclose_tolerance_pass():
    solution, submission = two_rows()
    submission.loc[0, "a"] += 1e-9
    assert score(solution, submission, "id") == pytest.approx(math.log(2) / 2, abs=TIGHT)


def test_bool_solution_is_accepted():
    solution = pd.DataFrame({"id": [0, 1], "a": [True, False], "b": [False, True]})
    submission = pd.DataFrame({"id": [0, 1], "a": [0.5, 0.25], "b": [0.5, 0.75]})
    expected = (math.log(2) + math.log(1 / 0.75)) / 2
    assert score(solution, submission, "id") == pytest.approx(expected, rel=1e-12)


# --- the checks and their messages ----------------------------------------------------------


def raises(message: str):
    return pytest.raises(ParticipantVisibleError, match=f"^{re.escape(message)}$")


def test_participant_visible_error_is_a_value_error():
    assert issubclass(ParticipantVisibleError, ValueError)


def test_missing_submission_column():
    solution, submission = ham_spam()
    with raises("Missing submission column spam"):
        score(solution, submission.drop(columns="spam"), "id")


@pytest.mark.parametrize("name", ["solution", "submission"])
def test_non_numeric_values(name):
    frames = dict(zip(["solution", "submission"], two_rows()))
    frames[name] = frames[name].assign(b=["x", "y"])
    with raises(f"All target values in {name} must be numeric"):
        score(frames["solution"], frames["submission"], "id")


@pytest.mark.parametrize("name", ["solution", "submission"])
def test_negative_values(name):
    frames = dict(zip(["solution", "submission"], two_rows()))
    frames[name] = frames[name].assign(a=[1.5, 0.5], b=[-0.5, 0.5])
    with raises(f"All target values in {name} must be at least zero"):
        score(frames["solution"], frames["submission"], "id")


@pytest.mark.parametrize("name", ["solution", "submission"])
def test_values_above_one(name):
    frames = dict(zip(["solution", "submission"], two_rows()))
    frames[name] = frames[name].assign(a=[1.5, 0.5], b=[0.0, 0.5])
    with raises(f"All target values in {name} must be no greater than one"):
        score(frames["solution"], frames["submission"], "id")


@pytest.mark.parametrize("name", ["solution", "submission"])
def test_rows_not_adding_to_one(name):
    frames = dict(zip(["solution", "submission"], two_rows()))
    frames[name] = frames[name].assign(b=[0.0, 0.4])
    with raises(f"Target values in {name} do not add to one within all rows"):
        score(frames["solution"], frames["submission"], "id")


def test_sample_weights_column_missing():
    with raises("w not found in solution columns"):
        score(*two_rows(), "id", sample_weights_column_name="w")


def test_sample_weights_need_micro_average():
    solution, submission = two_rows(w=[1.0, 1.0])
    with raises("Sample weights are only valid if `micro_average` is `True`"):
        score(solution, submission, "id", micro_average=False, sample_weights_column_name="w")


def test_row_counts_must_match():
    solution, submission = two_rows()
    with raises("Submission has 1 rows, solution has 2"):
        score(solution, submission.iloc[:1], "id")


def test_missing_id_column_is_a_key_error():
    solution, submission = two_rows()
    with pytest.raises(KeyError):
        score(solution, submission.drop(columns="id"), "id")


def test_metric_errors_without_digits_become_participant_visible():
    # Kaggle's safe_call_score: an error whose message holds no digits is shown to the participant.
    solution, submission = two_rows(w=[0.0, 0.0])
    with raises("Weights sum to zero, can't be normalized") as caught:
        score(solution, submission, "id", sample_weights_column_name="w")
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_metric_errors_with_digits_are_raised_as_they_are():
    solution, submission = two_rows(w=pd.to_datetime(["2024-01-01", "2024-01-02"]))
    with pytest.raises(TypeError) as caught:
        score(solution, submission, "id", sample_weights_column_name="w")
    assert not isinstance(caught.value, ParticipantVisibleError)


# --- score_files ----------------------------------------------------------------------------

CLASSES = ["seizure_vote", "lpd_vote", "other_vote"]


def competition_frames(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [30, 10, 20, 10, 40, 20, 50]  # repeated eeg_ids, as in one re-packaging
    solution = pd.DataFrame(rng.dirichlet(np.ones(3), len(ids)), columns=CLASSES)
    submission = pd.DataFrame(rng.dirichlet(np.ones(3), len(ids)), columns=CLASSES)
    solution.insert(0, "eeg_id", ids)
    submission.insert(0, "eeg_id", ids)
    return solution, submission


def write(tmp_path: Path, name: str, frame: pd.DataFrame, **to_csv) -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False, **to_csv)
    return path


def test_score_files_matches_score_on_aligned_rows(tmp_path):
    solution, submission = competition_frames()
    expected = score(solution, submission, "eeg_id")
    solution_csv = write(tmp_path, "solution.csv", solution)
    submission_csv = write(tmp_path, "submission.csv", submission)
    assert score_files(solution_csv, submission_csv) == pytest.approx(expected, abs=1e-12)


def test_score_files_ignores_submission_row_order(tmp_path):
    solution, submission = competition_frames()
    solution_csv = write(tmp_path, "solution.csv", solution)
    in_order = score_files(solution_csv, write(tmp_path, "sorted.csv", submission))
    # Shuffle across ids but keep the repeats of each id in their order, as a stable sort does.
    shuffled = submission.iloc[[6, 2, 1, 4, 5, 3, 0]]
    assert list(shuffled.index[shuffled["eeg_id"] == 10]) == [1, 3]
    assert list(shuffled.index[shuffled["eeg_id"] == 20]) == [2, 5]
    shuffled_csv = write(tmp_path, "shuffled.csv", shuffled)
    assert score_files(solution_csv, shuffled_csv) == pytest.approx(in_order, abs=1e-12)


def test_score_files_matches_repeated_ids_by_their_order(tmp_path):
    solution, submission = competition_frames()
    swapped = submission.iloc[[0, 3, 2, 1, 4, 5, 6]]  # the two rows of eeg_id 10 swapped
    expected = score(solution, swapped.reset_index(drop=True), "eeg_id")
    solution_csv = write(tmp_path, "solution.csv", solution)
    swapped_csv = write(tmp_path, "swapped.csv", swapped)
    assert score_files(solution_csv, swapped_csv) == pytest.approx(expected, abs=1e-12)
    assert expected != pytest.approx(score(solution, submission, "eeg_id"), abs=1e-6)


def test_score_files_scores_only_the_solution_columns(tmp_path):
    solution, submission = competition_frames()
    solution_csv = write(tmp_path, "solution.csv", solution)
    plain = score_files(solution_csv, write(tmp_path, "plain.csv", submission))
    with_index_column = write(tmp_path, "indexed.csv", submission, index_label="row")
    assert score_files(solution_csv, with_index_column) == pytest.approx(plain, abs=1e-12)


def test_score_files_names_missing_and_extra_ids(tmp_path):
    solution, submission = competition_frames()
    solution_csv = write(tmp_path, "solution.csv", solution)
    wrong = submission.assign(eeg_id=submission["eeg_id"].replace({40: 41, 50: 51}))
    wrong_csv = write(tmp_path, "wrong.csv", wrong)
    with pytest.raises(ValueError, match=r"wrong\.csv.*missing 2 \(40, 50\); extra 2 \(41, 51\)"):
        score_files(solution_csv, wrong_csv)


def test_score_files_names_only_missing_ids(tmp_path):
    solution, submission = competition_frames()
    solution_csv = write(tmp_path, "solution.csv", solution)
    short_csv = write(tmp_path, "short.csv", submission[submission["eeg_id"] != 30])
    with pytest.raises(ValueError, match=r"short\.csv.*missing 1 \(30\); extra none"):
        score_files(solution_csv, short_csv)


def test_score_files_needs_the_same_row_count(tmp_path):
    solution, submission = competition_frames()
    solution_csv = write(tmp_path, "solution.csv", solution)
    deduplicated_csv = write(tmp_path, "dedup.csv", submission.drop_duplicates("eeg_id"))
    with pytest.raises(ValueError, match=r"dedup\.csv: 5 rows, .*solution\.csv has 7"):
        score_files(solution_csv, deduplicated_csv)


def test_score_files_needs_the_same_repeats(tmp_path):
    solution, submission = competition_frames()
    solution_csv = write(tmp_path, "solution.csv", solution)
    # Same ids, same row count, but 30 twice and 20 once.
    skewed = submission.assign(eeg_id=[30, 10, 20, 10, 40, 30, 50])
    skewed_csv = write(tmp_path, "skewed.csv", skewed)
    with pytest.raises(ValueError, match=r"skewed\.csv: ids repeated .*: 2 \(20, 30\)"):
        score_files(solution_csv, skewed_csv)


def test_score_files_needs_the_id_column(tmp_path):
    solution, submission = competition_frames()
    solution_csv = write(tmp_path, "solution.csv", solution)
    no_ids_csv = write(tmp_path, "no_ids.csv", submission.rename(columns={"eeg_id": "id"}))
    with pytest.raises(ValueError, match=r"no_ids\.csv: no eeg_id column"):
        score_files(solution_csv, no_ids_csv)


def test_score_files_reports_bad_probabilities(tmp_path):
    solution, submission = competition_frames()
    solution_csv = write(tmp_path, "solution.csv", solution)
    bad = submission.assign(other_vote=submission["other_vote"] + 0.1)
    bad_csv = write(tmp_path, "bad.csv", bad)
    with pytest.raises(ValueError, match="Target values in submission do not add to one"):
        score_files(solution_csv, bad_csv)


# --- the command line ---------------------------------------------------------------------


def run_score(solution_csv: Path, submission_csv: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hms_offline", "score",
         "--solution", str(solution_csv), "--submission", str(submission_csv)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )


def test_cli_prints_the_score(tmp_path):
    solution, submission = ham_spam()
    solution_csv = write(tmp_path, "solution.csv", solution.rename(columns={"id": "eeg_id"}))
    submission_csv = write(tmp_path, "submission.csv", submission.rename(columns={"id": "eeg_id"}))
    result = run_score(solution_csv, submission_csv)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "0.216162\n"


def test_cli_exits_2_on_a_bad_submission(tmp_path):
    solution, submission = ham_spam()
    solution_csv = write(tmp_path, "solution.csv", solution.rename(columns={"id": "eeg_id"}))
    bad = submission.rename(columns={"id": "eeg_id"}).drop(columns="spam")
    result = run_score(solution_csv, write(tmp_path, "bad.csv", bad))
    assert result.returncode == 2
    assert "Missing submission column spam" in result.stderr
    assert result.stdout == ""
