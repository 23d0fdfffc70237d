import numpy as np
import pandas as pd
import pytest

from hms_offline.constants import CONSENSUS_NAMES, VOTE_COLUMNS
from hms_offline.training.labels import (
    EegRandomWindow,
    SpectrogramFirst,
    consensus_one_hot,
    epoch_stream,
    first_row_per_eeg,
    make_sampler,
    prior,
    read_train_labels,
    training_targets,
    validation_positions,
    vote_fractions,
)


def labels_frame() -> pd.DataFrame:
    """Three EEGs (3, 1 and 2 labelled rows) on two spectrograms."""
    votes = [[3, 0, 0, 0, 0, 1], [0, 2, 0, 0, 0, 0], [1, 1, 1, 0, 0, 1], [0, 0, 0, 5, 5, 2], [0, 0, 0, 0, 0, 4], [0, 0, 14, 0, 0, 0]]
    frame = pd.DataFrame(votes, columns=list(VOTE_COLUMNS))
    frame.insert(0, "eeg_id", [10, 10, 10, 11, 12, 12])
    frame.insert(1, "spectrogram_id", [100, 100, 100, 100, 200, 200])
    frame.insert(2, "spectrogram_label_offset_seconds", [0.0, 4.0, 10.0, 600.0, 0.0, 2.0])
    frame.insert(3, "label_id", [1, 2, 3, 4, 5, 6])
    frame.insert(4, "patient_id", [7, 7, 7, 7, 8, 8])
    frame.insert(5, "expert_consensus", ["Seizure", "LPD", "Seizure", "LRDA", "Other", "GPD"])
    return frame


def test_vote_fractions_are_votes_over_their_row_sum():
    fractions = vote_fractions(labels_frame())
    np.testing.assert_allclose(fractions[0], [0.75, 0, 0, 0, 0, 0.25])
    np.testing.assert_allclose(fractions.sum(axis=1), 1, rtol=1e-6)
    assert fractions.dtype == np.float32


def test_consensus_labels_are_the_starters_one_hot():
    one_hot = consensus_one_hot(labels_frame())
    assert one_hot.tolist()[1] == [0, 1, 0, 0, 0, 0]
    assert [CONSENSUS_NAMES[i] for i in one_hot.argmax(axis=1)] == labels_frame()["expert_consensus"].tolist()
    np.testing.assert_array_equal(training_targets(labels_frame(), "consensus"), one_hot)
    with pytest.raises(ValueError, match="unknown label mode"):
        training_targets(labels_frame(), "soft")


def test_eeg_random_window_draws_one_row_per_eeg_and_covers_every_row():
    labels = labels_frame()
    sampler = EegRandomWindow(labels, seed=0)
    assert sampler.rows_per_epoch == 3
    seen = set()
    for epoch in range(30):
        rows = sampler.epoch_rows(epoch)
        assert sorted(labels["eeg_id"].iloc[rows]) == [10, 11, 12]
        seen.update(rows.tolist())
    assert seen == set(range(len(labels)))  # every labelled window gets used
    np.testing.assert_array_equal(sampler.epoch_rows(3), EegRandomWindow(labels, seed=0).epoch_rows(3))
    # Each EEG weighs 1 per epoch however many rows it has.
    weights = sampler.expected_weights()
    np.testing.assert_allclose(pd.Series(weights).groupby(labels["eeg_id"]).sum(), [1, 1, 1])


def test_spectrogram_first_is_the_starters_sampling():
    labels = labels_frame()
    sampler = make_sampler("spectrogram_first", labels, seed=0)
    assert isinstance(sampler, SpectrogramFirst)
    assert sorted(sampler.epoch_rows(0)) == [0, 4]  # the first row of spectrograms 100 and 200
    np.testing.assert_array_equal(sampler.expected_weights(), [1, 0, 0, 0, 1, 0])


def test_epoch_stream_of_a_resumed_run_matches_the_uninterrupted_one():
    sampler = EegRandomWindow(labels_frame(), seed=1)
    whole = epoch_stream(sampler, 0, 4, rows_per_epoch=5)  # more than 3 EEGs: the draw cycles
    assert len(whole) == 20
    np.testing.assert_array_equal(epoch_stream(sampler, 2, 4, rows_per_epoch=5), whole[10:])


def test_validation_rows_are_the_first_row_of_each_eeg_or_of_each_spectrogram():
    assert first_row_per_eeg(labels_frame()).tolist() == [0, 3, 4]
    assert validation_positions(labels_frame(), "eeg_first").tolist() == [0, 3, 4]
    assert validation_positions(labels_frame(), "spectrogram_first").tolist() == [0, 4]  # the starter's
    with pytest.raises(ValueError, match="unknown validation rows"):
        validation_positions(labels_frame(), "all")


def test_prior_is_the_sampling_weighted_mean_fraction():
    labels = labels_frame()
    weights = EegRandomWindow(labels, seed=0).expected_weights()
    expected = np.mean(
        [vote_fractions(labels.iloc[rows]).mean(axis=0) for rows in ([0, 1, 2], [3], [4, 5])], axis=0
    )
    np.testing.assert_allclose(prior(vote_fractions(labels), weights), expected, rtol=1e-6)


def test_read_train_labels_names_a_missing_column(tmp_path):
    path = tmp_path / "train.csv"
    labels_frame().drop(columns="patient_id").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"train\.csv: missing column\(s\) 'patient_id'"):
        read_train_labels(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.assign(lpd_vote=f["lpd_vote"].where(f["label_id"] != 2, -1)), r"'lpd_vote' missing or negative \(label_id 2\)"),
        (lambda f: f.assign(**{c: 0 for c in VOTE_COLUMNS}), "no votes at all"),
        (lambda f: f.assign(expert_consensus="seizure"), "'expert_consensus' not one of"),
        (lambda f: f.assign(spectrogram_label_offset_seconds=-2.0), "offset_seconds' missing or negative"),
    ],
)
def test_read_train_labels_refuses_bad_values(tmp_path, change, message):
    path = tmp_path / "train.csv"
    change(labels_frame()).to_csv(path, index=False)
    with pytest.raises(ValueError, match=message):
        read_train_labels(path)


def test_read_train_labels_of_the_real_sample(hms_sample):
    labels = read_train_labels(hms_sample / "train_labels_subset.csv")
    assert len(labels) == 2089
    np.testing.assert_allclose(vote_fractions(labels).sum(axis=1), 1, rtol=1e-6)
