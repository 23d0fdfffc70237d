"""The recordings an input view reads, by source name: which id names a recording's file,
which train.csv column holds a label's offset into it, and the competition's folders of them.

A view (features/views.py) lists the sources it needs; training converts
`<data>/<train_folder>/*.parquet` and the kernel `<data>/<test_folder>/*.parquet` of those
sources only, each to `<id>.npy` (hms_offline.convert).
"""

from dataclasses import dataclass

from hms_offline.constants import ID_COLUMN


@dataclass(frozen=True)
class Source:
    name: str
    id_column: str  # in train.csv and test.csv: the recording's file is `<id>.parquet`
    offset_column: str  # in train.csv: where the label's window starts, in seconds
    train_folder: str
    test_folder: str


SPECTROGRAM = Source("spectrogram", "spectrogram_id", "spectrogram_label_offset_seconds",
                     "train_spectrograms", "test_spectrograms")
EEG = Source("eeg", ID_COLUMN, "eeg_label_offset_seconds", "train_eegs", "test_eegs")
SOURCES = {source.name: source for source in (SPECTROGRAM, EEG)}
