"""The Kaggle spectrogram view and the EEG view stacked into one image: channel 0 is the Kaggle
view, channel 1 the EEG view, channel 2 their mean.

Their rows line up (LL, RL, LP, RP x the same 100 frequencies); their columns do not cover
the same time: the Kaggle window is 10 minutes (2 s a column), the EEG window the label's
50 s (a column every 0.165 s), both centred on the label's window when the recordings are
aligned.
"""

import copy

import numpy as np

from hms_offline.features import eeg, spectrogram

VIEW_NAME = "kaggle_eeg_stacked"
CHANNEL_ORDER = (spectrogram.VIEW_NAME, eeg.VIEW_NAME, "mean")
VIEW_PARAMS = {
    "channel_order": list(CHANNEL_ORDER),
    spectrogram.VIEW_NAME: copy.deepcopy(spectrogram.VIEW_PARAMS),
    eeg.VIEW_NAME: copy.deepcopy(eeg.VIEW_PARAMS),
}


def model_input(
    spectrogram_array: np.ndarray,
    eeg_array: np.ndarray,
    spectrogram_offset_seconds: float | None = None,
    eeg_offset_seconds: float | None = None,
) -> np.ndarray:
    """`[400, T]` spectrogram and `[T, 20]` EEG (+ their label offsets) -> `[400, 300, 3]` float32."""
    kaggle = spectrogram.log_standardize(spectrogram.cut_window(spectrogram_array, spectrogram_offset_seconds))
    from_eeg = eeg.image(eeg_array, eeg_offset_seconds)
    return np.stack([kaggle, from_eeg, (kaggle + from_eeg) / 2], axis=-1)
