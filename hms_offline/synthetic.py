"""Synthetic data shaped exactly like the competition's, with a learnable signal.

`write_competition(out, n_train, n_test, seed)` writes

    train.csv                      15 columns, integer votes, float offsets (60.0)
    train_spectrograms/<id>.parquet  `time` int64 (1, 3, 5, ...) + 400 float32, longer than 300 rows
    train_eegs/<id>.parquet          20 float32 channels at 200 Hz, covering every labelled 50 s window
    test.csv                       spectrogram_id, eeg_id, patient_id (one row per eeg_id)
    sample_submission.csv          eeg_id + six vote columns, all 1/6, in test.csv order
    test_spectrograms/<id>.parquet   `time` int16 + 400 float32, exactly 300 rows
    test_eegs/<id>.parquet           10,000 rows (50 s)
    test_solution.csv              eeg_id + the true vote fractions of the test rows (not on Kaggle)
    .hms_synthetic.json            marker: this folder was written here and may be overwritten

Structure copied from the real train.csv: a patient owns one or more spectrogram
recordings, a recording holds one to three EEGs, an EEG has one to six labelled rows
(eeg_sub_id 0..k-1, offsets 0, 2..8 s apart); the first EEG of a recording has
`spectrogram_label_offset_seconds == eeg_label_offset_seconds`, later ones sit further
into the recording (so their spectrogram_sub_id keeps counting). Votes: 1 to 28 voters
per row, mostly 3, often split between classes; `expert_consensus` is the first argmax.

The signal. Every class has a signature (`SIGNATURES`): in the spectrogram a band of
frequency rows boosted in some of the four chains; in the EEG a rhythm or a train of
periodic discharges at the band's centre frequency on a group of channels. A labelled
row adds each class's signature scaled by its vote fraction. In a train spectrogram the
columns of the row's 300-column window (`preprocess.window_start(offset)` ..+300) carry
the signature of the row whose window centre is nearest (Voronoi split), so every row's
own signature sits in its own window and its centre; in a test spectrogram the one row
covers all 300 columns. On top: per-recording background slope and level, per-cell
noise, broadband artefact columns, "distractor" bumps at random bands and chains,
band jitter and a per-EEG signal gain, so the task is learnable but not trivial.

Same seed -> byte-identical files (numpy Generators seeded per file, parquet written with
fixed settings, CSVs with pandas' shortest-round-trip floats). Everything is written
into a hidden temporary sibling folder that is renamed to `out` only when complete.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from hms_offline.constants import (
    CLASSES,
    CONSENSUS_NAMES,
    EEG_CHANNELS,
    EEG_SAMPLE_RATE_HZ,
    EEG_WINDOW_SECONDS,
    ID_COLUMN,
    N_FREQUENCIES,
    SPECTROGRAM_COLUMNS,
    SPECTROGRAM_REGIONS,
    SPECTROGRAM_STEP_SECONDS,
    SPECTROGRAM_TIME_COLUMN,
    SUBMISSION_COLUMNS,
    TEST_COLUMNS,
    TRAIN_COLUMNS,
    VOTE_COLUMNS,
    WINDOW_COLUMNS,
)
from hms_offline.preprocess import window_start

log = logging.getLogger(__name__)

EEG_WINDOW_ROWS = EEG_WINDOW_SECONDS * EEG_SAMPLE_RATE_HZ  # 10,000: a test EEG file

MARKER_NAME = ".hms_synthetic.json"
GENERATOR_VERSION = 1

_LEFT = ("Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1")
_RIGHT = ("Fp2", "F4", "C4", "P4", "F8", "T4", "T6", "O2")
_EKG = "EKG"
_ALL_EEG = tuple(name for name in EEG_CHANNELS if name != _EKG)


@dataclass(frozen=True)
class Signature:
    """What one class adds, scaled by its vote fraction."""

    band_hz: tuple[float, float]  # spectrogram frequency rows boosted
    chains: tuple[str, ...]  # spectrogram regions (of SPECTROGRAM_REGIONS) boosted
    eeg_hz: float  # EEG rhythm / discharge rate
    eeg_kind: str  # "rhythm" (sinusoid + harmonic) or "discharges" (periodic sharp waves)
    eeg_channels: tuple[str, ...]
    eeg_amplitude_uv: float
    # How the spectrogram band varies along time: "steady", "dashes" (on/off every few
    # columns, periodic discharges), "waxing" (slow swell, an evolving seizure) or
    # "bursts" (blocks of tens of columns on and off).
    texture: str


SIGNATURES: dict[str, Signature] = {
    "seizure": Signature((6.2, 8.6), SPECTROGRAM_REGIONS, 7.4, "rhythm", _ALL_EEG, 35.0, "waxing"),
    "lpd": Signature((0.9, 2.2), ("LL", "LP"), 1.5, "discharges", _LEFT, 60.0, "dashes"),
    "gpd": Signature((2.6, 3.8), SPECTROGRAM_REGIONS, 3.2, "discharges", _ALL_EEG, 55.0, "dashes"),
    "lrda": Signature((0.9, 2.2), ("RL", "RP"), 1.5, "rhythm", _RIGHT, 35.0, "steady"),
    "grda": Signature((4.2, 5.4), SPECTROGRAM_REGIONS, 4.8, "rhythm", _ALL_EEG, 30.0, "steady"),
    "other": Signature((12.0, 16.0), SPECTROGRAM_REGIONS, 14.0, "rhythm", _ALL_EEG, 12.0, "bursts"),
}
assert tuple(SIGNATURES) == CLASSES

# Strength of the spectrogram signature: natural-log power added at the band centre for a
# vote fraction of 1, before the per-EEG gain (uniform in _GAIN_RANGE).
SPECTROGRAM_LOG_GAIN = 3.0
_GAIN_RANGE = (0.6, 1.4)

# Voters per row, 1..28, shaped like the real train.csv (mostly 3, a second mode 13-16).
_VOTER_WEIGHTS = np.array(
    [4, 2, 46, 3.3, 4.2, 1.1, 0.4, 0.4, 0.4, 0.8, 2.2, 3.8, 7.9, 4.4, 11.2, 5.5, 1.6, 1.6,
     0.4, 0.3, 0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.05, 0.05]
)
_VOTER_P = _VOTER_WEIGHTS / _VOTER_WEIGHTS.sum()
# Labelled rows per EEG, 1..6.
_ROWS_PER_EEG_P = np.array([0.45, 0.25, 0.14, 0.08, 0.05, 0.03])
_EEGS_PER_RECORDING_P = np.array([0.6, 0.3, 0.1])

_FREQ_HZ = np.array([float(name.split("_", 1)[1]) for name in SPECTROGRAM_COLUMNS[:N_FREQUENCIES]])
_N_REGIONS = len(SPECTROGRAM_REGIONS)


# ----------------------------------------------------------------------------- planning


@dataclass
class _Eeg:
    eeg_id: int
    offsets: np.ndarray  # eeg_label_offset_seconds of its rows (float64); test: [0.0]
    fractions: np.ndarray  # [rows, 6] vote fractions
    gain: float
    n_rows: int  # parquet rows (samples)


@dataclass
class _Recording:
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


def _plan_train(rng: np.random.Generator, n_train: int, taken: set[int]):
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
    eegs: list[_Eeg] = []
    recordings: list[_Recording] = []
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
            eeg = _Eeg(
                eeg_id=eeg_ids[eeg_index],
                offsets=offsets,
                fractions=fractions,
                gain=float(rng.uniform(*_GAIN_RANGE)),
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
            _Recording(
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


def _plan_test(rng: np.random.Generator, n_test: int, taken: set[int]):
    dominants = rng.permutation(np.resize(np.arange(len(CLASSES)), n_test))
    eeg_ids = _unique_ids(rng, n_test, 1_000_000, 2**32, taken)
    spectrogram_ids = _unique_ids(rng, n_test, 100_000, 2**31, taken)
    patient_ids = _unique_ids(rng, max(1, (n_test + 1) // 2), 1, 65_536, taken)
    rows, eegs, recordings = [], [], []
    for i in range(n_test):
        p = _latent_mixture(rng, int(dominants[i]))
        votes = _first_is_strict_max(_draw_votes(rng, p), int(dominants[i]))
        fractions = (votes / votes.sum())[None, :]
        gain = float(rng.uniform(*_GAIN_RANGE))
        rows.append(
            {
                "spectrogram_id": spectrogram_ids[i],
                ID_COLUMN: eeg_ids[i],
                "patient_id": patient_ids[int(rng.integers(0, len(patient_ids)))],
                **dict(zip(VOTE_COLUMNS, fractions[0])),
            }
        )
        eegs.append(_Eeg(eeg_ids[i], np.zeros(1), fractions, gain, EEG_WINDOW_ROWS))
        recordings.append(_Recording(spectrogram_ids[i], WINDOW_COLUMNS, np.zeros(1, int), fractions, np.array([gain])))
    frame = pd.DataFrame(rows)
    return frame, eegs, recordings


# ----------------------------------------------------------------------------- signals


def _band_profiles(rng: np.random.Generator) -> np.ndarray:
    """[6, 400] log-power added per unit vote fraction: a tapered band on the class's chains."""
    profiles = np.zeros((len(CLASSES), _N_REGIONS, N_FREQUENCIES))
    for c, name in enumerate(CLASSES):
        sig = SIGNATURES[name]
        shift = rng.uniform(-0.15, 0.15) * (sig.band_hz[1] - sig.band_hz[0])  # per-recording jitter
        low, high = sig.band_hz[0] + shift, sig.band_hz[1] + shift
        x = (_FREQ_HZ - low) / (high - low)
        taper = np.where((x >= 0) & (x <= 1), np.sin(np.pi * np.clip(x, 0, 1)) ** 0.5, 0.0)
        for region in sig.chains:
            profiles[c, SPECTROGRAM_REGIONS.index(region)] = taper * rng.uniform(0.8, 1.2)
    return profiles.reshape(len(CLASSES), -1) * SPECTROGRAM_LOG_GAIN


def _textures(rng: np.random.Generator, t_cols: int) -> np.ndarray:
    """[T, 6] time modulation of each class's band (mean about 1)."""
    t = np.arange(t_cols)
    out = np.ones((t_cols, len(CLASSES)))
    for c, name in enumerate(CLASSES):
        texture = SIGNATURES[name].texture
        if texture == "dashes":
            period = int(rng.integers(2, 5))
            out[:, c] = np.where((t + rng.integers(0, period)) % period == 0, 1.7, 0.55)
        elif texture == "waxing":
            out[:, c] = 1 + 0.6 * np.sin(2 * np.pi * t / rng.uniform(40, 90) + rng.uniform(0, 2 * np.pi))
        elif texture == "bursts":
            block = int(rng.integers(8, 25))
            out[:, c] = np.where(((t + rng.integers(0, 2 * block)) // block) % 2 == 0, 1.6, 0.4)
    return out


def _nearest_row(positions: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.abs(positions[:, None] - centres[None, :]).argmin(axis=1)


def _spectrogram(rng: np.random.Generator, rec: _Recording, force_nan_rows: bool) -> np.ndarray:
    """[400, T] float32 power, rounded to 0.01 as in the real files, with NaNs."""
    t_cols = rec.n_columns
    log_f = np.log(_FREQ_HZ / _FREQ_HZ[0])
    level = rng.uniform(1.5, 3.2) + rng.normal(0, 0.4, (_N_REGIONS, 1, 1))
    slope = rng.uniform(1.0, 1.6)
    background = level - slope * log_f[None, :, None]  # [4, 100, 1]
    # Slow drift per chain, fast per-cell noise (a little correlated along frequency).
    drift = np.cumsum(rng.normal(0, 0.08, (_N_REGIONS, 1, t_cols)), axis=2)
    drift -= drift.mean(axis=2, keepdims=True)
    noise = rng.standard_normal((_N_REGIONS, N_FREQUENCIES, t_cols), dtype=np.float32)
    noise *= np.float32(0.45)
    noise[:, 1:] = 0.7 * noise[:, 1:] + 0.3 * noise[:, :-1]
    noise += (background + drift).astype(np.float32)
    log_power = noise

    # Distractors: bumps at random bands / chains / time spans that mimic signatures.
    for _ in range(int(rng.poisson(1.5))):
        centre, width = rng.uniform(0, N_FREQUENCIES), rng.uniform(4, 20)
        bump = np.exp(-0.5 * ((np.arange(N_FREQUENCIES) - centre) / (width / 2)) ** 2)
        chains = rng.choice(_N_REGIONS, size=int(rng.choice([1, 2, 4], p=[0.5, 0.25, 0.25])), replace=False)
        span = int(rng.integers(30, max(31, t_cols)))
        first = int(rng.integers(0, max(1, t_cols - span)))
        log_power[np.ix_(chains, np.arange(N_FREQUENCIES), np.arange(first, min(t_cols, first + span)))] += (
            rng.uniform(0.4, 1.4) * bump[None, :, None]
        )
    # Broadband artefact columns (movement / muscle), the source of the ~4000 maxima.
    artefacts = rng.random(t_cols) < 0.02
    log_power[:, :, artefacts] += rng.uniform(1.0, 3.5, artefacts.sum())

    # The labelled rows' signatures: each column inside a window takes the row whose
    # window centre is nearest.
    columns = np.arange(t_cols)
    centres = rec.starts + WINDOW_COLUMNS // 2
    nearest = _nearest_row(columns, centres)
    inside = ((columns - rec.starts[nearest]) >= 0) & ((columns - rec.starts[nearest]) < WINDOW_COLUMNS)
    weights = rec.fractions[nearest] * (rec.gains[nearest] * inside)[:, None]  # [T, 6]
    weights *= np.exp(rng.normal(0, 0.15, (t_cols, 1)))  # column-to-column wobble
    weights *= _textures(rng, t_cols)
    profiles = _band_profiles(rng).astype(np.float32)  # [6, 400]
    weights = weights.T.astype(np.float32)  # [6, T]
    flat = log_power.reshape(len(SPECTROGRAM_COLUMNS), t_cols)  # a view
    for c in range(len(CLASSES)):  # only the band's rows; no `@` (a threaded BLAS is slower here)
        rows = np.flatnonzero(profiles[c])
        if weights[c].any():
            flat[rows] += profiles[c, rows, None] * weights[c]

    power = np.round(np.exp(np.minimum(log_power, np.float32(9.5))), 2)
    power = np.maximum(power, np.float32(0.01)).reshape(len(SPECTROGRAM_COLUMNS), t_cols)

    # Missing data: a run of all-NaN rows (file rows = columns here), a chain dropping out,
    # and scattered cells.
    if force_nan_rows or rng.random() < 0.35:
        length = int(rng.integers(1, 12))
        first = int(rng.integers(0, t_cols - length + 1))
        power[:, first : first + length] = np.nan
    if rng.random() < 0.15:
        region = int(rng.integers(0, _N_REGIONS))
        length = int(rng.integers(5, 40))
        first = int(rng.integers(0, max(1, t_cols - length)))
        power[region * N_FREQUENCIES : (region + 1) * N_FREQUENCIES, first : first + length] = np.nan
    scattered = rng.random(power.shape) < 2e-4
    power[scattered] = np.nan
    return power


def _rhythm(rng: np.random.Generator, rate_hz: float, n: int) -> np.ndarray:
    """A sinusoid plus its second harmonic whose frequency wanders by a few per cent, float32."""
    walk = np.cumsum(rng.standard_normal(n // 100 + 2))
    walk = np.interp(np.arange(n) / 100, np.arange(len(walk)), walk / (np.abs(walk).max() + 1e-9))
    phase = 2 * np.pi * np.cumsum(rate_hz * (1 + 0.04 * walk)) / EEG_SAMPLE_RATE_HZ + rng.uniform(0, 2 * np.pi)
    return (np.sin(phase) + 0.3 * np.sin(2 * phase + rng.uniform(0, 2 * np.pi))).astype(np.float32)


def _discharges(rng: np.random.Generator, rate_hz: float, n: int) -> np.ndarray:
    """Periodic sharp waves: a sharp negative spike then a slow positive wave, ~peak 1."""
    fs = EEG_SAMPLE_RATE_HZ
    impulses = np.zeros(n)
    t = rng.uniform(0, 1 / rate_hz)
    while t < n / fs:
        impulses[int(t * fs)] = 1.0
        t += rng.normal(1 / rate_hz, 0.05 / rate_hz)
    k = np.arange(-int(0.1 * fs), int(0.5 * fs)) / fs
    kernel = -np.exp(-0.5 * (k / 0.02) ** 2) + 0.4 * np.exp(-0.5 * ((k - 0.15) / 0.06) ** 2)
    return np.convolve(impulses, kernel, mode="full")[int(0.1 * fs) : int(0.1 * fs) + n]


_NOISE_BANK_SAMPLES = 2**20  # ~87 min at 200 Hz


def _noise_bank(rng: np.random.Generator) -> np.ndarray:
    """Unit-variance 1/f noise (0.5-70 Hz), float32; EEG backgrounds are slices of it.

    Colouring one long series once per run instead of 21 short ones per file halves the
    generator's CPU time; slices at random offsets with random signs are as good as
    independent for a synthetic background.
    """
    white = rng.standard_normal(_NOISE_BANK_SAMPLES, dtype=np.float32)
    freqs = np.fft.rfftfreq(_NOISE_BANK_SAMPLES, 1 / EEG_SAMPLE_RATE_HZ)
    shape = np.where((freqs > 0.5) & (freqs < 70), 1 / np.sqrt(np.maximum(freqs, 0.5)), 0.0)
    coloured = np.fft.irfft(np.fft.rfft(white) * shape.astype(np.float32), n=_NOISE_BANK_SAMPLES)
    return (coloured / coloured.std()).astype(np.float32)


def _eeg(rng: np.random.Generator, eeg: _Eeg, bank: np.ndarray) -> np.ndarray:
    """[20, n] float32 microvolts, rounded to 0.01 as in the real files."""
    fs, n = EEG_SAMPLE_RATE_HZ, eeg.n_rows
    n_ch = len(EEG_CHANNELS)
    if n > len(bank):
        raise ValueError(f"EEG of {n} samples is longer than the noise bank ({len(bank)})")
    # Background: 1/f noise, part shared by all channels, per-channel level. float32
    # throughout: half the memory traffic of float64, and the files are float32.
    starts = rng.integers(0, len(bank) - n + 1, n_ch + 1)
    signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), n_ch + 1)
    coloured = np.stack([bank[a : a + n] * sign for a, sign in zip(starts, signs)])
    x = 0.8 * coloured[:n_ch] + 0.5 * coloured[n_ch]
    x *= rng.uniform(18, 35, (n_ch, 1)).astype(np.float32)
    x += rng.normal(-20, 40, (n_ch, 1)).astype(np.float32)

    # Class signatures, each sample taking the fractions of the nearest labelled window.
    t = np.arange(n) / fs
    waves = np.empty((len(CLASSES), n), dtype=np.float32)
    mixing = np.zeros((len(CLASSES), n_ch), dtype=np.float32)
    for c, name in enumerate(CLASSES):
        sig = SIGNATURES[name]
        rate = sig.eeg_hz * rng.uniform(0.95, 1.05)
        if sig.eeg_kind == "rhythm":
            waves[c] = _rhythm(rng, rate, n)
        else:
            waves[c] = _discharges(rng, rate, n)
        for name_ch in sig.eeg_channels:
            mixing[c, EEG_CHANNELS.index(name_ch)] = sig.eeg_amplitude_uv * rng.uniform(0.7, 1.3)
    centres = eeg.offsets + EEG_WINDOW_SECONDS / 2
    fractions = eeg.fractions.astype(np.float32)[_nearest_row(t, centres)]  # [n, 6]
    mixing *= np.float32(eeg.gain)
    for c in range(len(CLASSES)):  # no `@`: a threaded BLAS costs more than it saves here
        if fractions[:, c].any():
            x += mixing[c][:, None] * (fractions[:, c] * waves[c])[None, :]
    # Distractors: unrelated rhythms (alpha, slowing, ...) on a random channel group.
    for _ in range(int(rng.poisson(1.2))):
        group = (_LEFT, _RIGHT, _ALL_EEG)[int(rng.integers(0, 3))]
        channels = [EEG_CHANNELS.index(name) for name in group]
        wave = _rhythm(rng, rng.uniform(0.8, 16.0), n) * np.float32(rng.uniform(8, 30))
        x[channels] += wave[None, :] * rng.uniform(0.7, 1.3, (len(channels), 1)).astype(np.float32)

    # EKG: QRS spikes at 60-100 bpm on a wandering baseline.
    ekg = EEG_CHANNELS.index(_EKG)
    beats = np.zeros(n)
    beats[(np.arange(0, n / fs, 60 / rng.uniform(60, 100)) * fs).astype(int)] = 1.0
    k = np.arange(-10, 11) / fs
    qrs = np.exp(-0.5 * (k / 0.012) ** 2) - 0.3 * np.exp(-0.5 * ((k - 0.025) / 0.01) ** 2)
    x[ekg] = (
        np.convolve(beats, qrs, mode="same") * rng.uniform(300, 1200) * rng.choice([-1, 1])
        + 15 * coloured[ekg]
        + rng.normal(0, 60)
    )
    return np.round(x, 2)


# ----------------------------------------------------------------------------- writing


@functools.lru_cache(maxsize=None)
def _schema(names: tuple[str, ...], dtypes: tuple[str, ...]) -> pa.Schema:
    """The schema pandas would write (with its `pandas` metadata, like the real files)."""
    frame = pd.DataFrame({name: np.zeros(1, dtype=dtype) for name, dtype in zip(names, dtypes)})
    return pa.Table.from_pandas(frame, preserve_index=False).schema


def _spectrogram_schema(time_dtype: str) -> pa.Schema:
    return _schema((SPECTROGRAM_TIME_COLUMN, *SPECTROGRAM_COLUMNS), (time_dtype,) + ("float32",) * len(SPECTROGRAM_COLUMNS))


def _eeg_schema() -> pa.Schema:
    return _schema(EEG_CHANNELS, ("float32",) * len(EEG_CHANNELS))


def _write_parquet(columns: list[np.ndarray], schema: pa.Schema, path: Path) -> None:
    # from_pandas=True: NaN becomes a null, as when pandas writes the frame.
    arrays = [pa.array(a, type=field.type, from_pandas=True) for a, field in zip(columns, schema)]
    table = pa.Table.from_arrays(arrays, schema=schema)
    # Fixed settings and no timestamps -> the same bytes for the same data. No dictionary
    # encoding: it is slow on high-cardinality floats and readers do not care.
    pq.write_table(table, path, compression="snappy", use_dictionary=False, write_statistics=True)


def _write_spectrogram(seed: int, kind: int, index: int, rec: _Recording, time_dtype: str, folder: Path) -> None:
    power = _spectrogram(_file_rng(seed, kind, index), rec, force_nan_rows=index == 0)
    times = np.arange(rec.n_columns) * SPECTROGRAM_STEP_SECONDS + SPECTROGRAM_STEP_SECONDS // 2
    _write_parquet([times.astype(time_dtype), *power], _spectrogram_schema(time_dtype), folder / f"{rec.spectrogram_id}.parquet")


def _write_eeg(seed: int, kind: int, index: int, eeg: _Eeg, bank: np.ndarray, folder: Path) -> None:
    signals = _eeg(_file_rng(seed, kind, index), eeg, bank)
    _write_parquet(list(signals), _eeg_schema(), folder / f"{eeg.eeg_id}.parquet")


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, lineterminator="\n")


def _file_rng(seed: int, kind: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, kind, index])


def _check_args(out: Path, n_train: int, n_test: int, seed: int) -> None:
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1 (rows of {'train' if name == 'n_train' else 'test'}.csv), got {value}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not (out / MARKER_NAME).is_file():
            raise ValueError(
                f"{out} is not empty and is not a previous synthetic output (no {MARKER_NAME}); "
                "refusing to overwrite it"
            )


def write_competition(out: Path, n_train: int, n_test: int, seed: int) -> Path:
    """Write a synthetic competition folder to `out` and return it (see the module doc)."""
    out = Path(out)
    _check_args(out, n_train, n_test, seed)
    started = time.perf_counter()
    taken: set[int] = set()
    train, train_eegs, train_recs = _plan_train(_file_rng(seed, 0, 0), int(n_train), taken)
    test, test_eegs, test_recs = _plan_test(_file_rng(seed, 0, 1), int(n_test), taken)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.synth-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        for sub in ("train_spectrograms", "train_eegs", "test_spectrograms", "test_eegs"):
            (tmp / sub).mkdir()
        bank = _noise_bank(_file_rng(seed, 5, 0))
        # One job per parquet file, each with its own Generator, so the bytes do not depend
        # on the order the (GIL-releasing numpy / pyarrow) worker threads run them in.
        jobs = [
            *((_write_spectrogram, seed, 1, i, rec, "int64", tmp / "train_spectrograms") for i, rec in enumerate(train_recs)),
            *((_write_eeg, seed, 2, i, eeg, bank, tmp / "train_eegs") for i, eeg in enumerate(train_eegs)),
            *((_write_spectrogram, seed, 3, i, rec, "int16", tmp / "test_spectrograms") for i, rec in enumerate(test_recs)),
            *((_write_eeg, seed, 4, i, eeg, bank, tmp / "test_eegs") for i, eeg in enumerate(test_eegs)),
        ]
        n_files = len(jobs) + 5
        workers = max(1, min(4, os.cpu_count() or 1))
        with tqdm(total=n_files, desc=f"synth {out.name}", unit="file") as bar, ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(job[0], *job[1:]) for job in jobs]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            _write_csv(test[list(SUBMISSION_COLUMNS)], tmp / "test_solution.csv")
            submission = test[[ID_COLUMN]].copy()
            for column in VOTE_COLUMNS:
                submission[column] = 1.0 / len(VOTE_COLUMNS)
            _write_csv(submission, tmp / "sample_submission.csv")
            marker = {"generator": __name__, "version": GENERATOR_VERSION, "seed": int(seed),
                      "n_train": int(n_train), "n_test": int(n_test)}
            (tmp / MARKER_NAME).write_text(json.dumps(marker, sort_keys=True) + "\n")
            bar.update(3)
            _write_csv(train, tmp / "train.csv")
            _write_csv(test[list(TEST_COLUMNS)], tmp / "test.csv")
            bar.update(2)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "wrote %s: train.csv %d rows (%d eegs, %d spectrograms, %d patients), test.csv %d rows, "
        "%d parquet files, seed %d, in %.1f s",
        out, len(train), len(train_eegs), len(train_recs), train["patient_id"].nunique(), len(test),
        len(train_recs) + len(train_eegs) + len(test_recs) + len(test_eegs), seed,
        time.perf_counter() - started,
    )
    return out


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename the finished temp folder to `out`, moving an old (checked) `out` aside first."""
    if not out.exists():
        os.rename(tmp, out)
        return
    _check_args(out, 1, 1, 0)  # still empty or synthetic?
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / out.name)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
