"""The input views a model may be trained on, by name: what a weights manifest entry's `input`
names, and what the kernel checks before it runs the model.

An entry records its view as `{"name": ..., "params": {...}}`; the kernel refuses an entry
whose view this code does not implement, or whose parameters differ from the implementation's
(hms_offline.models.manifest). Three views exist, each a module of its own:

- `starter_log_standardize` (features/spectrogram.py): the KerasCV starter's transform of
  the Kaggle spectrogram;
- `eeg_bipolar_stft` (features/eeg.py): the raw EEG's bipolar-montage spectrogram;
- `kaggle_eeg_stacked` (features/stacked.py): the two as the channels of one image.

Every view lays its `[400, 300, 3]` image out alike: rows in 4 blocks of 100 frequencies,
LL, RL, LP, RP (constants.SPECTROGRAM_REGIONS). So one row permutation, MIRROR_ROWS, swaps
left and right in every view.
"""

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from hms_offline.constants import IMAGE_HEIGHT, IMAGE_SHAPE, N_FREQUENCIES, SPECTROGRAM_REGIONS
from hms_offline.features import eeg, spectrogram, stacked
from hms_offline.features.sources import EEG, SPECTROGRAM

# Source name -> the share of its test window that holds signal (the kernel gives a sample
# the fallback when it is below its threshold); of the centred window, as at test time.
SIGNAL_FRACTIONS: dict[str, Callable[[np.ndarray], float]] = {
    SPECTROGRAM.name: spectrogram.signal_fraction,
    EEG.name: eeg.signal_fraction,
}


@dataclass(frozen=True)
class InputView:
    """One view: its name and parameters (JSON-native, as a manifest records them), the
    converted recordings it reads (`sources`), and how it makes their image: `transform`
    gives its channels, `[400, 300]` for a view whose 3 channels are one image tiled (the
    Kaggle and EEG views), `[400, 300, 3]` otherwise."""

    name: str
    params: dict = field(hash=False)
    sources: tuple[str, ...]
    transform: Callable[[Mapping, Mapping], np.ndarray] = field(repr=False, compare=False)

    def image(self, arrays: Mapping[str, np.ndarray], offsets: Mapping[str, float | None] | None = None) -> np.ndarray:
        """`[400, 300, 3]` float32 of `arrays[source]` (a `[400, T]` spectrogram, a `[T, 20]`
        EEG), each cut at `offsets[source]`, its label offset in seconds (None or absent: a
        test recording, its centre)."""
        return self.images([(arrays, offsets)])[0]

    def images(self, samples: Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, float | None] | None]],
               out: np.ndarray | None = None) -> np.ndarray:
        """`[B, 400, 300, 3]` float32 (into `out` when given), the image of each `(arrays,
        offsets)` sample: one image is a batch of one, so the training loader's batches and
        the kernel's images are the same numbers."""
        if out is None:
            out = np.empty((len(samples), *IMAGE_SHAPE), dtype=np.float32)
        for k, (arrays, offsets) in enumerate(samples):
            channels = self.transform(arrays, self._offsets(arrays, offsets))
            if channels.ndim == 2:
                spectrogram.tile_channels(channels, out=out[k])
            else:
                out[k] = channels
        return out

    def _offsets(self, arrays: Mapping, offsets: Mapping | None) -> dict:
        missing = [source for source in self.sources if source not in arrays]
        if missing:
            raise KeyError(f"input view {self.name!r} reads {list(self.sources)}; no array for {missing}")
        offsets = offsets or {}
        return {source: offsets.get(source) for source in self.sources}

    def signal_fractions(self, arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
        """{source: share of its test window holding signal} for each source the view reads."""
        return {source: SIGNAL_FRACTIONS[source](arrays[source]) for source in self.sources}


def _kaggle(arrays, offsets):
    return spectrogram.log_standardize(spectrogram.cut_window(arrays[SPECTROGRAM.name], offsets[SPECTROGRAM.name]))


def _eeg(arrays, offsets):
    return eeg.image(arrays[EEG.name], offsets[EEG.name])


def _stacked(arrays, offsets):
    return stacked.model_input(arrays[SPECTROGRAM.name], arrays[EEG.name], offsets[SPECTROGRAM.name], offsets[EEG.name])


VIEWS = {
    view.name: view
    for view in (
        InputView(spectrogram.VIEW_NAME, spectrogram.VIEW_PARAMS, (SPECTROGRAM.name,), _kaggle),
        InputView(eeg.VIEW_NAME, eeg.VIEW_PARAMS, (EEG.name,), _eeg),
        InputView(stacked.VIEW_NAME, stacked.VIEW_PARAMS, (SPECTROGRAM.name, EEG.name), _stacked),
    )
}
DEFAULT_VIEW = spectrogram.VIEW_NAME  # what training records unless told another
# training's `--input` choices -> view names
INPUT_CHOICES = {"kaggle": spectrogram.VIEW_NAME, "eeg": eeg.VIEW_NAME, "both": stacked.VIEW_NAME}


class UnknownViewError(KeyError):
    """A view name this code does not implement."""

    def __str__(self) -> str:  # the message, not KeyError's repr of it
        return str(self.args[0])


def get_view(name: str) -> InputView:
    """The view named `name`; an UnknownViewError (a KeyError) listing the known names when
    there is none."""
    view = VIEWS.get(name) if isinstance(name, str) else None
    if view is None:
        raise UnknownViewError(f"unknown input view {name!r}; this code implements {sorted(VIEWS)}")
    return view


def view_record(name: str = DEFAULT_VIEW) -> dict:
    """A view as a manifest entry's `input`: its name and a copy of its parameters."""
    return {"name": name, "params": copy.deepcopy(get_view(name).params)}


# --- left <-> right ------------------------------------------------------------------------

_MIRROR_REGION = {"LL": "RL", "RL": "LL", "LP": "RP", "RP": "LP"}
# Row i of a mirrored image is row MIRROR_ROWS[i] of the image: the LL and RL blocks
# swapped, and LP and RP, each block's frequencies in place.
MIRROR_ROWS = np.concatenate([
    SPECTROGRAM_REGIONS.index(_MIRROR_REGION[region]) * N_FREQUENCIES + np.arange(N_FREQUENCIES)
    for region in SPECTROGRAM_REGIONS
])
MIRROR_ROWS.flags.writeable = False


def mirror_left_right(image: np.ndarray) -> np.ndarray:
    """An image (`[400, W]` or `[400, W, C]`, rows on axis 0) with left and right swapped."""
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] != IMAGE_HEIGHT:
        raise ValueError(f"expected a [{IMAGE_HEIGHT}, W] or [{IMAGE_HEIGHT}, W, C] image, got shape {image.shape}")
    return image[MIRROR_ROWS]
