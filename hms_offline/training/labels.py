"""train.csv -> training targets, and which labelled windows an epoch trains on.

Targets: vote fractions (votes / their row sum; what the metric scores) or the starter's
one-hot `expert_consensus`. Samplings: the starter's first row per `spectrogram_id`, or
(the default) one random labelled window per `eeg_id` each epoch. Validation rows: the first
row per `eeg_id` (the default) or per `spectrogram_id` (the starter's).
"""

from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.constants import (
    CONSENSUS_NAMES,
    ID_COLUMN,
    TRAIN_COLUMNS,
    VOTE_COLUMNS,
)
from hms_offline.tables import read_csv_with_columns

# What training reads of train.csv (the eeg_/spectrogram_sub_id columns it does not need).
REQUIRED_COLUMNS = tuple(
    column for column in TRAIN_COLUMNS
    if column not in ("eeg_sub_id", "eeg_label_offset_seconds", "spectrogram_sub_id")
)


def read_train_labels(path: Path) -> pd.DataFrame:
    """train.csv, checked: every required column, votes >= 0 with a positive sum, known
    consensus names, offsets >= 0. Errors name the file, the column and example label_ids."""
    path = Path(path)
    labels = read_csv_with_columns(path, REQUIRED_COLUMNS, "train labels (train.csv)")
    if labels.empty:
        raise ValueError(f"{path}: no rows")
    _check_votes(labels, path)
    _check_values(labels, path)
    return labels.reset_index(drop=True)


def _check_votes(labels: pd.DataFrame, path: Path) -> None:
    for column in VOTE_COLUMNS:
        if not pd.api.types.is_numeric_dtype(labels[column]):
            raise ValueError(f"{path}: column {column!r} is not numeric")
        _refuse_rows(labels, labels[column].isna() | (labels[column] < 0), path, f"{column!r} missing or negative")
    _refuse_rows(labels, labels[list(VOTE_COLUMNS)].sum(axis=1) <= 0, path, "no votes at all")


def _check_values(labels: pd.DataFrame, path: Path) -> None:
    offsets = labels["spectrogram_label_offset_seconds"]
    _refuse_rows(labels, offsets.isna() | (offsets < 0), path, "'spectrogram_label_offset_seconds' missing or negative")
    unknown = ~labels["expert_consensus"].isin(CONSENSUS_NAMES)
    _refuse_rows(labels, unknown, path, f"'expert_consensus' not one of {', '.join(CONSENSUS_NAMES)}")
    for column in (ID_COLUMN, "spectrogram_id", "patient_id", "label_id"):
        _refuse_rows(labels, labels[column].isna(), path, f"{column!r} missing")


def _refuse_rows(labels: pd.DataFrame, bad: pd.Series, path: Path, problem: str) -> None:
    if bad.any():
        examples = ", ".join(str(value) for value in labels.loc[bad, "label_id"].head(5))
        raise ValueError(f"{path}: {int(bad.sum())} row(s) with {problem} (label_id {examples})")


def vote_counts(labels: pd.DataFrame) -> np.ndarray:
    """Each row's number of votes (the experts who labelled it)."""
    return labels[list(VOTE_COLUMNS)].to_numpy(dtype=np.float64).sum(axis=1)


def vote_fractions(labels: pd.DataFrame) -> np.ndarray:
    """`[rows, 6]` float32: each row's votes divided by their sum."""
    votes = labels[list(VOTE_COLUMNS)].to_numpy(dtype=np.float64)
    return (votes / votes.sum(axis=1, keepdims=True)).astype(np.float32)


def consensus_index(labels: pd.DataFrame) -> np.ndarray:
    """`expert_consensus` as a class index (the order of CLASSES)."""
    return labels["expert_consensus"].map({name: i for i, name in enumerate(CONSENSUS_NAMES)}).to_numpy()


def consensus_one_hot(labels: pd.DataFrame) -> np.ndarray:
    return np.eye(len(CONSENSUS_NAMES), dtype=np.float32)[consensus_index(labels)]


def training_targets(labels: pd.DataFrame, mode: str) -> np.ndarray:
    if mode == "fractions":
        return vote_fractions(labels)
    if mode == "consensus":
        return consensus_one_hot(labels)
    raise ValueError(f"unknown label mode {mode!r}; known: fractions, consensus")


def first_row_per_eeg(labels: pd.DataFrame) -> np.ndarray:
    """Positions of each eeg_id's first labelled row: the default validation windows (one per
    EEG, like the test set, and the same for every model so their predictions line up)."""
    return np.flatnonzero(~labels[ID_COLUMN].duplicated().to_numpy())


def first_row_per_spectrogram(labels: pd.DataFrame) -> np.ndarray:
    """Positions of each spectrogram_id's first labelled row: the starter's training and
    validation windows (`df.groupby("spectrogram_id").head(1)`)."""
    return np.flatnonzero(~labels["spectrogram_id"].duplicated().to_numpy())


# --validation-rows: which rows of a fold's held-out rows it is validated (and scored) on.
VALIDATION_ROW_CHOICES = {"eeg_first": first_row_per_eeg, "spectrogram_first": first_row_per_spectrogram}


def validation_positions(labels: pd.DataFrame, choice: str) -> np.ndarray:
    if choice not in VALIDATION_ROW_CHOICES:
        raise ValueError(f"unknown validation rows {choice!r}; known: {', '.join(VALIDATION_ROW_CHOICES)}")
    return VALIDATION_ROW_CHOICES[choice](labels)


class EegRandomWindow:
    """Each epoch, one labelled window drawn at random per eeg_id.

    Over the epochs every labelled window gets used, while an EEG with 50 labelled rows
    weighs no more than one with a single row (the test set has one window per EEG).
    """

    def __init__(self, labels: pd.DataFrame, seed: int):
        self.seed = seed
        codes, _ = pd.factorize(labels[ID_COLUMN])
        order = np.argsort(codes, kind="stable")
        self._rows_by_eeg = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
        self._counts = np.bincount(codes)[codes]

    @property
    def rows_per_epoch(self) -> int:
        return len(self._rows_by_eeg)

    def epoch_rows(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        picks = np.array([rows[rng.integers(len(rows))] for rows in self._rows_by_eeg])
        return rng.permutation(picks)

    def expected_weights(self) -> np.ndarray:
        """How often each row is drawn per epoch: 1 / (its EEG's labelled rows)."""
        return 1.0 / self._counts


class SpectrogramFirst:
    """The starter's sampling: the first labelled row of each spectrogram_id, every epoch."""

    def __init__(self, labels: pd.DataFrame, seed: int):
        self.seed = seed
        self._first = first_row_per_spectrogram(labels)
        self._n_rows = len(labels)

    @property
    def rows_per_epoch(self) -> int:
        return len(self._first)

    def epoch_rows(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self._first)

    def expected_weights(self) -> np.ndarray:
        weights = np.zeros(self._n_rows)
        weights[self._first] = 1.0
        return weights


SAMPLERS = {"eeg_random_window": EegRandomWindow, "spectrogram_first": SpectrogramFirst}


def make_sampler(name: str, labels: pd.DataFrame, seed: int):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampling {name!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](labels.reset_index(drop=True), seed)


def epoch_stream(sampler, first_epoch: int, last_epoch: int, rows_per_epoch: int) -> np.ndarray:
    """Row positions for epochs first_epoch..last_epoch-1, `rows_per_epoch` each (cycling
    the epoch's draw when more are asked for). A resumed run gets the same rows as an
    uninterrupted one."""
    epochs = [np.resize(sampler.epoch_rows(epoch), rows_per_epoch) for epoch in range(first_epoch, last_epoch)]
    return np.concatenate(epochs) if epochs else np.zeros(0, dtype=np.int64)


def prior(fractions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The class-prior prediction: mean vote fractions of the training rows, weighted as
    the sampler draws them."""
    mean = np.average(fractions.astype(np.float64), axis=0, weights=weights)
    return mean / mean.sum()
