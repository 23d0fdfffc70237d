"""The test set as the ensemble's models see it: each test sample's recordings converted,
read and turned into the input view of every model, each view once per sample.

A sample is one distinct (spectrogram_id, eeg_id) pair of test.csv. Only the recordings a
view of the ensemble needs are converted (test_eegs/ is never read for an ensemble of
Kaggle-spectrogram models). A recording that cannot be converted or read, or holds no usable
signal, takes away the views that need it for that sample; the ensemble predicts the sample
from its other views, and gives it the fallback only when none is left.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.constants import ID_COLUMN
from hms_offline.features.sources import SOURCES
from hms_offline.features.views import SIGNAL_FRACTIONS, get_view

log = logging.getLogger(__name__)

# A recording with less than this share of its window holding signal (a spectrogram's
# cells finite and > 0; an EEG's samples finite) has none usable: its standardised image
# is (nearly) constant and a model's answer to it means nothing. Real test files: ~100 %.
MIN_SIGNAL_FRACTION = 0.1


@dataclass(frozen=True)
class SourceProblem:
    """Why one recording of a sample cannot be used: the stage (convert, load, signal) and the reason."""

    stage: str
    reason: str


def distinct_samples(test_rows: pd.DataFrame) -> pd.DataFrame:
    """The distinct (spectrogram_id, eeg_id) pairs of test.csv's usable rows, in file order."""
    return test_rows[["spectrogram_id", ID_COLUMN]].drop_duplicates().reset_index(drop=True)


def sources_of(views) -> list[str]:
    """The recordings the views read, in the order of features.sources.SOURCES."""
    needed = {source for view in views for source in get_view(view).sources}
    return [name for name in SOURCES if name in needed]


def convert_test_recordings(data_dir: Path, work_dir: Path, samples: pd.DataFrame, sources: list[str],
                            workers: int | None) -> tuple[dict[str, Path], dict[tuple[str, object], SourceProblem]]:
    """Convert the test parquet files of `sources` the samples name; the folder of each
    source's `.npy` files, and a problem for each (source, id) left without one."""
    from hms_offline.convert import ConversionError, convert_tree

    folders, problems = {}, {}
    for name in sources:
        source = SOURCES[name]
        ids = samples[source.id_column].drop_duplicates().tolist()
        origin, folders[name] = Path(data_dir) / source.test_folder, Path(work_dir) / source.test_folder
        reasons = {}
        try:
            convert_tree(origin, folders[name], workers=workers, only={str(i) for i in ids}, isolate=True)
        except ConversionError as error:  # the files that did convert are still used
            log.error("%s", error)
            reasons = error.failures
        except (ValueError, FileNotFoundError) as error:  # nothing to convert at all
            log.error("%s", error)
            reasons = {str(i): str(error) for i in ids}
        for i in ids:
            if not (folders[name] / f"{i}.npy").is_file():
                problems[name, i] = SourceProblem("convert", reasons.get(
                    str(i), f"no parquet file for it in {origin} (looked for {i}.parquet or {i}.pq, any case)"))
    return folders, problems


# How a recording's window and its length are described in a "no usable signal" reason.
_SIGNAL_WINDOW = {"spectrogram": ("cells of its 400x300 window finite and > 0", "time steps", 1),
                  "eeg": ("samples of its 50 s window finite", "samples", 0)}


def no_signal(name: str, array: np.ndarray) -> str | None:
    """Why a converted recording of source `name` holds no usable signal, or None."""
    fraction = SIGNAL_FRACTIONS[name](array)
    if fraction >= MIN_SIGNAL_FRACTION:
        return None
    window, unit, time_axis = _SIGNAL_WINDOW[name]
    return (f"no usable signal: {fraction:.1%} of the {window}, fewer than {MIN_SIGNAL_FRACTION:.0%} "
            f"({array.shape[time_axis]} {unit})")


def read_recording(folder: Path, name: str, recording_id) -> tuple[np.ndarray | None, SourceProblem | None]:
    """One converted recording, or why it cannot be used."""
    path = Path(folder) / f"{recording_id}.npy"
    try:
        array = np.load(path)
        problem = no_signal(name, array)
    except (OSError, ValueError, EOFError, IndexError) as error:
        return None, SourceProblem("load", f"{path} unreadable: {error}")
    return (None, SourceProblem("signal", problem)) if problem else (array, None)


class SampleReader:
    """Each sample's images, one per view of the ensemble, from the converted recordings."""

    def __init__(self, views: list[str], folders: dict[str, Path], problems: dict[tuple[str, object], SourceProblem]):
        self.views = {name: get_view(name) for name in views}
        self.folders = folders
        self.problems = dict(problems)

    def images(self, sample: pd.Series) -> tuple[dict[str, np.ndarray], dict[str, SourceProblem]]:
        """{view: image} for the views the sample can be shown in, {view: problem} for the rest."""
        arrays, problems = {}, {}
        for name in {source for view in self.views.values() for source in view.sources}:
            recording_id = sample[SOURCES[name].id_column]
            problem = self.problems.get((name, recording_id))
            if problem is None:
                arrays[name], problem = read_recording(self.folders[name], name, recording_id)
            if problem is not None:
                problems[name] = self.problems[name, recording_id] = problem
        images, missing = {}, {}
        for view_name, view in self.views.items():
            lacking = [problems[source] for source in view.sources if source in problems]
            if lacking:
                missing[view_name] = lacking[0]
                continue
            try:
                images[view_name] = view.image({s: arrays[s] for s in view.sources}, {s: None for s in view.sources})
            except ValueError as error:  # a recording of the wrong shape
                missing[view_name] = SourceProblem("load", f"input view {view_name}: {error}")
        return images, missing
