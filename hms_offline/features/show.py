"""`python -m hms_offline show`: one sample as the models see it, in one PNG.

The Kaggle spectrogram's model window and the EEG view (each the image a model is shown,
its first channel), the 16 band-passed bipolar traces of the 50-second EEG window, and the
ensemble's predicted distribution beside the experts' votes where train.csv holds them:
what a competitor looks at when a prediction surprises them. A train sample is cut at its
eeg_id's first labelled row's offsets; a test sample is its files whole, as the kernel reads them.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.constants import (BIPOLAR_CHAINS, CLASSES, EEG_SAMPLE_RATE_HZ, ID_COLUMN, SPECTROGRAM_REGIONS,
                                   VOTE_COLUMNS)
from hms_offline.features import eeg as eeg_view
from hms_offline.features.sources import EEG, SPECTROGRAM
from hms_offline.features.spectrogram import VIEW_NAME as KAGGLE_VIEW
from hms_offline.features.views import get_view
from hms_offline.figures import pyplot, save_figure

FIGURE_INCHES = (14, 9)
FIGURE_DPI = 100  # the PNG is 1400 x 900 pixels


@dataclass
class Sample:
    """One sample's recordings: where it comes from, its arrays and label offsets (None:
    a test file, whole), and its true vote fractions when known."""

    eeg_id: int
    spectrogram_id: int
    origin: str  # "train.csv label_id N" or "test.csv"
    arrays: dict  # source name -> converted array (spectrogram [400, T], EEG [T, 20])
    offsets: dict  # source name -> label offset in seconds, or None
    truth: np.ndarray | None = None

    def image(self, view: str) -> np.ndarray:
        return get_view(view).image(self.arrays, self.offsets)


def find_sample(data_dir: Path, eeg_id: int, labels: Path | None = None) -> Sample:
    """The sample of `eeg_id`: its first labelled row in train.csv (or `labels`), else its row
    of test.csv; its parquet files read and converted as training and the kernel do."""
    from hms_offline.convert import find_parquet, read_eeg, read_spectrogram

    data_dir = Path(data_dir)
    train_csv = Path(labels) if labels else data_dir / "train.csv"
    row, split = None, "test"
    if train_csv.is_file():
        train = pd.read_csv(train_csv)
        rows = train[train[ID_COLUMN] == eeg_id]
        if len(rows):
            row, split = rows.iloc[0], "train"
    if row is None:
        test = pd.read_csv(data_dir / "test.csv")
        rows = test[test[ID_COLUMN] == eeg_id]
        if rows.empty:
            looked = f"{train_csv} and " if train_csv.is_file() else ""
            raise ValueError(f"eeg_id {eeg_id} is in neither {looked}{data_dir / 'test.csv'}")
        row = rows.iloc[0]
    spectrogram_id = int(row[SPECTROGRAM.id_column])
    folder = {SPECTROGRAM.name: SPECTROGRAM.train_folder if split == "train" else SPECTROGRAM.test_folder,
              EEG.name: EEG.train_folder if split == "train" else EEG.test_folder}
    arrays = {
        SPECTROGRAM.name: read_spectrogram(find_parquet(data_dir / folder[SPECTROGRAM.name], str(spectrogram_id))),
        EEG.name: read_eeg(find_parquet(data_dir / folder[EEG.name], str(eeg_id))),
    }
    if split == "train":
        votes = row[list(VOTE_COLUMNS)].to_numpy(dtype=np.float64)
        offsets = {name: float(row[source.offset_column]) for name, source in
                   ((SPECTROGRAM.name, SPECTROGRAM), (EEG.name, EEG))}
        return Sample(eeg_id, spectrogram_id, f"{train_csv.name} label_id {row['label_id']}", arrays, offsets,
                      votes / votes.sum())
    return Sample(eeg_id, spectrogram_id, "test.csv", arrays, {SPECTROGRAM.name: None, EEG.name: None})


def bipolar_traces(sample: Sample) -> np.ndarray:
    """`[16, 10000]` band-passed bipolar signals of the EEG window, as the EEG view reads them."""
    window = eeg_view.eeg_window(sample.arrays[EEG.name], sample.offsets[EEG.name])
    return eeg_view.band_pass(eeg_view.bipolar(window))


def draw_sample(sample: Sample, predicted: np.ndarray | None, output: Path, models: str = "") -> Path:
    """The PNG of the sample (FIGURE_INCHES x FIGURE_DPI pixels)."""
    plt = pyplot()
    figure = plt.figure(figsize=FIGURE_INCHES)
    grid = figure.add_gridspec(2, 3, width_ratios=(1, 1, 0.8))
    title = f"eeg_id {sample.eeg_id}, spectrogram {sample.spectrogram_id} ({sample.origin})"
    _draw_image(figure.add_subplot(grid[0, 0]), sample.image(KAGGLE_VIEW)[..., 0],
                "Kaggle spectrogram window (model input, 10 min)", 600)
    _draw_image(figure.add_subplot(grid[0, 1]), sample.image(eeg_view.VIEW_NAME)[..., 0],
                "EEG view: bipolar STFT (model input, 50 s)", 50)
    _draw_traces(figure.add_subplot(grid[1, :2]), bipolar_traces(sample))
    _draw_distributions(figure.add_subplot(grid[:, 2]), predicted, sample.truth, models)
    figure.suptitle(title)
    return save_figure(figure, output, dpi=FIGURE_DPI)


def _draw_image(axes, image: np.ndarray, title: str, seconds: float) -> None:
    axes.imshow(image, aspect="auto", origin="upper", cmap="magma", extent=(0, seconds, image.shape[0], 0))
    blocks = image.shape[0] // len(SPECTROGRAM_REGIONS)
    axes.set_yticks([blocks * (i + 0.5) for i in range(len(SPECTROGRAM_REGIONS))], SPECTROGRAM_REGIONS)
    for i in range(1, len(SPECTROGRAM_REGIONS)):
        axes.axhline(blocks * i, color="white", linewidth=0.6)
    axes.set(title=title, xlabel="seconds", ylabel="chain (0.6 -> 20 Hz downwards in each)")


def _draw_traces(axes, traces: np.ndarray) -> None:
    seconds = np.arange(traces.shape[1]) / EEG_SAMPLE_RATE_HZ
    spread = 4 * float(np.median(np.std(traces, axis=1))) or 1.0
    names = [f"{a}-{b}" for chain in BIPOLAR_CHAINS for a, b in chain]
    for i, trace in enumerate(traces):
        axes.plot(seconds, trace - i * spread, linewidth=0.4, color=f"C{i // 4}")
    axes.set_yticks([-i * spread for i in range(len(names))], names, fontsize=7)
    axes.set(title="bipolar montage, band-passed 0.5-20 Hz (50 s)", xlabel="seconds", xlim=(0, seconds[-1]))


def _draw_distributions(axes, predicted, truth, models: str) -> None:
    positions = np.arange(len(CLASSES))
    bars = [("predicted" + (f" ({models})" if models else ""), predicted, -0.2), ("expert votes", truth, 0.2)]
    for label, values, shift in bars:
        if values is not None:
            axes.barh(positions + shift, values, height=0.4, label=label)
    axes.set_yticks(positions, CLASSES)
    axes.invert_yaxis()
    axes.set(xlim=(0, 1), xlabel="probability",
             title="distribution" if predicted is not None or truth is not None else "no model, no votes")
    if predicted is not None or truth is not None:
        axes.legend(loc="lower right", fontsize="small")
