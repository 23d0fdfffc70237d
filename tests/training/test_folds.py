import numpy as np
import pandas as pd
import pytest

from hms_offline.training.folds import fold_of_rows, make_folds, read_folds, write_folds
from hms_offline.training.labels import consensus_index, read_train_labels


@pytest.fixture(scope="module")
def real_labels(hms_sample) -> pd.DataFrame:
    return read_train_labels(hms_sample / "train_labels_subset.csv")


def test_no_patient_is_in_two_folds(real_labels):
    folds = make_folds(real_labels, n_splits=5, seed=42)
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    assert folds.groupby("patient_id")["fold"].nunique().max() == 1
    assert set(folds["eeg_id"]) == set(real_labels["eeg_id"])
    rows_fold = fold_of_rows(real_labels, folds, "test")
    assert real_labels.assign(fold=rows_fold).groupby("patient_id")["fold"].nunique().max() == 1


def test_folds_are_stratified_by_consensus(real_labels):
    folds = make_folds(real_labels, n_splits=5, seed=42)
    eegs = real_labels.drop_duplicates("eeg_id").merge(folds[["eeg_id", "fold"]], on="eeg_id")
    shares = pd.crosstab(eegs["fold"], consensus_index(eegs), normalize="index")
    overall = np.bincount(consensus_index(eegs), minlength=6) / len(eegs)
    assert np.abs(shares.to_numpy() - overall).max() < 0.1


def test_folds_are_reproducible_and_round_trip(real_labels, tmp_path):
    folds = make_folds(real_labels, n_splits=5, seed=42)
    pd.testing.assert_frame_equal(folds, make_folds(real_labels, n_splits=5, seed=42))
    assert not folds["fold"].equals(make_folds(real_labels, n_splits=5, seed=1)["fold"])
    path = write_folds(folds, tmp_path / "folds.csv")
    pd.testing.assert_frame_equal(read_folds(path), folds)


def test_unknown_eeg_ids_and_split_patients_are_refused(real_labels, tmp_path):
    folds = make_folds(real_labels, n_splits=5, seed=42)
    with pytest.raises(ValueError, match=r"eeg_id\(s\) of train.csv have no fold"):
        fold_of_rows(real_labels, folds.iloc[1:], "folds.csv")
    broken = folds.copy()
    patient = broken["patient_id"].value_counts().index[0]  # a patient with several EEGs
    broken.loc[broken.index[broken["patient_id"] == patient][0], "fold"] += 1
    broken["fold"] %= 5
    with pytest.raises(ValueError, match=f"patients in more than one fold: {patient}"):
        read_folds(write_folds(broken, tmp_path / "folds.csv"))


def test_too_few_patients_for_the_folds(real_labels):
    few = real_labels[real_labels["patient_id"].isin(real_labels["patient_id"].unique()[:3])]
    with pytest.raises(ValueError, match="5 folds need at least 5 patients"):
        make_folds(few, n_splits=5)


def test_folds_over_all_rows_keep_each_patient_and_eeg_in_one_fold(real_labels):
    folds = make_folds(real_labels, n_splits=5, seed=42, unit="rows")
    assert set(folds["eeg_id"]) == set(real_labels["eeg_id"]) and folds["eeg_id"].is_unique
    assert folds.groupby("patient_id")["fold"].nunique().max() == 1
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    rows_fold = fold_of_rows(real_labels, folds, "test")
    counts = np.bincount(rows_fold)
    assert counts.max() - counts.min() <= 0.1 * counts.mean()  # balanced in rows, not in EEGs
    assert not np.array_equal(rows_fold, fold_of_rows(real_labels, make_folds(real_labels, 5, 42), "test"))
    with pytest.raises(ValueError, match="unknown fold unit"):
        make_folds(real_labels, unit="spectrogram")
