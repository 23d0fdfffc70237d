"""THE EEG -> model-input transform, shared by training and inference.

A label's 50 s of raw EEG becomes an image laid out like the Kaggle spectrogram: 4 bipolar
chains (LL, RL, LP, RP) x Kaggle's 100 frequencies (0.59 ... 19.92 Hz, ascending) as rows,
300 time columns. Step by step:

1. The window: 10,000 samples at 200 Hz from the label offset (a test file: the centred
   10,000). Each missing value (NaN, +-inf, past the end) is its channel's mean over the
   window's finite samples, 0 when it has none. The fill is inside the window, so a window
   cut from a long training recording and a test file of the same samples give one image.
2. The "double banana" montage (constants.BIPOLAR_CHAINS): 16 differences a - b, chain-major.
3. A zero-phase Butterworth band-pass, order 4, 0.5-20 Hz (`sosfiltfilt`, odd extension of
   FILTER_PADLEN = 27 samples: scipy's default for these 4 sections, spelled out).
4. An STFT whose grid is Kaggle's: a periodic Hann window of 256 samples (1.28 s), zero-padded
   to an FFT of 1024, whose bin k is k * 25/128 Hz; Kaggle's frequencies are bins 3 ... 102.
   Frame j (0 ... 299) is centred on sample 66 + 33 j, 66 samples in from either end of the
   window, and covers samples [centre - 128, centre + 128), zeros outside the window. This
   is `scipy.signal.ShortTimeFFT(hann, hop=33, fs=200, mfft=1024).stft(x, p0=2, p1=302,
   k_offset=0, padding="zeros")` (tests/features/test_eeg.py holds the two equal), computed
   here with only the 100 bins kept, in float32, about twice as fast.
5. Power |X|^2, averaged over each chain's 4 pairs -> `[400, 300]`.
6. `log(power + LOG_FLOOR)`, standardised per image as the Kaggle view is, tiled to 3
   channels. The floor, 1.0, is the power of white noise of about 0.1 uV (real EEG is tens of
   uV): a flat or missing channel gives log(1) = 0, finite, not far below real signal.

scipy is imported on first use, not with this module: `scipy.signal` takes about a second to
import, and the manifest check imports the views' parameters only.
"""

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from hms_offline.constants import (
    BIPOLAR_CHAINS,
    EEG_CHANNELS,
    EEG_SAMPLE_RATE_HZ,
    EEG_WINDOW_SAMPLES,
    FREQUENCY_FFT_LENGTH,
    FREQUENCY_FIRST_BIN,
    IMAGE_CHANNELS,
    N_FREQUENCIES,
    SPECTROGRAM_REGIONS,
    STANDARDIZE_EPSILON,
    WINDOW_COLUMNS,
)

BAND_HZ = (0.5, 20.0)
FILTER_ORDER = 4
STFT_WINDOW = "hann"  # periodic (DFT-even), scipy's get_window default
STFT_WINDOW_SAMPLES = 256
HOP_SAMPLES = 33
# The 300 frames' centres spread symmetrically: (10,000 - 1 - 299 * 33) / 2 = 66 = 2 hops.
FIRST_FRAME_CENTRE = (EEG_WINDOW_SAMPLES - 1 - (WINDOW_COLUMNS - 1) * HOP_SAMPLES) // 2
FRAME_CENTRES = FIRST_FRAME_CENTRE + HOP_SAMPLES * np.arange(WINDOW_COLUMNS)  # 66 ... 9933
LOG_FLOOR = 1.0
# sosfiltfilt's own default padlen for the filter's 4 sections, fixed here so that a scipy
# change cannot move it (tests/features/test_eeg.py recomputes it).
FILTER_PADLEN = 27

_INDEX = {name: i for i, name in enumerate(EEG_CHANNELS)}
_PAIR_A = np.array([_INDEX[a] for chain in BIPOLAR_CHAINS for a, _ in chain])
_PAIR_B = np.array([_INDEX[b] for chain in BIPOLAR_CHAINS for _, b in chain])
# The electrodes the montage reads: 16 of the 19 (Fz, Cz, Pz and EKG are not in it).
MONTAGE_CHANNELS = np.unique(np.concatenate([_PAIR_A, _PAIR_B]))

VIEW_NAME = "eeg_bipolar_stft"
VIEW_PARAMS = {
    "sample_rate_hz": EEG_SAMPLE_RATE_HZ,
    "window_samples": EEG_WINDOW_SAMPLES,
    "missing_fill": "window_channel_mean",
    "chains": list(SPECTROGRAM_REGIONS),
    "montage": [[list(pair) for pair in chain] for chain in BIPOLAR_CHAINS],
    "band_hz": list(BAND_HZ),
    "filter": "butterworth_sosfiltfilt",
    "filter_order": FILTER_ORDER,
    "filter_padding": "odd",
    "filter_padlen": FILTER_PADLEN,
    "stft_window": "hann_periodic",
    "stft_window_samples": STFT_WINDOW_SAMPLES,
    "fft_length": FREQUENCY_FFT_LENGTH,
    "hop_samples": HOP_SAMPLES,
    "first_frame_centre": FIRST_FRAME_CENTRE,
    "frame_padding": "zeros",
    "first_bin": FREQUENCY_FIRST_BIN,
    "bins": N_FREQUENCIES,
    "columns": WINDOW_COLUMNS,
    "power": "chain_mean_abs_squared",
    "log_floor": LOG_FLOOR,
    "epsilon": STANDARDIZE_EPSILON,
    "channels": IMAGE_CHANNELS,
}


@functools.cache
def filter_sos() -> np.ndarray:
    """The band-pass as second-order sections."""
    from scipy import signal

    return signal.butter(FILTER_ORDER, BAND_HZ, btype="bandpass", fs=EEG_SAMPLE_RATE_HZ, output="sos")


@functools.cache
def _stft_window() -> np.ndarray:
    from scipy import signal

    return signal.get_window(STFT_WINDOW, STFT_WINDOW_SAMPLES).astype(np.float32)


def _raw_window(eeg: np.ndarray, offset_seconds: float | None) -> np.ndarray:
    """The window's 10,000 samples as float64, NaN past the end of the recording."""
    eeg = np.asarray(eeg)
    if eeg.ndim != 2 or eeg.shape[1] != len(EEG_CHANNELS):
        raise ValueError(f"expected a [T, {len(EEG_CHANNELS)}] EEG, got shape {eeg.shape}")
    if offset_seconds is None:
        start = max(0, (eeg.shape[0] - EEG_WINDOW_SAMPLES) // 2)
    elif not (math.isfinite(offset_seconds) and offset_seconds >= 0):
        raise ValueError(f"offset_seconds must be a finite number >= 0, got {offset_seconds}")
    else:
        start = int(round(offset_seconds * EEG_SAMPLE_RATE_HZ))
    window = np.full((EEG_WINDOW_SAMPLES, eeg.shape[1]), np.nan)
    part = eeg[start : start + EEG_WINDOW_SAMPLES]
    window[: len(part)] = part
    return window


def eeg_window(eeg: np.ndarray, offset_seconds: float | None = None) -> np.ndarray:
    """`[T, 20]` EEG -> its `[10000, 20]` float32 window, every missing value filled with its
    channel's mean over the window's finite samples (0 when there are none)."""
    window = _raw_window(eeg, offset_seconds)
    finite = np.isfinite(window)
    counts = finite.sum(axis=0)
    sums = np.where(finite, window, 0.0).sum(axis=0)
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return np.where(finite, window, means).astype(np.float32)


def bipolar(window: np.ndarray) -> np.ndarray:
    """`[10000, 20]` window -> `[16, 10000]` float64 differences, chain-major (BIPOLAR_CHAINS)."""
    window = np.asarray(window, dtype=np.float64)
    return (window[:, _PAIR_A] - window[:, _PAIR_B]).T


def band_pass(pairs: np.ndarray) -> np.ndarray:
    """Zero-phase Butterworth band-pass along the last axis (time)."""
    from scipy import signal

    return signal.sosfiltfilt(filter_sos(), pairs, axis=-1, padtype="odd", padlen=FILTER_PADLEN)


def stft_power(pairs: np.ndarray) -> np.ndarray:
    """`[P, 10000]` signals -> `[P, 100, 300]` power |X|^2 on Kaggle's frequencies (float64).

    The FFT runs in float32 on the signals scaled to a peak of 1, where no power can overflow
    (|X| <= 128); the power is scaled back in float64."""
    from scipy import fft

    peak = float(np.abs(pairs).max(initial=0.0))
    scale = peak if peak > 0 else 1.0
    half = STFT_WINDOW_SAMPLES // 2
    padded = np.pad((pairs / scale).astype(np.float32), ((0, 0), (half, half)))
    # Frame j starts at padded index FRAME_CENTRES[j], i.e. at sample FRAME_CENTRES[j] - 128.
    frames = sliding_window_view(padded, STFT_WINDOW_SAMPLES, axis=-1)[:, FRAME_CENTRES]
    power = np.empty((len(pairs), WINDOW_COLUMNS, N_FREQUENCIES), dtype=np.float32)
    hann = _stft_window()
    for i, pair_frames in enumerate(frames):  # one pair at a time: its spectrum stays in cache
        spectrum = fft.rfft(pair_frames * hann, n=FREQUENCY_FFT_LENGTH, axis=-1)
        power[i] = np.abs(spectrum[:, FREQUENCY_FIRST_BIN : FREQUENCY_FIRST_BIN + N_FREQUENCIES]) ** 2
    return power.transpose(0, 2, 1).astype(np.float64) * scale**2


def chain_power(window: np.ndarray) -> np.ndarray:
    """`[10000, 20]` filled window -> `[400, 300]` power: each chain's mean over its 4 pairs,
    chains in SPECTROGRAM_REGIONS order, frequency ascending within each."""
    power = stft_power(band_pass(bipolar(window)))
    chains = power.reshape(len(BIPOLAR_CHAINS), -1, N_FREQUENCIES, WINDOW_COLUMNS).mean(axis=1)
    return chains.reshape(-1, WINDOW_COLUMNS)


def log_standardize(power: np.ndarray) -> np.ndarray:
    """`log(power + LOG_FLOOR)`, standardised by the image's own mean and standard deviation."""
    logged = np.log(power + LOG_FLOOR)
    return ((logged - logged.mean()) / (logged.std() + STANDARDIZE_EPSILON)).astype(np.float32)


def image(eeg: np.ndarray, offset_seconds: float | None = None) -> np.ndarray:
    """`[T, 20]` EEG -> the one-channel `[400, 300]` float32 image."""
    return log_standardize(chain_power(eeg_window(eeg, offset_seconds)))


def model_input(eeg: np.ndarray, offset_seconds: float | None = None) -> np.ndarray:
    """`[T, 20]` EEG (+ optional label offset in seconds) -> `[400, 300, 3]` float32."""
    return np.repeat(image(eeg, offset_seconds)[..., None], IMAGE_CHANNELS, axis=-1)


def signal_fraction(eeg: np.ndarray, offset_seconds: float | None = None) -> float:
    """The share of the window's samples of the montage's 16 electrodes that are finite
    before filling (a sample past the end of the recording is not): 0 for an empty or
    all-NaN recording, whose image would be constant."""
    window = _raw_window(eeg, offset_seconds)[:, MONTAGE_CHANNELS]
    return float(np.count_nonzero(np.isfinite(window)) / window.size)
