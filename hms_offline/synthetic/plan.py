"""The synthetic tables: train.csv's rows with their EEGs and spectrogram recordings, and
test.csv's, before any file is written.

Structure copied from the real train.csv: a patient owns one or more spectrogram
recordings, a recording holds one to three EEGs, an EEG has one to six labelled rows
(eeg_sub_id 0..k-1, offsets 0, 2..8 s apart); the first EEG of a recording has
`spectrogram_label_offset_seconds == eeg_label_offset_seconds`, later ones sit further
into the recording (so their spectrogram_sub_id keeps counting). Votes: 1 to 28 voters
per row, mostly 3, often split between classes; `expert_consensus` is the first argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hms_offline.constants import (
    CLASSES, CONSENSUS_NAMES, EEG_SAMPLE_RATE_HZ, EEG_WINDOW_SECONDS, ID_COLUMN, TRAIN_COLUMNS, VOTE_COLUMNS,
    WINDOW_COLUMNS,
)
from hms_offline.features.spectrogram import window_start

EEG_WINDOW_ROWS = EEG_WINDOW_SECONDS * EEG_SAMPLE_RATE_HZ  # 10,000: a test EEG file
# The per-EEG signal gain: every signature of the EEG's rows, in its files, is scaled by it.
GAIN_RANGE = (0.6, 1.4)

# Voters per row, 1..28, shaped like the real train.csv (mostly 3, a second mode 13-16).
_VOTER_WEIGHTS = np.array(
    [4, 2, 46, 3.3, 4.2, 1.1, 0.4, 0.4, 0.4, 0.8, 2.2, 3.8, 7.9, 4.4, 11.2, 5.5, 1.6, 1.6,
     0.4, 0.3, 0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.05, 0.05]
)
_VOTER_P = _VOTER_WEIGHTS / _VOTER_WEIGHTS.sum()
# Labelled rows per EEG, 1..6.
_ROWS_PER_EEG_P = np.array([0.45, 0.25, 0.14, 0.08, 0.05, 0.03])
_EEGS_PER_RECORDING_P = np.array([0.6, 0.3, 0.1])


@dataclass
class Eeg:
    eeg_id: int
    offsets: np.ndarray  # eeg_label_offset_seconds of its rows (float64); test: [0.0]
    fractions: np.ndarray  # [rows, 6] vote fractions
    gain: float
    n_rows: int  # parquet rows (samples)


@dataclass
class Recording:
    spectrogram_id: int
    n_columns: int
    starts: np.ndarray  # window start column of every labelled row
    fractions: np.ndarray  # [rows, 6]
    gains: np.ndarray  # [rows]


def _unique_ids(rng: np.random.Generator, n: int, low: int, high: int, taken: set[int]) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        for value in rng.integers(low, high, size=n - len(ids) + 4).tolist():
            if value not in taken and len(ids) < n:
                taken.add(value)
                ids.append(value)
    return ids


def _first_is_strict_max(votes: np.ndarray, dominant: int) -> np.ndarray:
    """Swap/move votes so that `dominant` holds the strictly largest count (total unchanged)."""
    votes = votes.copy()
    top = int(votes.argmax())
    votes[[dominant, top]] = votes[[top, dominant]]
    while (votes == votes[dominant]).sum() > 1:
        other = next(i for i in range(len(votes)) if i != dominant and votes[i] == votes[dominant])
        votes[other] -= 1
        votes[dominant] += 1
    return votes


def _latent_mixture(rng: np.random.Generator, dominant: int) -> np.ndarray:
    """Expected vote shares of one EEG: pure (40%) or the dominant class plus 1-3 others."""
    p = np.zeros(len(CLASSES))
    if rng.random() < 0.4:
        p[dominant] = 1.0
        return p
    p[dominant] = rng.uniform(0.4, 0.85)
    others = rng.choice([c for c in range(len(CLASSES)) if c != dominant], size=rng.integers(1, 4), replace=False)
    p[others] = (1.0 - p[dominant]) * rng.dirichlet(np.ones(len(others)))
    return p


def _draw_votes(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    n = int(rng.choice(len(_VOTER_P), p=_VOTER_P)) + 1
    return rng.multinomial(n, p)


def plan_train(rng: np.random.Generator, n_train: int, taken: set[int]):
    # Rows per EEG; the cap keeps at least six EEGs (one per class) once n_train >= 6.
    cap = min(len(_ROWS_PER_EEG_P), max(1, n_train // len(CLASSES)))
    p_rows = _ROWS_PER_EEG_P[:cap] / _ROWS_PER_EEG_P[:cap].sum()
    rows_per_eeg: list[int] = []
    while sum(rows_per_eeg) < n_train:
        rows_per_eeg.append(min(int(rng.choice(cap, p=p_rows)) + 1, n_train - sum(rows_per_eeg)))
    n_eegs = len(rows_per_eeg)
    # Balanced dominant classes: every class leads ceil/floor(n_eegs / 6) EEGs.
    dominants = rng.permutation(np.resize(np.arange(len(CLASSES)), n_eegs))

    # EEGs -> recordings -> patients.
    eegs_per_recording: list[int] = []
    while sum(eegs_per_recording) < n_eegs:
        k = int(rng.choice(len(_EEGS_PER_RECORDING_P), p=_EEGS_PER_RECORDING_P)) + 1
        eegs_per_recording.append(min(k, n_eegs - sum(eegs_per_recording)))
    n_recordings = len(eegs_per_recording)
    n_patients = min(n_recordings, max(10, round(n_recordings / 1.6)))
    owner = np.concatenate([np.arange(n_patients), rng.integers(0, n_patients, n_recordings - n_patients)])
    owner = rng.permutation(owner)

    eeg_ids = _unique_ids(rng, n_eegs, 1_000_000, 2**32, taken)
    spectrogram_ids = _unique_ids(rng, n_recordings, 100_000, 2**31, taken)
    label_ids = _unique_ids(rng, n_train, 10_000, 2**32, taken)
    patient_ids = _unique_ids(rng, n_patients, 1, 65_536, taken)

    rows: list[dict] = []
    eegs: list[Eeg] = []
    recordings: list[Recording] = []
    eeg_index = 0
    for rec_index, n_rec_eegs in enumerate(eegs_per_recording):
        rec_rows_start = len(rows)
        base = 0  # spectrogram seconds of the first EEG's offset 0: s_off == e_off
        spec_sub = 0
        for _ in range(n_rec_eegs):
            k = rows_per_eeg[eeg_index]
            dominant = int(dominants[eeg_index])
            p = _latent_mixture(rng, dominant)
            offsets = np.cumsum(np.concatenate([[0], 2 * rng.integers(1, 5, size=k - 1)])).astype(float)
            votes = [_first_is_strict_max(_draw_votes(rng, p), dominant)]
            for _ in range(1, k):
                votes.append(votes[-1].copy() if rng.random() < 0.7 else _draw_votes(rng, p))
            votes_arr = np.array(votes, dtype=np.int64)
            fractions = votes_arr / votes_arr.sum(axis=1, keepdims=True)
            eeg = Eeg(
                eeg_id=eeg_ids[eeg_index],
                offsets=offsets,
                fractions=fractions,
                gain=float(rng.uniform(*GAIN_RANGE)),
                n_rows=int((offsets[-1] + EEG_WINDOW_SECONDS) * EEG_SAMPLE_RATE_HZ),
            )
            eegs.append(eeg)
            for sub, (offset, row_votes) in enumerate(zip(offsets, votes_arr)):
                rows.append(
                    {
                        ID_COLUMN: eeg.eeg_id,
                        "eeg_sub_id": sub,
                        "eeg_label_offset_seconds": float(offset),
                        "spectrogram_id": spectrogram_ids[rec_index],
                        "spectrogram_sub_id": spec_sub,
                        "spectrogram_label_offset_seconds": float(base + offset),
                        "label_id": label_ids[len(rows)],
                        "patient_id": patient_ids[owner[rec_index]],
                        "expert_consensus": CONSENSUS_NAMES[int(np.argmax(row_votes))],
                        **{col: int(v) for col, v in zip(VOTE_COLUMNS, row_votes)},
                        "_gain": eeg.gain,
                    }
                )
                spec_sub += 1
            # The next EEG of this recording starts 10-15 min later (windows never overlap);
            # an odd number of seconds now and then, as in the real file.
            base = int(base + offsets[-1]) + 2 * int(rng.integers(300, 450)) + int(rng.random() < 0.3)
            eeg_index += 1
        rec_rows = rows[rec_rows_start:]
        starts = np.array(
            [window_start(WINDOW_COLUMNS, r["spectrogram_label_offset_seconds"]) for r in rec_rows]
        )
        recordings.append(
            Recording(
                spectrogram_id=spectrogram_ids[rec_index],
                n_columns=int(starts.max()) + WINDOW_COLUMNS + int(rng.integers(5, 60)),
                starts=starts,
                fractions=np.array([[r[c] for c in VOTE_COLUMNS] for r in rec_rows], float)
                / np.array([[sum(r[c] for c in VOTE_COLUMNS)] for r in rec_rows], float),
                gains=np.array([r["_gain"] for r in rec_rows]),
            )
        )
    train = pd.DataFrame(rows).drop(columns="_gain")[list(TRAIN_COLUMNS)]
    return train, eegs, recordings


def plan_test(rng: np.random.Generator, n_test: int, taken: set[int]):
    dominants = rng.permutation(np.resize(np.arange(len(CLASSES)), n_test))
    eeg_ids = _unique_ids(rng, n_test, 1_000_000, 2**32, taken)
    spectrogram_ids = _unique_ids(rng, n_test, 100_000, 2**31, taken)
    patient_ids = _unique_ids(rng, max(1, (n_test + 1) // 2), 1, 65_536, taken)
    rows, eegs, recordings = [], [], []
    for i in range(n_test):
        p = _latent_mixture(rng, int(dominants[i]))
        votes = _first_is_strict_max(_draw_votes(rng, p), int(dominants[i]))
        fractions = (votes / votes.sum())[None, :]
        gain = float(rng.uniform(*GAIN_RANGE))
        rows.append(
            {
                "spectrogram_id": spectrogram_ids[i],
                ID_COLUMN: eeg_ids[i],
                "patient_id": patient_ids[int(rng.integers(0, len(patient_ids)))],
                **dict(zip(VOTE_COLUMNS, fractions[0])),
            }
        )
        eegs.append(Eeg(eeg_ids[i], np.zeros(1), fractions, gain, EEG_WINDOW_ROWS))
        recordings.append(Recording(spectrogram_ids[i], WINDOW_COLUMNS, np.zeros(1, int), fractions, np.array([gain])))
    frame = pd.DataFrame(rows)
    return frame, eegs, recordings
