"""THE spectrogram -> model-input transform, shared by training and inference.

It reproduces the KerasCV starter: cut a 300-column window (by label offset, or the
centre of the recording when no offset is known), right-pad with zeros, clip to
[exp(-4), exp(8)], take the log, standardise per sample, tile to 3 channels.
"""

import numpy as np

from hms_offline.constants import (
    IMAGE_CHANNELS,
    IMAGE_HEIGHT,
    LOG_CLIP_MAX_EXPONENT,
    LOG_CLIP_MIN_EXPONENT,
    SPECTROGRAM_STEP_SECONDS,
    STANDARDIZE_EPSILON,
    WINDOW_COLUMNS,
)

# This transform as an input view (features/views.py): its name and parameters are recorded in
# every weights manifest entry, and the kernel refuses a model trained with other ones.
VIEW_NAME = "starter_log_standardize"
VIEW_PARAMS = {
    "window_columns": WINDOW_COLUMNS,
    "offset_divisor_seconds": SPECTROGRAM_STEP_SECONDS,
    "clip_min_exponent": LOG_CLIP_MIN_EXPONENT,
    "clip_max_exponent": LOG_CLIP_MAX_EXPONENT,
    "epsilon": STANDARDIZE_EPSILON,
    "channels": IMAGE_CHANNELS,
}


def window_start(n_columns: int, offset_seconds: float | None) -> int:
    """First column of the 300-column window.

    With a label offset it is `offset // 2` as in the starter; without one, a recording
    of 300 columns or fewer starts at 0 and a longer one is centred.
    """
    if offset_seconds is None:
        return max(0, (n_columns - WINDOW_COLUMNS) // 2)
    if offset_seconds < 0:
        raise ValueError(f"offset_seconds must be >= 0, got {offset_seconds}")
    return int(offset_seconds // SPECTROGRAM_STEP_SECONDS)


def cut_window(spectrogram: np.ndarray, offset_seconds: float | None = None) -> np.ndarray:
    """`[400, T]` power spectrogram -> `[400, 300]` window, right-padded with zeros."""
    if spectrogram.ndim != 2 or spectrogram.shape[0] != IMAGE_HEIGHT:
        raise ValueError(f"expected a [{IMAGE_HEIGHT}, T] spectrogram, got shape {spectrogram.shape}")
    start = window_start(spectrogram.shape[1], offset_seconds)
    window = spectrogram[:, start : start + WINDOW_COLUMNS].astype(np.float32, copy=False)
    pad = WINDOW_COLUMNS - window.shape[1]
    if pad > 0:
        window = np.pad(window, ((0, 0), (0, pad)))
    return window


# The clip range as float32: the window is computed in float32, in place.
CLIP_MIN = np.float32(np.exp(LOG_CLIP_MIN_EXPONENT))
CLIP_MAX = np.float32(np.exp(LOG_CLIP_MAX_EXPONENT))


def log_standardize(window: np.ndarray) -> np.ndarray:
    """Clip, log, and standardise one window by its own mean and standard deviation.

    A NaN counts as no power, as conversion fills it with 0 (`fmax` drops it for the lower
    bound); +-inf is clipped like any value, so the output is finite for any input. The values
    stay float32, computed in place (no new arrays but the result and one square); the mean and
    variance are summed in float64 and the mean subtracted in two float32 parts, so a
    near-constant window standardises to its true deviations (0 for a constant one), not to
    float32 rounding noise divided by a tiny standard deviation."""
    logged = np.fmax(window.astype(np.float32, copy=False), CLIP_MIN)
    np.fmin(logged, CLIP_MAX, out=logged)
    np.log(logged, out=logged)
    mean = logged.mean(dtype=np.float64)
    head = np.float32(mean)
    centred = np.subtract(logged, head, out=logged)  # exact where a value is near the mean
    centred -= np.float32(mean - np.float64(head))  # and the mean's float32 rounding, apart
    std = np.sqrt(np.square(centred).mean(dtype=np.float64))
    return np.divide(centred, np.float32(std + STANDARDIZE_EPSILON), out=centred)


def tile_channels(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`[..., H, W]` -> `[..., H, W, 3]` (into `out` when given), the shape ImageNet-style
    backbones take."""
    if out is None:
        out = np.empty((*image.shape, IMAGE_CHANNELS), dtype=image.dtype)
    for channel in range(IMAGE_CHANNELS):  # three strided copies: faster than np.repeat's
        out[..., channel] = image
    return out


def model_input(spectrogram: np.ndarray, offset_seconds: float | None = None) -> np.ndarray:
    """`[400, T]` spectrogram (+ optional label offset in seconds) -> `[400, 300, 3]` float32."""
    return tile_channels(log_standardize(cut_window(spectrogram, offset_seconds)))


def signal_fraction(spectrogram: np.ndarray) -> float:
    """The share of the model window's cells that hold power (finite and > 0): 0 for an
    empty, all-NaN (filled with 0) or all-inf recording, whose image would be constant."""
    window = cut_window(spectrogram)
    return float(np.count_nonzero(np.isfinite(window) & (window > 0)) / window.size)
