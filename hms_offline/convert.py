"""Competition parquet files -> .npy arrays, the form training and inference read.

- Spectrogram parquet (`time` + 400 power columns) -> `[400, T]` float32: `time` dropped,
  NaN -> 0, transposed (the KerasCV starter's layout).
- EEG parquet (20 channels at 200 Hz) -> `[T, 20]` float32: each NaN is replaced by the
  mean of its channel's non-NaN samples, or by 0 when the whole channel is NaN.

A file's kind is detected from its column names, and the expected columns are checked by
name and order (other columns are ignored). Parquet files are read with pyarrow directly.
"""

import logging
import multiprocessing
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from hms_offline.atomic import atomic_output
from hms_offline.constants import EEG_CHANNELS, SPECTROGRAM_COLUMNS, SPECTROGRAM_TIME_COLUMN

logger = logging.getLogger(__name__)

# The parquet folders of a competition folder; each maps to a same-named folder of .npy.
COMPETITION_FOLDERS = ("train_spectrograms", "test_spectrograms", "train_eegs", "test_eegs")
PREVIEW_LIMIT = 5


@dataclass(frozen=True)
class ParquetLayout:
    """The columns one kind of competition parquet file must hold."""

    kind: str
    columns: tuple[str, ...]  # every required column, in file order
    value_columns: tuple[str, ...]  # the ones converted
    description: str


SPECTROGRAM_LAYOUT = ParquetLayout(
    kind="spectrogram",
    columns=(SPECTROGRAM_TIME_COLUMN, *SPECTROGRAM_COLUMNS),
    value_columns=SPECTROGRAM_COLUMNS,
    description=(
        f"{SPECTROGRAM_TIME_COLUMN!r} then the {len(SPECTROGRAM_COLUMNS)} spectrogram columns "
        f"{SPECTROGRAM_COLUMNS[0]} ... {SPECTROGRAM_COLUMNS[-1]}"
    ),
)
EEG_LAYOUT = ParquetLayout(
    kind="EEG",
    columns=EEG_CHANNELS,
    value_columns=EEG_CHANNELS,
    description=f"the {len(EEG_CHANNELS)} EEG channels {' '.join(EEG_CHANNELS)}",
)
LAYOUTS = (SPECTROGRAM_LAYOUT, EEG_LAYOUT)


class ParquetFormatError(ValueError):
    """A parquet file that cannot be read or is not a competition spectrogram / EEG."""

    def __init__(self, path: Path, reason: str):
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _preview(items: list[str], quote: bool = True) -> str:
    """The first few items, then how many more there are."""
    shown = ", ".join(repr(item) if quote else item for item in items[:PREVIEW_LIMIT])
    hidden = len(items) - PREVIEW_LIMIT
    return f"{shown} (and {hidden} more)" if hidden > 0 else shown


def _read_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as error:
        raise ParquetFormatError(path, f"cannot be read as parquet: {error}") from error


def _read_table(path: Path, columns: tuple[str, ...]) -> pa.Table:
    try:
        return pq.read_table(path, columns=list(columns))
    except (pa.ArrowException, OSError) as error:
        raise ParquetFormatError(path, f"cannot be read as parquet: {error}") from error


def _layout_problem(names: list[str], layout: ParquetLayout) -> str | None:
    """What keeps `names` (a file's columns) from matching `layout`; None when it matches."""
    required = set(layout.columns)
    present = set(names)
    missing = [name for name in layout.columns if name not in present]
    if missing:
        return f"missing columns {_preview(missing)}"
    duplicated = [name for name, count in Counter(names).items() if name in required and count > 1]
    if duplicated:
        return f"duplicated columns {_preview(duplicated)}"
    found = [(position, name) for position, name in enumerate(names) if name in required]
    misplaced = [
        f"column {position} is {name!r} where {expected!r} was expected"
        for (position, name), expected in zip(found, layout.columns)
        if name != expected
    ]
    if misplaced:
        return f"columns out of order: {_preview(misplaced, quote=False)}"
    return None


def _non_numeric_columns(schema: pa.Schema, layout: ParquetLayout) -> list[str]:
    types = {name: schema.field(name).type for name in layout.columns}
    return [
        f"{name!r} ({kind})"
        for name, kind in types.items()
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind))
    ]


def _check_layout(path: Path, schema: pa.Schema, layout: ParquetLayout) -> None:
    problem = _layout_problem(schema.names, layout)
    if problem:
        raise ParquetFormatError(
            path, f"not a valid {layout.kind} parquet: {problem}; expected {layout.description}"
        )
    non_numeric = _non_numeric_columns(schema, layout)
    if non_numeric:
        columns = _preview(non_numeric, quote=False)
        raise ParquetFormatError(path, f"non-numeric {layout.kind} columns {columns}")


def detect_layout(path: Path, names: list[str]) -> ParquetLayout:
    """The layout whose required columns the file's `names` cover best (by fraction)."""
    present = set(names)
    coverage = {
        layout: len(present & set(layout.columns)) / len(layout.columns) for layout in LAYOUTS
    }
    best = max(LAYOUTS, key=coverage.__getitem__)
    if coverage[best] == 0:
        expected = " or ".join(layout.description for layout in LAYOUTS)
        raise ParquetFormatError(
            path,
            f"neither a spectrogram nor an EEG parquet: its columns {_preview(names)} include none "
            f"of the expected ones; expected {expected}",
        )
    return best


def _read_values(path: Path, layout: ParquetLayout) -> np.ndarray:
    """The layout's value columns as a `[n_columns, T]` float32 array, NaN kept."""
    _check_layout(path, _read_schema(path), layout)
    table = _read_table(path, layout.value_columns)
    values = np.empty((len(layout.value_columns), table.num_rows), dtype=np.float32)
    for row, name in enumerate(layout.value_columns):
        values[row] = table.column(name).to_numpy(zero_copy_only=False)
    return values


def _fill_nan_with_channel_mean(eeg: np.ndarray) -> np.ndarray:
    """`[T, C]` -> NaN replaced by the channel's mean over its non-NaN samples, 0 if none."""
    missing = np.isnan(eeg)
    if not missing.any():
        return eeg
    counts = np.count_nonzero(~missing, axis=0)
    sums = np.where(missing, 0.0, eeg).sum(axis=0, dtype=np.float64)
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return np.where(missing, means.astype(np.float32), eeg)


def read_spectrogram(path: Path) -> np.ndarray:
    """Spectrogram parquet -> `[400, T]` float32, `time` dropped, NaN -> 0."""
    spectrogram = _read_values(Path(path), SPECTROGRAM_LAYOUT)
    spectrogram[np.isnan(spectrogram)] = 0.0
    return spectrogram


def read_eeg(path: Path) -> np.ndarray:
    """EEG parquet -> `[T, 20]` float32; NaN -> channel mean, or 0 for an all-NaN channel."""
    eeg = np.ascontiguousarray(_read_values(Path(path), EEG_LAYOUT).T)
    return _fill_nan_with_channel_mean(eeg)


def read_parquet(path: Path) -> np.ndarray:
    """A spectrogram or EEG parquet, its kind detected from its columns, as its .npy array."""
    path = Path(path)
    layout = detect_layout(path, _read_schema(path).names)
    return read_spectrogram(path) if layout is SPECTROGRAM_LAYOUT else read_eeg(path)


def convert_file(src_file: Path, dst_file: Path) -> Path:
    """Convert one spectrogram or EEG parquet into `dst_file` (.npy), written atomically."""
    src_file, dst_file = Path(src_file), Path(dst_file)
    array = read_parquet(src_file)
    with atomic_output(dst_file) as temporary, open(temporary, "wb") as handle:
        np.save(handle, array)  # to a handle, so numpy adds no second ".npy"
    return dst_file


def _folder_pairs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """(parquet folder, .npy folder) pairs: a competition folder's subfolders, or src itself."""
    subfolders = [name for name in COMPETITION_FOLDERS if (src / name).is_dir()]
    if subfolders:
        return [(src / name, dst / name) for name in subfolders]
    return [(src, dst)]


def _planned_files(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """Every (parquet, .npy) pair under `src`, sorted by .npy path."""
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    pairs = [
        (parquet, npy_folder / f"{parquet.stem}.npy")
        for parquet_folder, npy_folder in _folder_pairs(src, dst)
        for parquet in parquet_folder.glob("*.parquet")
        if parquet.is_file()
    ]
    if not pairs:
        folders = ", ".join(COMPETITION_FOLDERS)
        raise ValueError(f"no .parquet files in {src} (nor in its subfolders {folders})")
    return sorted(pairs, key=lambda pair: pair[1])


def _is_up_to_date(src_file: Path, dst_file: Path) -> bool:
    return dst_file.exists() and dst_file.stat().st_mtime_ns >= src_file.stat().st_mtime_ns


def _failure_reason(error: BaseException) -> str:
    if isinstance(error, ParquetFormatError):
        return error.reason
    return f"{type(error).__name__}: {error}"


def _convert_in_process(pending: list[tuple[Path, Path]], bar: tqdm) -> dict[Path, str]:
    failures = {}
    for src_file, dst_file in pending:
        try:
            convert_file(src_file, dst_file)
        except Exception as error:  # reported together once every file has been tried
            failures[src_file] = _failure_reason(error)
        bar.update()
    return failures


def _convert_in_pool(pending: list[tuple[Path, Path]], workers: int, bar: tqdm) -> dict[Path, str]:
    # "spawn": the caller may hold threads (pyarrow, TensorFlow) that fork would copy mid-lock.
    context = multiprocessing.get_context("spawn")
    failures = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(convert_file, *pair): pair[0] for pair in pending}
        for future in as_completed(futures):
            if future.exception() is not None:
                failures[futures[future]] = _failure_reason(future.exception())
            bar.update()
    return failures


def _convert_pending(
    pending: list[tuple[Path, Path]], workers: int, progress: bool
) -> dict[Path, str]:
    """Convert every pair; {parquet: reason} for the ones that failed."""
    workers = min(workers, len(pending))
    with tqdm(total=len(pending), unit="file", desc="convert", disable=not progress) as bar:
        if workers <= 1:
            return _convert_in_process(pending, bar)
        return _convert_in_pool(pending, workers, bar)


def convert_tree(
    src: Path, dst: Path, workers: int | None = None, progress: bool = True, only: set[str] | None = None
) -> list[Path]:
    """Convert a competition folder (its train/test spectrogram and EEG subfolders) or a
    folder of parquet files into .npy files under `dst`; files already up to date (the .npy
    no older than its parquet) are skipped.

    `workers` processes convert in parallel (default: the CPU count; 1 converts in this
    process). `only`, a set of file stems, limits the work to those files. Every file is
    tried; then a ValueError lists all that failed. Returns the sorted .npy paths.
    """
    src, dst = Path(src), Path(dst)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    planned = _planned_files(src, dst)
    if only is not None:
        planned = [pair for pair in planned if pair[0].stem in only]
    pending = [pair for pair in planned if not _is_up_to_date(*pair)]
    started = time.perf_counter()
    failures = _convert_pending(pending, workers, progress) if pending else {}
    logger.info(
        "converted %d, skipped %d up to date, failed %d parquet files in %.1f s: %s -> %s",
        len(pending) - len(failures), len(planned) - len(pending), len(failures),
        time.perf_counter() - started, src, dst,
    )
    if failures:
        listing = "".join(f"\n  {path}: {reason}" for path, reason in sorted(failures.items()))
        raise ValueError(
            f"{len(failures)} of {len(planned)} parquet files failed to convert:{listing}"
        )
    return [dst_file for _, dst_file in planned]
