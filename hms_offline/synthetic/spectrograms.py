"""A synthetic spectrogram recording's values: a background falling with frequency, drift,
noise, distractors and artefacts, the labelled rows' signatures in their windows, and the
missing data of the real files."""

from __future__ import annotations

import numpy as np

from hms_offline.constants import CLASSES, N_FREQUENCIES, SPECTROGRAM_COLUMNS, SPECTROGRAM_REGIONS, WINDOW_COLUMNS
from hms_offline.synthetic.plan import Recording
from hms_offline.synthetic.signatures import SIGNATURES, nearest_row

# Strength of the spectrogram signature: natural-log power added at the band centre for a
# vote fraction of 1, before the per-EEG gain (uniform in plan.GAIN_RANGE).
SPECTROGRAM_LOG_GAIN = 3.0
_FREQ_HZ = np.array([float(name.split("_", 1)[1]) for name in SPECTROGRAM_COLUMNS[:N_FREQUENCIES]])
_N_REGIONS = len(SPECTROGRAM_REGIONS)


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


def spectrogram_power(rng: np.random.Generator, rec: Recording, force_nan_rows: bool) -> np.ndarray:
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
    nearest = nearest_row(columns, centres)
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
