"""What each class leaves in the synthetic data, scaled by its vote fraction.

The signal. Every class has a signature (`SIGNATURES`): in the spectrogram a band of
frequency rows boosted in some of the four chains; in the EEG a rhythm or a train of
periodic discharges at the band's centre frequency, with a spatial field over the scalp.
A labelled row adds each class's signature scaled by its vote fraction. In a train
spectrogram the columns of the row's 300-column window
(`features.spectrogram.window_start(offset)` ..+300) carry the signature of the row whose
window centre is nearest (Voronoi split), so every row's own signature sits in its own
window and its centre; in a test spectrogram the one row covers all 300 columns. On top:
per-recording background slope and level, per-cell noise, broadband artefact columns,
"distractor" bumps at random bands and chains, band jitter and a per-EEG signal gain, so
the task is learnable but not trivial.

A distinction only the raw EEG holds: GPD and GRDA. Their spectrogram signatures are
identical (band 2.4-3.6 Hz, all four chains, steady texture), so the synthetic Kaggle
spectrogram carries no information separating them: one 2-s column averages six cycles.
In the EEG both fire at the same ~3 Hz rate on the same field with the same fundamental
amplitude (`GPD_FUNDAMENTAL_RATIO`), but GPD is a train of sharp discharges (a 20-ms spike
and an after-going slow wave) and GRDA a smooth sinusoid: they differ at sub-second scale,
which an EEG view (bipolar montage, short-time spectra at 1/6 s) sees as GPD's comb of
harmonics up to ~15 Hz. Choosing this pair: the two are told apart in the clinic by
morphology (discharges with an interval vs a rhythm without one) at overlapping delta
rates, both are generalized so their spectrogram chains already agree, and LPD/LRDA keep
the lateralized distinction that the spectrogram does see (left vs right, dashes vs steady).

Fields survive the bipolar montage. A wave common to every electrode at near-equal
amplitude cancels in the double banana's differences, so each class's EEG amplitude
follows a field: `floor + (1 - floor) * exp(-d**2 / (2 * width**2))` of the distance d of
an electrode (`POSITIONS`, a 2-D 10-20 projection) from the class's focus, times a
per-electrode jitter, and the wave reaches an electrode `lag_s_per_unit * d` seconds after
the focus (propagation; for GPD/GRDA the 50-80 ms anterior-posterior lag of triphasic
waves). GPD/GRDA are bifrontal, LPD left and LRDA right centro-temporal, "other" posterior,
a seizure starts at a random electrode of each EEG and spreads. On the chains a field
covers, a bipolar link keeps 28-57 % of the wave's rms at the focus (chain means; single
links up to 54-78 %), where version 1's near-uniform fields (amplitude uniform(0.7, 1.3) on
every channel of the group) kept ~25 %; a lag of a few tens of ms keeps more of a 20-ms
spike than of a slow wave, so GPD's sharp component survives the montage best. Amplitudes
are those of the wave at the focus (GPD's peak 120 uV, as triphasic waves reach).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hms_offline.constants import CLASSES, EEG_CHANNELS, SPECTROGRAM_REGIONS

LEFT = ("Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1")
RIGHT = ("Fp2", "F4", "C4", "P4", "F8", "T4", "T6", "O2")
EKG = "EKG"
ALL_EEG = tuple(name for name in EEG_CHANNELS if name != EKG)

# Electrode positions, a 2-D projection of the 10-20 system: x to the right ear, y to the
# nose, the outer ring (Fp, F7/8, T3/4, T5/6, O) on the unit circle.
POSITIONS: dict[str, tuple[float, float]] = {
    "Fp1": (-0.31, 0.95), "Fp2": (0.31, 0.95),
    "F7": (-0.81, 0.59), "F3": (-0.42, 0.52), "Fz": (0.0, 0.5), "F4": (0.42, 0.52), "F8": (0.81, 0.59),
    "T3": (-1.0, 0.0), "C3": (-0.5, 0.0), "Cz": (0.0, 0.0), "C4": (0.5, 0.0), "T4": (1.0, 0.0),
    "T5": (-0.81, -0.59), "P3": (-0.42, -0.52), "Pz": (0.0, -0.5), "P4": (0.42, -0.52), "T6": (0.81, -0.59),
    "O1": (-0.31, -0.95), "O2": (0.31, -0.95),
}
assert set(POSITIONS) == set(ALL_EEG)
RANDOM_FOCUS = None  # a Field whose focus is a random electrode, drawn per EEG


@dataclass(frozen=True)
class Field:
    """Where on the scalp a class's EEG wave is, and how it spreads from there."""

    focus: tuple[float, float] | None  # in POSITIONS' frame; RANDOM_FOCUS: one electrode per EEG
    width: float  # of the Gaussian fall-off, in the same units
    floor: float  # relative amplitude far from the focus
    lag_s_per_unit: float  # propagation: seconds of delay per unit of distance from the focus


@dataclass(frozen=True)
class Signature:
    """What one class adds, scaled by its vote fraction."""

    band_hz: tuple[float, float]  # spectrogram frequency rows boosted
    chains: tuple[str, ...]  # spectrogram regions (of SPECTROGRAM_REGIONS) boosted
    eeg_hz: float  # EEG rhythm / discharge rate
    eeg_kind: str  # "rhythm" (sinusoid + harmonic) or "discharges" (periodic sharp waves)
    eeg_channels: tuple[str, ...]
    eeg_amplitude_uv: float  # peak of the wave at the field's maximum
    eeg_field: Field
    # How the spectrogram band varies along time: "steady", "dashes" (on/off every few
    # columns, periodic discharges), "waxing" (slow swell, an evolving seizure) or
    # "bursts" (blocks of tens of columns on and off).
    texture: str


# A discharge of peak 1 (eegs._discharges) at 3 Hz has a fundamental of amplitude ~0.47:
# GRDA's sinusoid is scaled by it so that both hold the same power at their shared rate.
GPD_FUNDAMENTAL_RATIO = 0.47
_BIFRONTAL = Field((0.0, 1.15), width=0.9, floor=0.1, lag_s_per_unit=0.04)
_GPD_GRDA_HZ, _GPD_GRDA_BAND, _GPD_UV = 3.0, (2.4, 3.6), 120.0

SIGNATURES: dict[str, Signature] = {
    "seizure": Signature((6.2, 8.6), SPECTROGRAM_REGIONS, 7.4, "rhythm", ALL_EEG, 45.0,
                         Field(RANDOM_FOCUS, 0.7, 0.25, 0.025), "waxing"),
    "lpd": Signature((0.9, 2.2), ("LL", "LP"), 1.5, "discharges", LEFT, 70.0,
                     Field((-0.75, 0.1), 0.5, 0.0, 0.02), "dashes"),
    "gpd": Signature(_GPD_GRDA_BAND, SPECTROGRAM_REGIONS, _GPD_GRDA_HZ, "discharges", ALL_EEG, _GPD_UV,
                     _BIFRONTAL, "steady"),
    "lrda": Signature((0.9, 2.2), ("RL", "RP"), 1.5, "rhythm", RIGHT, 45.0,
                      Field((0.75, 0.1), 0.5, 0.0, 0.02), "steady"),
    "grda": Signature(_GPD_GRDA_BAND, SPECTROGRAM_REGIONS, _GPD_GRDA_HZ, "rhythm", ALL_EEG,
                      _GPD_UV * GPD_FUNDAMENTAL_RATIO, _BIFRONTAL, "steady"),
    "other": Signature((12.0, 16.0), SPECTROGRAM_REGIONS, 14.0, "rhythm", ALL_EEG, 20.0,
                       Field((0.0, -1.15), 0.8, 0.3, 0.015), "bursts"),
}
assert tuple(SIGNATURES) == CLASSES
# The pair only the EEG tells apart: everything the spectrogram draws from is the same.
EEG_ONLY_PAIR = ("gpd", "grda")
assert len({(SIGNATURES[c].band_hz, SIGNATURES[c].chains, SIGNATURES[c].texture) for c in EEG_ONLY_PAIR}) == 1


def field_amplitudes(field: Field, channels: tuple[str, ...], focus: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Relative amplitude (1 at the focus) and delay in seconds of the field at each channel."""
    xy = np.array([POSITIONS[name] for name in channels])
    distance = np.hypot(*(xy - np.asarray(focus)).T)
    amplitude = field.floor + (1 - field.floor) * np.exp(-0.5 * (distance / field.width) ** 2)
    return amplitude, field.lag_s_per_unit * distance


def nearest_row(positions: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """For each position (a spectrogram column, an EEG sample), the labelled row whose window centre is nearest."""
    return np.abs(positions[:, None] - centres[None, :]).argmin(axis=1)
