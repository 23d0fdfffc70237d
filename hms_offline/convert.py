"""Competition parquet files -> .npy arrays, the form training and inference read.

- Spectrogram parquet (400 power columns, usually with `time`) -> `[400, T]` float32:
  NaN -> 0, transposed (the KerasCV starter's layout).
- EEG parquet (20 channels at 200 Hz) -> `[T, 20]` float32, NaN kept: the EEG view fills a
  missing sample inside its own 50 s window (features/eeg.py), so that a training window and
  a test file of the same samples give the same image.

Columns are read by name: their order does not matter, `time` is optional and never read,
and other columns (of any type) are ignored. A file's kind is detected from which layout
its column names cover best. Parquet files are read with pyarrow directly, the footer parsed once
per file and each column decoded into its row of one float32 array (`bench` part 1 measures it).

A parquet file is `<id>.parquet` or `<id>.pq`, the suffix in any case; it converts to
`<id>.npy`, beside which `<id>.npy.source.json` records the size and SHA-256 of the parquet
it came from and the ARRAY_FORMAT it was written in: a later run skips the file only while
all three still match, so a change of what conversion writes re-converts older outputs.
"""

import json
import logging
import multiprocessing
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from hms_offline.atomic import atomic_output, write_text_atomically
from hms_offline.constants import EEG_CHANNELS, SPECTROGRAM_COLUMNS
from hms_offline.digests import sha256_file

logger = logging.getLogger(__name__)

# The parquet folders of a competition folder; each maps to a same-named folder of .npy.
COMPETITION_FOLDERS = ("train_spectrograms", "test_spectrograms", "train_eegs", "test_eegs")
PARQUET_SUFFIXES = (".parquet", ".pq")  # compared lower-cased
SOURCE_SUFFIX = ".source.json"  # `<id>.npy` + this: the sidecar naming the parquet it came from
# What the .npy arrays are, recorded in each sidecar. 2: an EEG keeps its NaN (1, whose
# sidecars have no `array_format`, filled them with the channel's whole-file mean).
ARRAY_FORMAT = 2
WORKER_DIED = "the conversion worker died (killed or crashed) while reading it"
PREVIEW_LIMIT = 5

# convert_file's signature: (parquet, .npy) -> .npy. Must be picklable (module-level).
Worker = Callable[[Path, Path], Path]
Pair = tuple[Path, Path]


@dataclass(frozen=True)
class ParquetLayout:
    """The value columns one kind of competition parquet file must hold, in output order."""

    kind: str
    columns: tuple[str, ...]
    description: str


SPECTROGRAM_LAYOUT = ParquetLayout(
    kind="spectrogram",
    columns=SPECTROGRAM_COLUMNS,
    description=(
        f"the {len(SPECTROGRAM_COLUMNS)} spectrogram columns "
        f"{SPECTROGRAM_COLUMNS[0]} ... {SPECTROGRAM_COLUMNS[-1]}"
    ),
)
EEG_LAYOUT = ParquetLayout(
    kind="EEG",
    columns=EEG_CHANNELS,
    description=f"the {len(EEG_CHANNELS)} EEG channels {' '.join(EEG_CHANNELS)}",
)
LAYOUTS = (SPECTROGRAM_LAYOUT, EEG_LAYOUT)
ANY_ORDER = "(by name, in any order; other columns are ignored)"


class ParquetFormatError(ValueError):
    """A parquet file that cannot be read or is not a competition spectrogram / EEG."""

    def __init__(self, path: Path, reason: str):
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ConversionError(ValueError):
    """Some files of a tree failed to convert; raised once every file has been tried.

    `failures` maps each failed file's id (its stem, e.g. "853520") to the reason, and
    `converted` lists the .npy paths that are ready (converted now or already up to date).
    Two failed files with the same id in different subfolders share one entry, each
    reason prefixed by its path; `failed_files` keeps them apart, keyed by parquet path.
    """

    def __init__(self, failed_files: dict[Path, str], converted: list[Path], total: int):
        self.failed_files = dict(sorted(failed_files.items()))
        self.failures = _reasons_by_id(self.failed_files)
        self.converted = converted
        listing = "".join(f"\n  {path}: {reason}" for path, reason in self.failed_files.items())
        super().__init__(f"{len(failed_files)} of {total} parquet files failed to convert:{listing}")


def _reasons_by_id(failed_files: dict[Path, str]) -> dict[str, str]:
    grouped = defaultdict(list)
    for path, reason in failed_files.items():
        grouped[path.stem].append((path, reason))
    return {
        file_id: entries[0][1] if len(entries) == 1
        else "; ".join(f"{path}: {reason}" for path, reason in entries)
        for file_id, entries in grouped.items()
    }


# --- reading one parquet file --------------------------------------------------------------


def _preview(items: list[str], quote: bool = True) -> str:
    """The first few items, then how many more there are."""
    shown = ", ".join(repr(item) if quote else item for item in items[:PREVIEW_LIMIT])
    hidden = len(items) - PREVIEW_LIMIT
    return f"{shown} (and {hidden} more)" if hidden > 0 else shown


# What pyarrow raises for a file it cannot decode: its own errors, OSError (thrift, I/O) and,
# for corrupt metadata, the odd plain ValueError (e.g. a column name that is not UTF-8).
_UNREADABLE = (pa.ArrowException, OSError, ValueError)


def _open_parquet(path: Path) -> pq.ParquetFile:
    """The file with its footer parsed, once: a spectrogram's ~178 KB of metadata (401 column
    chunks, the pandas schema) is much of the cost of reading it."""
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise
    except _UNREADABLE as error:
        raise ParquetFormatError(path, f"cannot be read as parquet: {error}") from error


def _read_table(path: Path, parquet: pq.ParquetFile, columns: tuple[str, ...]) -> pa.Table:
    try:
        # One thread: the files are converted in parallel by processes; threads per file
        # cost more to start than the ~1 ms of decoding they would share.
        return parquet.read(columns=list(columns), use_threads=False)
    except _UNREADABLE as error:
        raise ParquetFormatError(path, f"cannot be read as parquet: {error}") from error


def _layout_problem(names: list[str], layout: ParquetLayout) -> str | None:
    """What keeps `names` (a file's columns) from holding `layout`'s; None when they do."""
    counts = Counter(names)
    missing = [name for name in layout.columns if counts[name] == 0]
    if missing:
        return f"missing columns {_preview(missing)}"
    duplicated = [name for name in layout.columns if counts[name] > 1]
    if duplicated:
        return f"duplicated columns {_preview(duplicated)}"
    return None


def _non_numeric_columns(schema: pa.Schema, layout: ParquetLayout) -> list[str]:
    by_name = {field.name: field.type for field in schema}  # one pass: schema.field(name) scans every field
    types = {name: by_name[name] for name in layout.columns}
    return [
        f"{name!r} ({kind})"
        for name, kind in types.items()
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind))
    ]


def _check_layout(path: Path, schema: pa.Schema, layout: ParquetLayout) -> None:
    problem = _layout_problem(schema.names, layout)
    if problem:
        raise ParquetFormatError(
            path,
            f"not a valid {layout.kind} parquet: {problem}; expected {layout.description} {ANY_ORDER}",
        )
    non_numeric = _non_numeric_columns(schema, layout)
    if non_numeric:
        columns = _preview(non_numeric, quote=False)
        raise ParquetFormatError(
            path, f"non-numeric {layout.kind} columns {columns}; expected integer or float values"
        )


def detect_layout(path: Path, names: list[str]) -> ParquetLayout:
    """The layout whose columns the file's `names` cover best (by fraction)."""
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


def _read_values(path: Path, layout: ParquetLayout, parquet: pq.ParquetFile, schema: pa.Schema) -> np.ndarray:
    """The layout's columns, in layout order, as a `[n_columns, T]` float32 array, NaN kept."""
    _check_layout(path, schema, layout)
    table = _read_table(path, parquet, layout.columns).select(list(layout.columns))
    if table.num_rows and all(field.type == pa.float32() for field in table.schema):
        # The usual file: one C++ call lays every column out in one array (column-major
        # [T, C], so its transpose is a C-ordered [C, T] without a copy).
        batch = table.combine_chunks().to_batches()[0]
        return np.asarray(batch.to_tensor(null_to_nan=True, row_major=False)).T
    values = np.empty((len(layout.columns), table.num_rows), dtype=np.float32)
    for row, column in enumerate(table.columns):  # other numeric types: each cast as numpy casts it
        values[row] = column.to_numpy()
    return values


def _spectrogram_array(values: np.ndarray) -> np.ndarray:
    """NaN -> 0, in place (+-inf kept)."""
    np.copyto(values, 0.0, where=np.isnan(values))
    return values


def _eeg_array(values: np.ndarray) -> np.ndarray:
    """`[C, T]` -> `[T, C]` (time-major), NaN kept."""
    return np.ascontiguousarray(values.T)


def _read_layout(path: Path, layout: ParquetLayout | None) -> np.ndarray:
    """The file as its .npy array: as `layout`, or as the layout its columns cover best."""
    path = Path(path)
    with _open_parquet(path) as parquet:
        schema = parquet.schema_arrow  # built anew from the footer at every access: ~1 ms for 401 columns
        layout = layout or detect_layout(path, schema.names)
        values = _read_values(path, layout, parquet, schema)
    return _spectrogram_array(values) if layout is SPECTROGRAM_LAYOUT else _eeg_array(values)


def read_spectrogram(path: Path) -> np.ndarray:
    """Spectrogram parquet -> `[400, T]` float32, NaN -> 0."""
    return _read_layout(path, SPECTROGRAM_LAYOUT)


def read_eeg(path: Path) -> np.ndarray:
    """EEG parquet -> `[T, 20]` float32, NaN kept."""
    return _read_layout(path, EEG_LAYOUT)


def read_parquet(path: Path) -> np.ndarray:
    """A spectrogram or EEG parquet, its kind detected from its columns, as its .npy array."""
    return _read_layout(path, None)


# --- the source sidecar --------------------------------------------------------------------


@dataclass(frozen=True)
class SourceStamp:
    """What identifies a parquet file's content: its size and SHA-256."""

    size: int
    sha256: str


def source_stamp(path: Path) -> SourceStamp:
    return SourceStamp(size=Path(path).stat().st_size, sha256=sha256_file(path))


def sidecar_path(npy_file: Path) -> Path:
    """`<id>.npy` -> `<id>.npy.source.json`."""
    npy_file = Path(npy_file)
    return npy_file.with_name(npy_file.name + SOURCE_SUFFIX)


def _recorded_stamp(npy_file: Path) -> SourceStamp | None:
    """The stamp in the .npy's sidecar; None when there is none, it cannot be read, or the
    .npy is of another ARRAY_FORMAT than this code writes."""
    try:
        recorded = json.loads(sidecar_path(npy_file).read_text())
        if not isinstance(recorded, dict) or recorded.pop("array_format", None) != ARRAY_FORMAT:
            return None
        return SourceStamp(**recorded)
    except (OSError, ValueError, TypeError):
        return None


def is_up_to_date(src_file: Path, dst_file: Path) -> bool:
    """Whether `dst_file` exists and its sidecar records `src_file`'s current size and digest
    and this code's ARRAY_FORMAT (the size is compared first, so a changed file is usually
    caught without hashing it)."""
    recorded = _recorded_stamp(dst_file)
    return (
        recorded is not None
        and Path(dst_file).is_file()
        and recorded.size == Path(src_file).stat().st_size
        and recorded == source_stamp(src_file)
    )


def _remove_outputs(dst_file: Path) -> None:
    """Remove a .npy and its sidecar, so a file that failed never serves an older array."""
    Path(dst_file).unlink(missing_ok=True)
    sidecar_path(dst_file).unlink(missing_ok=True)


def convert_file(src_file: Path, dst_file: Path) -> Path:
    """Convert one spectrogram or EEG parquet into `dst_file` (.npy), then write its sidecar,
    each atomically. The digest is taken before the parquet is read, so a parquet replaced
    mid-conversion leaves a sidecar that no longer matches, never a wrong match."""
    src_file, dst_file = Path(src_file), Path(dst_file)
    stamp = source_stamp(src_file)
    array = read_parquet(src_file)
    with atomic_output(dst_file) as temporary, open(temporary, "wb") as handle:
        np.save(handle, array)  # to a handle, so numpy adds no second ".npy"
    write_text_atomically(sidecar_path(dst_file), json.dumps({**asdict(stamp), "array_format": ARRAY_FORMAT}) + "\n")
    return dst_file


# --- finding the files ---------------------------------------------------------------------


def is_parquet_name(path: Path) -> bool:
    """`<id>.parquet` or `<id>.pq`, the suffix in any case."""
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def parquet_entries(folder: Path) -> dict[str, list[Path]]:
    """Every entry of `folder` named like a parquet file (directories too), by id (stem)."""
    entries = defaultdict(list)
    for path in sorted(Path(folder).iterdir()):
        if is_parquet_name(path):
            entries[path.stem].append(path)
    return dict(entries)


def resolve_parquet(file_id: str, entries: list[Path]) -> Path:
    """The one parquet file among an id's `entries`; ParquetFormatError when they are not
    exactly one regular file."""
    if len(entries) > 1:
        names = ", ".join(path.name for path in entries)
        raise ParquetFormatError(
            entries[0], f"{len(entries)} files have the id {file_id!r} ({names}); keep only one"
        )
    (path,) = entries
    if path.is_dir():
        raise ParquetFormatError(path, "is a directory, not a parquet file")
    if not path.is_file():  # a dangling link, a pipe: reading it would fail or block
        raise ParquetFormatError(path, "is not a regular file")
    return path


def find_parquet(folder: Path, file_id: str) -> Path:
    """The parquet file for `file_id` in `folder`: FileNotFoundError when there is none,
    ParquetFormatError when it is a directory or several files share the id."""
    entries = parquet_entries(folder).get(str(file_id))
    if not entries:
        raise FileNotFoundError(f"no {' or '.join(PARQUET_SUFFIXES)} file for id {file_id} in {folder}")
    return resolve_parquet(str(file_id), entries)


def _folder_pairs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """(parquet folder, .npy folder) pairs: a competition folder's subfolders, or src itself."""
    subfolders = [name for name in COMPETITION_FOLDERS if (src / name).is_dir()]
    if subfolders:
        return [(src / name, dst / name) for name in subfolders]
    return [(src, dst)]


@dataclass
class Plan:
    pairs: list[Pair]  # (parquet, .npy), sorted by .npy path
    unconvertible: dict[Pair, str]  # (entry, .npy) -> why the entry cannot be converted at all

    @property
    def total(self) -> int:
        return len(self.pairs) + len(self.unconvertible)


def _plan(src: Path, dst: Path, only: set[str] | None) -> Plan:
    """Every (parquet, .npy) pair under `src` (limited to the ids in `only`), and the
    entries that cannot be converted."""
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    found = {
        (file_id, npy_folder): entries
        for parquet_folder, npy_folder in _folder_pairs(src, dst)
        for file_id, entries in parquet_entries(parquet_folder).items()
    }
    if not found:
        folders = ", ".join(COMPETITION_FOLDERS)
        raise ValueError(f"no .parquet or .pq files in {src} (nor in its subfolders {folders})")
    plan = Plan(pairs=[], unconvertible={})
    for (file_id, npy_folder), entries in found.items():
        if only is not None and file_id not in only:
            continue
        npy = npy_folder / f"{file_id}.npy"
        try:
            plan.pairs.append((resolve_parquet(file_id, entries), npy))
        except ParquetFormatError as error:
            plan.unconvertible[(error.path, npy)] = error.reason
    plan.pairs.sort(key=lambda pair: pair[1])
    return plan


# --- converting many -----------------------------------------------------------------------


def _failure_reason(error: BaseException) -> str:
    if isinstance(error, ParquetFormatError):
        return error.reason
    return f"{type(error).__name__}: {error}"


def _spawn_pool(workers: int) -> ProcessPoolExecutor:
    # "spawn": the caller may hold threads (pyarrow, TensorFlow) that fork would copy mid-lock.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _convert_in_process(pending: list[Pair], worker: Worker, bar: tqdm) -> dict[Pair, str]:
    failures = {}
    for pair in pending:
        try:
            worker(*pair)
        except Exception as error:  # reported together once every file has been tried
            failures[pair] = _failure_reason(error)
        bar.update()
    return failures


def _convert_in_pool(
    pending: list[Pair], workers: int, worker: Worker, bar: tqdm
) -> tuple[dict[Pair, str], list[Pair]]:
    """Convert in a pool of `workers` processes: ({pair: reason} of the files that failed,
    the pairs left unconverted because a worker died and broke the pool)."""
    failures, broken = {}, []
    with _spawn_pool(workers) as pool:
        futures = {}
        for pair in pending:
            try:
                futures[pool.submit(worker, *pair)] = pair
            except BrokenProcessPool:
                break
        broken.extend(pending[len(futures):])
        for future in as_completed(futures):
            error = future.exception()
            if isinstance(error, BrokenProcessPool):
                broken.append(futures[future])
                continue
            if error is not None:
                failures[futures[future]] = _failure_reason(error)
            bar.update()
    return failures, sorted(broken, key=lambda pair: pair[1])


def _convert_one_at_a_time(pending: list[Pair], worker: Worker, bar: tqdm) -> dict[Pair, str]:
    """Convert in one spawned worker process, one file in flight at a time.

    This is the retry after a worker died: once the pool breaks, every unfinished file is
    a suspect, and the pool cannot say which one killed it. With a single file in flight,
    a death is pinned on exactly that file, which is recorded as failed; a fresh worker
    then takes the rest. Retrying in this process instead would let the file that killed
    the worker (a reader crash, the OOM killer) kill the caller, e.g. the Kaggle kernel.
    One process for the whole retry, not one per file, keeps the cost at one spawn (plus one
    per death) when many files were queued.
    """
    failures = {}
    pool = None
    try:
        for pair in pending:
            pool = pool or _spawn_pool(1)
            try:
                pool.submit(worker, *pair).result()
            except BrokenProcessPool:
                failures[pair] = WORKER_DIED
                pool.shutdown()
                pool = None
            except Exception as error:
                failures[pair] = _failure_reason(error)
            bar.update()
    finally:
        if pool is not None:
            pool.shutdown()
    return failures


def _convert_pending(
    pending: list[Pair], workers: int, worker: Worker, progress: bool, isolate: bool
) -> dict[Pair, str]:
    """Convert every pair; {pair: reason} for the ones that failed."""
    workers = min(workers, len(pending))
    with tqdm(total=len(pending), unit="file", desc="convert", disable=not progress) as bar:
        if workers <= 1 and not isolate:
            return _convert_in_process(pending, worker, bar)
        failures, broken = _convert_in_pool(pending, workers, worker, bar)
        if broken:
            logger.warning(
                "a conversion worker died; retrying its %d unfinished files one at a time", len(broken)
            )
            failures.update(_convert_one_at_a_time(broken, worker, bar))
        return failures


def convert_tree(
    src: Path,
    dst: Path,
    workers: int | None = None,
    progress: bool = True,
    only: set[str] | None = None,
    *,
    isolate: bool = False,
    _worker: Worker = convert_file,
) -> list[Path]:
    """Convert a competition folder (its train/test spectrogram and EEG subfolders) or a
    folder of parquet files into .npy files under `dst`; a file whose .npy sidecar records
    its current size and SHA-256 is skipped.

    `workers` processes convert in parallel (default: the CPU count; 1 converts in this
    process). If a worker dies, the files it left unfinished are retried one at a time, so
    at most the file that killed it is lost. `only`, a set of file ids (stems), limits the
    work to those files. `isolate` converts in worker processes even when one would do, so a
    file that crashes the parquet reader can never take the caller down (the kernel's
    choice: it costs one process start). Every file is tried; then a ConversionError lists all that failed,
    whose old .npy and sidecar have been removed. Returns the sorted .npy paths.

    `_worker` replaces `convert_file` (same signature, picklable) in tests only.
    """
    src, dst = Path(src), Path(dst)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    plan = _plan(src, dst, only)
    pending = [pair for pair in plan.pairs if not is_up_to_date(*pair)]
    started = time.perf_counter()
    failures = _convert_pending(pending, workers, _worker, progress, isolate) if pending else {}
    logger.info(
        "converted %d, skipped %d up to date, failed %d parquet files in %.1f s: %s -> %s",
        len(pending) - len(failures), len(plan.pairs) - len(pending),
        len(failures) + len(plan.unconvertible), time.perf_counter() - started, src, dst,
    )
    failures.update(plan.unconvertible)
    for _, dst_file in failures:
        _remove_outputs(dst_file)
    converted = [pair[1] for pair in plan.pairs if pair not in failures]
    if failures:
        reasons = {src_file: reason for (src_file, _), reason in failures.items()}
        raise ConversionError(reasons, converted, plan.total)
    return converted
