"""Part 1: conversion per file, `convert` against the starter's route and the floor read.

Routes, each over the same files with the same number of workers, timed the same way (the
worker processes started before the timing; the .npy write included where a route writes one),
interleaved file by file (or chunk by chunk in a pool) so noise hits every route alike:
- `convert`: hms_offline.convert.convert_file (what convert_tree runs per file, in this process
  for one worker, in a pool of worker processes for several): digest, read, .npy, sidecar,
  atomic renames;
- `starter`: the KerasCV starter's `pd.read_parquet(f).fillna(0).values[:, 1:].T.astype("float32")`
  + `np.save`;
- `convert_read`: convert's reading alone (hms_offline.convert.read_spectrogram: parquet -> the
  array), no digest, no write: what separates `convert` from `floor` is then the write;
- `floor`: the fastest pyarrow read of the file, `pq.ParquetFile(f).read(use_threads=False)`
  (all columns; `floor_columns`: only the 400 value columns), nothing written.
The files: real-format spectrograms (690 rows x `time` + 400 float32 columns, written by pandas
with its schema metadata and pyarrow's default dictionary encoding, ~178 KB of footer, like
train_spectrograms/ of the competition), their values drawn by hms_offline.synthetic; or the
spectrograms of `--data-dir`.
"""

from __future__ import annotations

import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hms_offline.bench.measure import Part, best, interleaved_items
from hms_offline.constants import SPECTROGRAM_COLUMNS, SPECTROGRAM_STEP_SECONDS, SPECTROGRAM_TIME_COLUMN
from hms_offline.convert import convert_file, read_spectrogram

REAL_ROWS = 690  # train_spectrograms/1000189855.parquet of the public sample
DISTINCT_FILES = 16  # generated; the rest are byte copies under other ids (own inodes, own page cache)
TARGETS = {"starter_over_convert": ("at_least", 1.5), "convert_over_floor": ("at_most", 1.25)}


def starter_array(path: Path) -> np.ndarray:
    """The KerasCV starter's conversion of one spectrogram parquet."""
    return pd.read_parquet(path).fillna(0).values[:, 1:].T.astype("float32")


def starter_file(src: Path, dst: Path) -> Path:
    np.save(dst, starter_array(src))
    return dst


def read_shape(src: Path) -> tuple[int, ...]:
    """convert's read of one file in a worker (the shape travels back, not the array)."""
    return read_spectrogram(src).shape


def floor_read(src: Path) -> int:
    return pq.ParquetFile(src).read(use_threads=False).num_rows


def floor_read_columns(src: Path) -> int:
    return pq.ParquetFile(src).read(columns=list(SPECTROGRAM_COLUMNS), use_threads=False).num_rows


def write_real_format_spectrograms(folder: Path, n_files: int, seed: int = 0) -> list[Path]:
    """`n_files` spectrogram parquet files shaped and written like the competition's."""
    from hms_offline.synthetic.plan import Recording
    from hms_offline.synthetic.spectrograms import spectrogram_power

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    times = np.arange(REAL_ROWS, dtype=np.int64) * SPECTROGRAM_STEP_SECONDS + 1
    for index in range(min(n_files, DISTINCT_FILES)):
        rng = np.random.default_rng([seed, index])
        recording = Recording(spectrogram_id=index, n_columns=REAL_ROWS, starts=np.array([rng.integers(0, 390)]),
                              fractions=rng.dirichlet(np.ones(6))[None], gains=np.array([1.0]))
        power = spectrogram_power(rng, recording, force_nan_rows=index == 0)
        frame = pd.DataFrame({SPECTROGRAM_TIME_COLUMN: times, **dict(zip(SPECTROGRAM_COLUMNS, power))})
        paths.append(folder / f"{1000 + index}.parquet")
        frame.to_parquet(paths[-1], index=False)
    for index in range(len(paths), n_files):
        paths.append(folder / f"{1000 + index}.parquet")
        shutil.copyfile(paths[index % DISTINCT_FILES], paths[-1])
    return paths


def file_format(paths: list[Path]) -> dict:
    """What the files are: count, rows and columns, footer bytes, bytes on disk (of the first)."""
    metadata = pq.ParquetFile(paths[0]).metadata
    return {"files": len(paths), "rows": metadata.num_rows, "columns": metadata.num_columns,
            "metadata_bytes": metadata.serialized_size, "file_bytes": paths[0].stat().st_size}


def identical_to_starter(paths: list[Path]) -> bool:
    """The correctness of what is timed: convert's array and the starter's, equal on every file."""
    return all(np.array_equal(read_spectrogram(path), starter_array(path)) for path in paths)


def _in_process_routes() -> dict:
    """Each route on one file, in this process."""
    return {"convert": lambda path, scratch: convert_file(path, scratch / f"{path.stem}.npy"),
            "starter": lambda path, scratch: starter_file(path, scratch / f"{path.stem}.npy"),
            "convert_read": lambda path, scratch: read_spectrogram(path),
            "floor": lambda path, scratch: floor_read(path),
            "floor_columns": lambda path, scratch: floor_read_columns(path)}


def _pool_routes(pool: ProcessPoolExecutor) -> dict:
    """Each route on a chunk of files, one file per task of a started pool."""
    def writing(worker):
        return lambda chunk, scratch: list(pool.map(worker, chunk, [scratch / f"{p.stem}.npy" for p in chunk]))

    return {"convert": writing(convert_file), "starter": writing(starter_file),
            "convert_read": lambda chunk, scratch: list(pool.map(read_shape, chunk)),
            "floor": lambda chunk, scratch: list(pool.map(floor_read, chunk)),
            "floor_columns": lambda chunk, scratch: list(pool.map(floor_read_columns, chunk))}


def measure_routes(paths: list[Path], workers: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per round of each route over all files, interleaved per file (one worker) or per
    chunk of 2 files per worker (a pool, started and warmed up before the timing)."""
    if workers == 1:
        routes = _in_process_routes()
        interleaved_items(routes, paths[:4], 1)  # warm-up: imports, first calls
        return interleaved_items(routes, paths, rounds)
    size = 2 * workers
    chunks = [paths[start : start + size] for start in range(0, len(paths), size)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        routes = _pool_routes(pool)
        interleaved_items(routes, chunks[:2], 1)  # warm-up: every worker started and its imports done
        return interleaved_items(routes, chunks, rounds)


def conversion_part(name: str, title: str, source: Path, paths: list[Path], workers: tuple[int, ...],
                    rounds: int) -> Part:
    """Per-file milliseconds of each route for each worker count, and the ratios to convert."""
    part = Part(name, title, data={**file_format(paths), "source": str(source), "rounds": rounds,
                                   "identical_to_starter": identical_to_starter(paths)})
    for count in workers:
        seconds = measure_routes(paths, count, rounds)
        suffix = f"_w{count}"
        for route, measured in seconds.items():
            part.figure(f"{route}{suffix}_ms_per_file", best(measured) / len(paths) * 1e3, "ms/file")
            part.rounds[f"{route}{suffix}"] = measured
        part.ratio(f"starter_over_convert{suffix}", f"starter{suffix}_ms_per_file", f"convert{suffix}_ms_per_file",
                   TARGETS["starter_over_convert"])
        part.ratio(f"convert_over_floor{suffix}", f"convert{suffix}_ms_per_file", f"floor{suffix}_ms_per_file",
                   TARGETS["convert_over_floor"])
        part.ratio(f"convert_read_over_floor{suffix}", f"convert_read{suffix}_ms_per_file",
                   f"floor{suffix}_ms_per_file")
        part.ratio(f"convert_over_floor_columns{suffix}", f"convert{suffix}_ms_per_file",
                   f"floor_columns{suffix}_ms_per_file")
    return part


def data_dir_spectrograms(data_dir: Path, limit: int) -> list[Path]:
    """Up to `limit` spectrogram parquet files of a competition folder (train, then test)."""
    from hms_offline.convert import is_parquet_name

    found = [path for folder in ("train_spectrograms", "test_spectrograms") if (data_dir / folder).is_dir()
             for path in sorted((data_dir / folder).iterdir()) if is_parquet_name(path) and path.is_file()]
    if not found:
        raise FileNotFoundError(f"no spectrogram parquet files in {data_dir}/train_spectrograms or test_spectrograms")
    return found[:limit]


def run(work: Path, n_files: int, workers: tuple[int, ...], rounds: int, data_dir: Path | None) -> list[Part]:
    source = work / "conversion" / "spectrograms"
    paths = write_real_format_spectrograms(source, n_files)
    parts = [conversion_part("conversion", f"1. conversion, {n_files} real-format spectrograms", source, paths,
                             workers, rounds)]
    if data_dir is not None:
        chosen = data_dir_spectrograms(Path(data_dir), n_files)
        parts.append(conversion_part("conversion_data_dir", f"1. conversion, {len(chosen)} spectrograms of {data_dir}",
                                     Path(data_dir), chosen, workers, rounds))
    return parts
