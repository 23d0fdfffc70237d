"""The test set as the ensemble's models see it: each test sample's recordings read from their
parquet files and turned into the input view of every model, each view once per sample.

A sample is one distinct (spectrogram_id, eeg_id) pair of test.csv. Only the recordings a
view of the ensemble needs are read (test_eegs/ is never read for an ensemble of
Kaggle-spectrogram models), straight from parquet into memory: nothing is written to disk.
The samples go in batches (`Batch`) to worker processes (serving/stream.py), which read each
distinct recording of a batch once and return the batch's images per view (`Prepared`).

A recording that has no parquet file or cannot be read (stage `convert`), holds no usable
signal (`signal`), or whose image cannot be made (`preprocess`) takes away the views that
need it for that sample; the ensemble predicts the sample from its other views, and gives it
the fallback only when none is left.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.constants import ID_COLUMN
from hms_offline.convert import (
    PARQUET_SUFFIXES, ParquetFormatError, parquet_entries, read_eeg, read_spectrogram, resolve_parquet,
)
from hms_offline.features.sources import EEG, SOURCES, SPECTROGRAM
from hms_offline.features.views import SIGNAL_FRACTIONS, get_view

# A recording with less than this share of its window holding signal (a spectrogram's
# cells finite and > 0; an EEG's samples finite) has none usable: its standardised image
# is (nearly) constant and a model's answer to it means nothing. Real test files: ~100 %.
MIN_SIGNAL_FRACTION = 0.1

# Each source's parquet reader: a spectrogram `[400, T]` (NaN -> 0), an EEG `[T, 20]` (NaN kept),
# the arrays `convert` would write; a file of the other kind is refused naming its columns.
READERS = {SPECTROGRAM.name: read_spectrogram, EEG.name: read_eeg}

Key = tuple[str, int]  # (source name, recording id): one recording


@dataclass(frozen=True)
class SourceProblem:
    """Why one recording of a sample cannot be used: the stage (convert, signal, preprocess) and the reason."""

    stage: str
    reason: str


def distinct_samples(test_rows: pd.DataFrame) -> pd.DataFrame:
    """The distinct (spectrogram_id, eeg_id) pairs of test.csv's usable rows, in file order."""
    return test_rows[["spectrogram_id", ID_COLUMN]].drop_duplicates().reset_index(drop=True)


def sources_of(views) -> list[str]:
    """The recordings the views read, in the order of features.sources.SOURCES."""
    needed = {source for view in views for source in get_view(view).sources}
    return [name for name in SOURCES if name in needed]


def find_test_files(data_dir: Path, samples: pd.DataFrame,
                    sources: list[str]) -> tuple[dict[Key, Path], dict[Key, SourceProblem]]:
    """The parquet file of each recording the samples name, from one listing of each source's
    test folder; a `convert` problem for each recording without exactly one regular file."""
    files, problems = {}, {}
    for name in sources:
        source = SOURCES[name]
        folder = Path(data_dir) / source.test_folder
        ids = samples[source.id_column].drop_duplicates().tolist()
        entries = parquet_entries(folder) if folder.is_dir() else None
        for recording_id in ids:
            key = (name, recording_id)
            if entries is None:
                problems[key] = SourceProblem("convert", f"test folder not found: {folder}")
            elif str(recording_id) not in entries:
                looked_for = " or ".join(f"{recording_id}{suffix}" for suffix in PARQUET_SUFFIXES)
                problems[key] = SourceProblem("convert", f"no parquet file for it in {folder} "
                                                         f"(looked for {looked_for}, any case)")
            else:
                try:
                    files[key] = resolve_parquet(str(recording_id), entries[str(recording_id)])
                except ParquetFormatError as error:
                    problems[key] = SourceProblem("convert", str(error))
    return files, problems


# How a recording's window and its length are described in a "no usable signal" reason.
_SIGNAL_WINDOW = {"spectrogram": ("cells of its 400x300 window finite and > 0", "time steps", 1),
                  "eeg": ("samples of its 50 s window finite", "samples", 0)}


def no_signal(name: str, array: np.ndarray) -> str | None:
    """Why a recording of source `name` (its array as read) holds no usable signal, or None."""
    fraction = SIGNAL_FRACTIONS[name](array)
    if fraction >= MIN_SIGNAL_FRACTION:
        return None
    window, unit, time_axis = _SIGNAL_WINDOW[name]
    return (f"no usable signal: {fraction:.1%} of the {window}, fewer than {MIN_SIGNAL_FRACTION:.0%} "
            f"({array.shape[time_axis]} {unit})")


def read_recording(path: Path, name: str) -> np.ndarray:
    """One test recording of source `name`, read from its parquet file as `convert` would."""
    return READERS[name](path)


def usable_recording(path: Path, name: str, read=read_recording) -> tuple[np.ndarray | None, SourceProblem | None]:
    """The recording, or why it cannot be used (unreadable: `convert`; no signal: `signal`)."""
    try:
        array = read(path, name)
    except Exception as error:  # any failure of one file costs only the samples that need it
        reason = str(error) if isinstance(error, ParquetFormatError) else f"{path}: {type(error).__name__}: {error}"
        return None, SourceProblem("convert", reason)
    problem = no_signal(name, array)
    return (None, SourceProblem("signal", problem)) if problem else (array, None)


def recording_problem(path: Path, name: str, read=read_recording) -> SourceProblem | None:
    """What `usable_recording` says of the file, without the array (the isolated re-check)."""
    return usable_recording(path, name, read)[1]


@dataclass(frozen=True)
class Batch:
    """Samples for one worker call: their positions (rows of the samples table), each one's
    recordings by source, the parquet files, and the recordings already known unusable."""

    views: tuple[str, ...]
    positions: tuple[int, ...]
    keys: tuple[dict[str, Key], ...]  # per sample: {source: key} of the sources the views read
    files: dict[Key, Path]
    known: dict[Key, SourceProblem]

    def subset(self, index: int, known: dict[Key, SourceProblem]) -> "Batch":
        """The batch of its `index`-th sample alone, with `known` problems."""
        keys = self.keys[index]
        return Batch(self.views, (self.positions[index],), (keys,),
                     {k: self.files[k] for k in keys.values() if k in self.files}, known)

    def recordings(self) -> list[Key]:
        """Its distinct recordings not known unusable, in first-use order."""
        return [key for key in dict.fromkeys(k for keys in self.keys for k in keys.values()) if key not in self.known]


@dataclass
class Prepared:
    """A batch as the ensemble takes it: `images[view] = (indexes into positions, images)`;
    per index, {view: problem} for the views it cannot be shown in; the recordings found
    unusable; the worker's seconds reading and making images."""

    positions: tuple[int, ...]
    images: dict[str, tuple[np.ndarray, np.ndarray]]
    missing: dict[int, dict[str, SourceProblem]]
    problems: dict[Key, SourceProblem]
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def merge(cls, parts: list["Prepared"]) -> "Prepared":
        """One Prepared of the parts (each of consecutive samples), indexes renumbered."""
        positions, images, missing, problems, seconds = [], {}, {}, {}, {}
        for part in parts:
            offset = len(positions)
            positions += part.positions
            for view, (indexes, stack) in part.images.items():
                images.setdefault(view, ([], []))
                images[view][0].append(indexes + offset)
                images[view][1].append(stack)
            missing.update({index + offset: views for index, views in part.missing.items()})
            problems.update(part.problems)
            for name, value in part.seconds.items():
                seconds[name] = seconds.get(name, 0.0) + value
        stacked = {view: (np.concatenate(i), np.concatenate(s)) for view, (i, s) in images.items()}
        return cls(tuple(positions), stacked, missing, problems, seconds)


def prepare(batch: Batch, read=read_recording) -> Prepared:
    """Read each distinct recording of the batch once and show every sample in every view
    (a view's image computed once per distinct set of recordings). Runs in a worker process."""
    started = time.perf_counter()
    arrays, problems = {}, dict(batch.known)
    for key in batch.recordings():
        arrays[key], problem = usable_recording(batch.files[key], key[0], read)
        if problem is not None:
            problems[key] = problem
    read_seconds = time.perf_counter() - started
    views = {name: get_view(name) for name in batch.views}
    images, missing, made = {}, {}, {}
    for index, keys in enumerate(batch.keys):
        for view_name, view in views.items():
            lacking = [problems[keys[source]] for source in view.sources if keys[source] in problems]
            if lacking:
                missing.setdefault(index, {})[view_name] = lacking[0]
                continue
            recordings = tuple(keys[source] for source in view.sources)
            image = made.get((view_name, recordings))
            if image is None:
                try:
                    image = made[view_name, recordings] = view.image({s: arrays[keys[s]] for s in view.sources})
                except Exception as error:  # a recording this view cannot use costs only this view
                    missing.setdefault(index, {})[view_name] = SourceProblem(
                        "preprocess", f"input view {view_name}: {type(error).__name__}: {error}")
                    continue
            indexes, stack = images.setdefault(view_name, ([], []))
            indexes.append(index)
            stack.append(image)
    stacked = {view: (np.array(indexes), np.stack(stack)) for view, (indexes, stack) in images.items()}
    found = {key: problem for key, problem in problems.items() if key not in batch.known}
    return Prepared(batch.positions, stacked, missing, found,
                    {"read": read_seconds, "preprocess": time.perf_counter() - started - read_seconds})


def batches(samples: pd.DataFrame, views: list[str], files: dict[Key, Path], known: dict[Key, SourceProblem],
            batch_size: int) -> list[Batch]:
    """The samples in batches of `batch_size`, ordered by their recordings so that samples
    sharing one (a spectrogram with several EEGs) share a batch and it is read once."""
    sources = sources_of(views)
    columns = [SOURCES[name].id_column for name in sources]
    order = samples.sort_values(columns, kind="stable").index.to_numpy()
    keys = [{name: (name, int(samples.at[position, SOURCES[name].id_column])) for name in sources} for position in order]
    out = []
    for start in range(0, len(order), batch_size):
        chunk = keys[start : start + batch_size]
        used = {key for sample in chunk for key in sample.values()}
        out.append(Batch(tuple(views), tuple(int(p) for p in order[start : start + batch_size]), tuple(chunk),
                         {key: files[key] for key in used if key in files},
                         {key: known[key] for key in used if key in known}))
    return out
