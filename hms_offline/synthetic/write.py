"""Synthetic data shaped exactly like the competition's, with a learnable signal, written to a folder.

`write_competition(out, n_train, n_test, seed)` writes

    train.csv                      15 columns, integer votes, float offsets (60.0)
    train_spectrograms/<id>.parquet  `time` int64 (1, 3, 5, ...) + 400 float32, longer than 300 rows
    train_eegs/<id>.parquet          20 float32 channels at 200 Hz, covering every labelled 50 s window
    test.csv                       spectrogram_id, eeg_id, patient_id (one row per eeg_id)
    sample_submission.csv          eeg_id + six vote columns, all 1/6, in test.csv order
    test_spectrograms/<id>.parquet   `time` int16 + 400 float32, exactly 300 rows
    test_eegs/<id>.parquet           10,000 rows (50 s)
    test_solution.csv              eeg_id + the true vote fractions of the test rows (not on Kaggle)
    .hms_synthetic.json            marker: this folder was written here and may be overwritten

Same seed -> byte-identical files (numpy Generators seeded per file, parquet written with
fixed settings, CSVs with pandas' shortest-round-trip floats). Everything is written
into a hidden temporary sibling folder that is renamed to `out` only when complete.

The rows are planned in `plan.py`, the values drawn in `spectrograms.py` and `eegs.py` from
the class signatures of `signatures.py`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from hms_offline.constants import (
    EEG_CHANNELS, ID_COLUMN, SPECTROGRAM_COLUMNS, SPECTROGRAM_STEP_SECONDS, SPECTROGRAM_TIME_COLUMN,
    SUBMISSION_COLUMNS, TEST_COLUMNS, VOTE_COLUMNS,
)
from hms_offline.synthetic.eegs import eeg_signals, noise_bank
from hms_offline.synthetic.plan import Eeg, Recording, plan_test, plan_train
from hms_offline.synthetic.spectrograms import spectrogram_power

log = logging.getLogger(__name__)

MARKER_NAME = ".hms_synthetic.json"
GENERATOR = "hms_offline.synthetic"  # the marker's "generator" (the package: its modules may move)
GENERATOR_VERSION = 2  # 2: GPD and GRDA told apart only by the EEG; spatial fields and lags


@functools.lru_cache(maxsize=None)
def _schema(names: tuple[str, ...], dtypes: tuple[str, ...]) -> pa.Schema:
    """The schema pandas would write (with its `pandas` metadata, like the real files)."""
    frame = pd.DataFrame({name: np.zeros(1, dtype=dtype) for name, dtype in zip(names, dtypes)})
    return pa.Table.from_pandas(frame, preserve_index=False).schema


def _spectrogram_schema(time_dtype: str) -> pa.Schema:
    return _schema((SPECTROGRAM_TIME_COLUMN, *SPECTROGRAM_COLUMNS), (time_dtype,) + ("float32",) * len(SPECTROGRAM_COLUMNS))


def _eeg_schema() -> pa.Schema:
    return _schema(EEG_CHANNELS, ("float32",) * len(EEG_CHANNELS))


def _write_parquet(columns: list[np.ndarray], schema: pa.Schema, path: Path) -> None:
    # from_pandas=True: NaN becomes a null, as when pandas writes the frame.
    arrays = [pa.array(a, type=field.type, from_pandas=True) for a, field in zip(columns, schema)]
    table = pa.Table.from_arrays(arrays, schema=schema)
    # Fixed settings and no timestamps -> the same bytes for the same data. No dictionary
    # encoding: it is slow on high-cardinality floats and readers do not care.
    pq.write_table(table, path, compression="snappy", use_dictionary=False, write_statistics=True)


def _write_spectrogram(seed: int, kind: int, index: int, rec: Recording, time_dtype: str, folder: Path) -> None:
    power = spectrogram_power(_file_rng(seed, kind, index), rec, force_nan_rows=index == 0)
    times = np.arange(rec.n_columns) * SPECTROGRAM_STEP_SECONDS + SPECTROGRAM_STEP_SECONDS // 2
    _write_parquet([times.astype(time_dtype), *power], _spectrogram_schema(time_dtype), folder / f"{rec.spectrogram_id}.parquet")


def _write_eeg(seed: int, kind: int, index: int, eeg: Eeg, bank: np.ndarray, folder: Path) -> None:
    signals = eeg_signals(_file_rng(seed, kind, index), eeg, bank)
    _write_parquet(list(signals), _eeg_schema(), folder / f"{eeg.eeg_id}.parquet")


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, lineterminator="\n")


def _file_rng(seed: int, kind: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, kind, index])


def _check_args(out: Path, n_train: int, n_test: int, seed: int) -> None:
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1 (rows of {'train' if name == 'n_train' else 'test'}.csv), got {value}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not (out / MARKER_NAME).is_file():
            raise ValueError(
                f"{out} is not empty and is not a previous synthetic output (no {MARKER_NAME}); "
                "refusing to overwrite it"
            )


def write_competition(out: Path, n_train: int, n_test: int, seed: int) -> Path:
    """Write a synthetic competition folder to `out` and return it (see the module doc)."""
    out = Path(out)
    _check_args(out, n_train, n_test, seed)
    started = time.perf_counter()
    taken: set[int] = set()
    train, train_eegs, train_recs = plan_train(_file_rng(seed, 0, 0), int(n_train), taken)
    test, test_eegs, test_recs = plan_test(_file_rng(seed, 0, 1), int(n_test), taken)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.synth-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        for sub in ("train_spectrograms", "train_eegs", "test_spectrograms", "test_eegs"):
            (tmp / sub).mkdir()
        bank = noise_bank(_file_rng(seed, 5, 0))
        # One job per parquet file, each with its own Generator, so the bytes do not depend
        # on the order the (GIL-releasing numpy / pyarrow) worker threads run them in.
        jobs = [
            *((_write_spectrogram, seed, 1, i, rec, "int64", tmp / "train_spectrograms") for i, rec in enumerate(train_recs)),
            *((_write_eeg, seed, 2, i, eeg, bank, tmp / "train_eegs") for i, eeg in enumerate(train_eegs)),
            *((_write_spectrogram, seed, 3, i, rec, "int16", tmp / "test_spectrograms") for i, rec in enumerate(test_recs)),
            *((_write_eeg, seed, 4, i, eeg, bank, tmp / "test_eegs") for i, eeg in enumerate(test_eegs)),
        ]
        n_files = len(jobs) + 5
        workers = max(1, min(4, os.cpu_count() or 1))
        with tqdm(total=n_files, desc=f"synth {out.name}", unit="file") as bar, ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(job[0], *job[1:]) for job in jobs]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            _write_csv(test[list(SUBMISSION_COLUMNS)], tmp / "test_solution.csv")
            submission = test[[ID_COLUMN]].copy()
            for column in VOTE_COLUMNS:
                submission[column] = 1.0 / len(VOTE_COLUMNS)
            _write_csv(submission, tmp / "sample_submission.csv")
            marker = {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": int(seed),
                      "n_train": int(n_train), "n_test": int(n_test)}
            (tmp / MARKER_NAME).write_text(json.dumps(marker, sort_keys=True) + "\n")
            bar.update(3)
            _write_csv(train, tmp / "train.csv")
            _write_csv(test[list(TEST_COLUMNS)], tmp / "test.csv")
            bar.update(2)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "wrote %s: train.csv %d rows (%d eegs, %d spectrograms, %d patients), test.csv %d rows, "
        "%d parquet files, seed %d, in %.1f s",
        out, len(train), len(train_eegs), len(train_recs), train["patient_id"].nunique(), len(test),
        len(train_recs) + len(train_eegs) + len(test_recs) + len(test_eegs), seed,
        time.perf_counter() - started,
    )
    return out


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename the finished temp folder to `out`, moving an old (checked) `out` aside first."""
    if not out.exists():
        os.rename(tmp, out)
        return
    _check_args(out, 1, 1, 0)  # still empty or synthetic?
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / out.name)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
