"""A synthetic EEG's 20 signals: 1/f background, the labelled rows' rhythms or periodic
discharges on their channels (each with its spatial field and propagation lag, see
`signatures`), distractor rhythms, and an EKG."""

from __future__ import annotations

import numpy as np

from hms_offline.constants import CLASSES, EEG_CHANNELS, EEG_SAMPLE_RATE_HZ, EEG_WINDOW_SECONDS
from hms_offline.synthetic.plan import Eeg
from hms_offline.synthetic.signatures import ALL_EEG, EKG, LEFT, POSITIONS, RIGHT, SIGNATURES, field_amplitudes, nearest_row


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
    return np.convolve(impulses, kernel, mode="full")[int(0.1 * fs) : int(0.1 * fs) + n].astype(np.float32)


_NOISE_BANK_SAMPLES = 2**20  # ~87 min at 200 Hz
_MAX_LAG = 40  # samples (0.2 s): the longest propagation lag of a signature


def noise_bank(rng: np.random.Generator) -> np.ndarray:
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


def eeg_signals(rng: np.random.Generator, eeg: Eeg, bank: np.ndarray) -> np.ndarray:
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
    # The waves are drawn `_MAX_LAG` samples early: an electrode `lag` samples from the
    # focus reads the wave (and its labelled windows' fractions) `lag` samples late.
    m = _MAX_LAG
    t = (np.arange(n + m) - m) / fs
    centres = eeg.offsets + EEG_WINDOW_SECONDS / 2
    fractions = eeg.fractions.astype(np.float32)[nearest_row(t, centres)]  # [m + n, 6]
    for c, name in enumerate(CLASSES):
        sig = SIGNATURES[name]
        rate = sig.eeg_hz * rng.uniform(0.95, 1.05)
        wave = _rhythm(rng, rate, n + m) if sig.eeg_kind == "rhythm" else _discharges(rng, rate, n + m)
        focus = sig.eeg_field.focus
        if focus is None:  # signatures.RANDOM_FOCUS
            focus = POSITIONS[ALL_EEG[int(rng.integers(0, len(ALL_EEG)))]]
        amplitude, lag_s = field_amplitudes(sig.eeg_field, sig.eeg_channels, focus)
        amplitude *= sig.eeg_amplitude_uv * eeg.gain * rng.uniform(0.85, 1.15, len(amplitude))
        lags = np.minimum(np.round(lag_s * fs).astype(int), m)
        if not fractions[:, c].any():
            continue
        wave *= fractions[:, c]
        for name_ch, a, lag in zip(sig.eeg_channels, amplitude.astype(np.float32), lags):
            x[EEG_CHANNELS.index(name_ch)] += a * wave[m - lag : m - lag + n]
    # Distractors: unrelated rhythms (alpha, slowing, ...) on a random channel group.
    for _ in range(int(rng.poisson(1.2))):
        group = (LEFT, RIGHT, ALL_EEG)[int(rng.integers(0, 3))]
        channels = [EEG_CHANNELS.index(name) for name in group]
        wave = _rhythm(rng, rng.uniform(0.8, 16.0), n) * np.float32(rng.uniform(8, 30))
        x[channels] += wave[None, :] * rng.uniform(0.7, 1.3, (len(channels), 1)).astype(np.float32)

    # EKG: QRS spikes at 60-100 bpm on a wandering baseline.
    ekg = EEG_CHANNELS.index(EKG)
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
