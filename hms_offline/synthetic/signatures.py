"""What each class leaves in the synthetic data, scaled by its vote fraction.

The signal. Every class has a signature (`SIGNATURES`): in the spectrogram a band of
frequency rows boosted in some of the four chains; in the EEG a rhythm or a train of
periodic discharges at the band's centre frequency on a group of channels. A labelled
row adds each class's signature scaled by its vote fraction. In a train spectrogram the
columns of the row's 300-column window (`features.spectrogram.window_start(offset)` ..+300) carry
the signature of the row whose window centre is nearest (Voronoi split), so every row's
own signature sits in its own window and its centre; in a test spectrogram the one row
covers all 300 columns. On top: per-recording background slope and level, per-cell
noise, broadband artefact columns, "distractor" bumps at random bands and chains,
band jitter and a per-EEG signal gain, so the task is learnable but not trivial.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hms_offline.constants import CLASSES, EEG_CHANNELS, SPECTROGRAM_REGIONS

LEFT = ("Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1")
RIGHT = ("Fp2", "F4", "C4", "P4", "F8", "T4", "T6", "O2")
EKG = "EKG"
ALL_EEG = tuple(name for name in EEG_CHANNELS if name != EKG)


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
    "seizure": Signature((6.2, 8.6), SPECTROGRAM_REGIONS, 7.4, "rhythm", ALL_EEG, 35.0, "waxing"),
    "lpd": Signature((0.9, 2.2), ("LL", "LP"), 1.5, "discharges", LEFT, 60.0, "dashes"),
    "gpd": Signature((2.6, 3.8), SPECTROGRAM_REGIONS, 3.2, "discharges", ALL_EEG, 55.0, "dashes"),
    "lrda": Signature((0.9, 2.2), ("RL", "RP"), 1.5, "rhythm", RIGHT, 35.0, "steady"),
    "grda": Signature((4.2, 5.4), SPECTROGRAM_REGIONS, 4.8, "rhythm", ALL_EEG, 30.0, "steady"),
    "other": Signature((12.0, 16.0), SPECTROGRAM_REGIONS, 14.0, "rhythm", ALL_EEG, 12.0, "bursts"),
}
assert tuple(SIGNATURES) == CLASSES


def nearest_row(positions: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """For each position (a spectrogram column, an EEG sample), the labelled row whose window centre is nearest."""
    return np.abs(positions[:, None] - centres[None, :]).argmin(axis=1)
