import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hms_offline import convert
from hms_offline.constants import EEG_CHANNELS, SPECTROGRAM_COLUMNS
from hms_offline.convert import (
    ARRAY_FORMAT,
    WORKER_DIED,
    ConversionError,
    ParquetFormatError,
    convert_file,
    convert_tree,
    find_parquet,
    read_eeg,
    read_parquet,
    read_spectrogram,
    sidecar_path,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
N_ROWS = 7
ALL_NAN_ROW = 3


def spectrogram_values(seed: int = 0) -> np.ndarray:
    """[T, 400] float32 power values with scattered NaNs and one all-NaN row."""
    shape = (N_ROWS, len(SPECTROGRAM_COLUMNS))
    values = np.random.default_rng(seed).uniform(0.01, 4000, size=shape).astype(np.float32)
    values[0, 5] = values[2, 399] = values[6, 0] = np.nan
    values[ALL_NAN_ROW] = np.nan
    return values


def write_spectrogram(
    path: Path, values: np.ndarray, time_type=pa.int16(), columns=SPECTROGRAM_COLUMNS
) -> Path:
    times = pa.array(np.arange(1, 2 * len(values), 2), type=time_type)
    arrays = [times] + [pa.array(values[:, i], type=pa.float32()) for i in range(values.shape[1])]
    pq.write_table(pa.table(arrays, names=["time", *columns]), path)
    return path


def write_eeg(path: Path, values: np.ndarray, channels=EEG_CHANNELS) -> Path:
    arrays = [pa.array(values[:, i], type=pa.float32()) for i in range(values.shape[1])]
    pq.write_table(pa.table(arrays, names=list(channels)), path)
    return path


def eeg_values(seed: int = 0, n_rows: int = 6) -> np.ndarray:
    shape = (n_rows, len(EEG_CHANNELS))
    return np.random.default_rng(seed).normal(0, 50, size=shape).astype(np.float32)


def npy_names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.suffix == ".npy")


def good_folder(folder: Path, n_spectrograms: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_spectrograms):
        write_spectrogram(folder / f"{100 + i}.parquet", spectrogram_values(seed=i))
    write_eeg(folder / "900.parquet", eeg_values())
    return folder


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("time_type", [pa.int16(), pa.int64()])
def test_spectrogram_round_trip(tmp_path, time_type):
    values = spectrogram_values()
    src = write_spectrogram(tmp_path / "853520.parquet", values, time_type=time_type)

    dst = convert_file(src, tmp_path / "out" / "853520.npy")

    assert dst == tmp_path / "out" / "853520.npy"
    array = np.load(dst)
    assert array.dtype == np.float32
    assert array.shape == (400, N_ROWS)
    expected = np.where(np.isnan(values), 0, values).T
    np.testing.assert_array_equal(array, expected)
    assert array[7, 4] == values[4, 7]
    assert array[399, 1] == values[1, 399]
    assert array[5, 0] == 0 and array[399, 2] == 0
    assert not array[:, ALL_NAN_ROW].any()
    np.testing.assert_array_equal(read_spectrogram(src), array)


def test_eeg_round_trip_keeps_nan(tmp_path):
    """The EEG view fills a missing sample inside its own window (features/eeg.py), so
    conversion keeps every NaN where it was."""
    values = eeg_values()
    values[:, 0] = [1, np.nan, 2, 3, np.nan, 6]
    values[:, 19] = [np.nan, -4, np.nan, np.nan, np.nan, np.nan]
    values[:, 5] = np.nan  # a whole channel missing
    src = write_eeg(tmp_path / "3911565283.parquet", values)

    array = np.load(convert_file(src, tmp_path / "3911565283.npy"))

    assert array.dtype == np.float32
    assert array.shape == (6, 20) and array.flags.c_contiguous
    np.testing.assert_array_equal(array, values)  # NaN where values has NaN, equal elsewhere
    assert np.isnan(array).sum() == 2 + 5 + 6
    np.testing.assert_array_equal(read_eeg(src), values)
    np.testing.assert_array_equal(read_parquet(src), values)


def test_read_parquet_detects_the_kind(tmp_path):
    spectrogram = write_spectrogram(tmp_path / "s.parquet", spectrogram_values())
    eeg = write_eeg(tmp_path / "e.parquet", eeg_values())

    assert read_parquet(spectrogram).shape == (400, N_ROWS)
    assert read_parquet(eeg).shape == (6, 20)


def test_columns_beyond_the_expected_ones_are_ignored(tmp_path):
    values = eeg_values()
    table = pa.table([pa.array(values[:, i]) for i in range(20)] + [pa.array(np.arange(6))],
                     names=[*EEG_CHANNELS, "extra"])
    pq.write_table(table, tmp_path / "e.parquet")

    np.testing.assert_array_equal(read_eeg(tmp_path / "e.parquet"), values)


# --- columns are read by name ------------------------------------------------------------


def test_spectrogram_columns_in_another_order_are_read_by_name(tmp_path):
    values = spectrogram_values()
    order = np.random.default_rng(1).permutation(len(SPECTROGRAM_COLUMNS))
    shuffled = write_spectrogram(
        tmp_path / "shuffled.parquet", values[:, order], columns=[SPECTROGRAM_COLUMNS[i] for i in order]
    )
    in_order = write_spectrogram(tmp_path / "in_order.parquet", values)

    np.testing.assert_array_equal(read_parquet(shuffled), read_parquet(in_order))
    assert read_parquet(shuffled)[399, 1] == values[1, 399]


def test_eeg_channels_in_another_order_with_extra_columns_of_any_type(tmp_path):
    values = eeg_values()
    order = list(reversed(range(len(EEG_CHANNELS))))
    arrays = [pa.array(values[:, i]) for i in order] + [
        pa.nulls(6),  # a null-typed column
        pa.array(["x"] * 6),
        pa.array([[1, 2]] * 6),
    ]
    names = [EEG_CHANNELS[i] for i in order] + ["empty", "note", "nested"]
    pq.write_table(pa.table(arrays, names=names), tmp_path / "e.parquet")

    np.testing.assert_array_equal(read_parquet(tmp_path / "e.parquet"), values)


def test_time_of_any_type_is_ignored(tmp_path):
    values = spectrogram_values()
    arrays = [pa.array(["noon"] * N_ROWS)] + [pa.array(values[:, i]) for i in range(400)]
    pq.write_table(pa.table(arrays, names=["time", *SPECTROGRAM_COLUMNS]), tmp_path / "text_time.parquet")

    np.testing.assert_array_equal(
        read_parquet(tmp_path / "text_time.parquet"),
        read_parquet(write_spectrogram(tmp_path / "int_time.parquet", values)),
    )


# --- bad files ---------------------------------------------------------------------------


def test_spectrogram_missing_column(tmp_path):
    values = spectrogram_values()[:, :-1]
    src = write_spectrogram(tmp_path / "short.parquet", values, columns=SPECTROGRAM_COLUMNS[:-1])

    with pytest.raises(ParquetFormatError, match="missing columns 'RP_19.92'") as raised:
        convert_file(src, tmp_path / "short.npy")
    assert str(raised.value) == (
        f"{src}: not a valid spectrogram parquet: missing columns 'RP_19.92'; expected the 400 "
        "spectrogram columns LL_0.59 ... RP_19.92 (by name, in any order; other columns are ignored)"
    )
    assert not (tmp_path / "short.npy").exists()


def test_spectrogram_without_time(tmp_path):
    values = spectrogram_values()
    table = pa.table([pa.array(values[:, i]) for i in range(400)], names=list(SPECTROGRAM_COLUMNS))
    pq.write_table(table, tmp_path / "no_time.parquet")

    array = read_parquet(tmp_path / "no_time.parquet")

    np.testing.assert_array_equal(array, read_spectrogram(write_spectrogram(tmp_path / "t.parquet", values)))


def test_spectrogram_duplicated_column(tmp_path):
    values = spectrogram_values()
    columns = [*SPECTROGRAM_COLUMNS, "LL_1.95"]
    src = write_spectrogram(tmp_path / "dup.parquet", np.hstack([values, values[:, :1]]), columns=columns)

    expected = "dup.parquet: not a valid spectrogram parquet: duplicated columns 'LL_1.95'; expected"
    with pytest.raises(ParquetFormatError, match=expected):
        read_parquet(src)


def test_eeg_missing_channel(tmp_path):
    src = write_eeg(tmp_path / "eeg.parquet", eeg_values()[:, :-1], channels=EEG_CHANNELS[:-1])

    expected = "eeg.parquet: not a valid EEG parquet: missing columns 'EKG'"
    with pytest.raises(ValueError, match=expected):
        convert_file(src, tmp_path / "eeg.npy")


def test_eeg_read_as_spectrogram_is_refused(tmp_path):
    src = write_eeg(tmp_path / "eeg.parquet", eeg_values())

    with pytest.raises(ValueError, match=r"missing columns 'LL_0.59', .* \(and 395 more\)"):
        read_spectrogram(src)


def test_unknown_file(tmp_path):
    table = pa.table({"patient_id": [1, 2], "label": [0.5, 0.25]})
    pq.write_table(table, tmp_path / "labels.parquet")

    with pytest.raises(ValueError) as raised:
        convert_file(tmp_path / "labels.parquet", tmp_path / "labels.npy")

    message = str(raised.value)
    assert "labels.parquet: neither a spectrogram nor an EEG parquet" in message
    assert "'patient_id', 'label'" in message
    assert "the 400 spectrogram columns LL_0.59 ... RP_19.92 or the 20 EEG channels" in message
    assert "the 20 EEG channels Fp1 F3" in message


def test_non_numeric_column(tmp_path):
    arrays = [pa.array(eeg_values()[:, i]) for i in range(20)]
    arrays[9] = pa.array(["a"] * 6)
    pq.write_table(pa.table(arrays, names=list(EEG_CHANNELS)), tmp_path / "text.parquet")

    with pytest.raises(ValueError) as raised:
        convert_file(tmp_path / "text.parquet", tmp_path / "text.npy")
    assert str(raised.value) == (
        f"{tmp_path / 'text.parquet'}: non-numeric EEG columns 'Cz' (string); "
        "expected integer or float values"
    )


def test_null_typed_value_column(tmp_path):
    values = spectrogram_values()
    arrays = [pa.array(values[:, i]) for i in range(400)]
    arrays[3] = pa.nulls(N_ROWS)
    pq.write_table(pa.table(arrays, names=list(SPECTROGRAM_COLUMNS)), tmp_path / "n.parquet")

    with pytest.raises(ParquetFormatError, match=r"non-numeric spectrogram columns 'LL_1.17' \(null\)"):
        read_parquet(tmp_path / "n.parquet")


def test_file_that_is_not_parquet(tmp_path):
    src = tmp_path / "notes.parquet"
    src.write_text("time,LL_0.59\n0,1.0\n")

    with pytest.raises(ValueError, match="notes.parquet: cannot be read as parquet"):
        convert_file(src, tmp_path / "notes.npy")


def test_missing_source_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        convert_file(tmp_path / "absent.parquet", tmp_path / "absent.npy")


# --- writing -----------------------------------------------------------------------------


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    src = write_spectrogram(tmp_path / "1.parquet", spectrogram_values())
    out = tmp_path / "out"
    out.mkdir()

    def save_a_few_bytes_then_fail(handle, array):
        handle.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(convert.np, "save", save_a_few_bytes_then_fail)
    with pytest.raises(OSError, match="disk full"):
        convert_file(src, out / "1.npy")

    assert list(out.iterdir()) == []


def test_failed_write_keeps_the_previous_npy(tmp_path, monkeypatch):
    src = write_spectrogram(tmp_path / "1.parquet", spectrogram_values())
    dst = convert_file(src, tmp_path / "out" / "1.npy")
    before = dst.read_bytes()

    def fail(handle, array):
        handle.write(b"garbage")
        raise OSError("disk full")

    monkeypatch.setattr(convert.np, "save", fail)
    with pytest.raises(OSError):
        convert_file(src, dst)

    assert dst.read_bytes() == before
    assert sorted(path.name for path in dst.parent.iterdir()) == ["1.npy", "1.npy.source.json"]


def test_npy_has_no_extra_suffix(tmp_path):
    src = write_eeg(tmp_path / "x.parquet", eeg_values())

    convert_file(src, tmp_path / "out" / "x.npy")

    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["x.npy", "x.npy.source.json"]


# --- trees -------------------------------------------------------------------------------


def test_tree_of_parquet_files(tmp_path):
    src = good_folder(tmp_path / "src")
    dst = tmp_path / "dst"

    outputs = convert_tree(src, dst, workers=1, progress=False)

    assert outputs == [dst / "100.npy", dst / "101.npy", dst / "102.npy", dst / "900.npy"]
    np.testing.assert_array_equal(np.load(dst / "101.npy"), read_spectrogram(src / "101.parquet"))
    assert np.load(dst / "900.npy").shape == (6, 20)


def test_only_limits_the_work_to_those_ids(tmp_path):
    src = good_folder(tmp_path / "src")
    (src / "555.parquet").write_bytes(b"junk, but not asked for")

    outputs = convert_tree(src, tmp_path / "dst", workers=1, progress=False, only={"101", "900"})

    assert outputs == [tmp_path / "dst" / "101.npy", tmp_path / "dst" / "900.npy"]
    assert npy_names(tmp_path / "dst") == ["101.npy", "900.npy"]


# --- finding files by id -------------------------------------------------------------------


def test_parquet_and_pq_suffixes_in_any_case(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("1.PARQUET", "2.pq", "3.Pq", "4.parquet"):
        write_eeg(src / name, eeg_values(seed=len(name)))
    for name in ("5.csv", "6.parquet.bak", ".parquet", "7.npy"):
        (src / name).write_text("not a parquet file")
    dst = tmp_path / "dst"

    outputs = convert_tree(src, dst, workers=1, progress=False)

    assert outputs == [dst / f"{i}.npy" for i in (1, 2, 3, 4)]
    np.testing.assert_array_equal(np.load(dst / "3.npy"), read_eeg(src / "3.Pq"))
    assert sorted(path.name for path in dst.iterdir()) == sorted(
        name for i in (1, 2, 3, 4) for name in (f"{i}.npy", f"{i}.npy.source.json")
    )


def test_directory_named_like_a_parquet_file_fails_its_id(tmp_path):
    src = good_folder(tmp_path / "src", n_spectrograms=1)
    (src / "123.parquet").mkdir()
    dst = tmp_path / "dst"

    with pytest.raises(ConversionError) as raised:
        convert_tree(src, dst, workers=1, progress=False)

    assert raised.value.failures == {"123": "is a directory, not a parquet file"}
    assert raised.value.converted == [dst / "100.npy", dst / "900.npy"]
    assert str(raised.value).splitlines() == [
        "1 of 3 parquet files failed to convert:",
        f"  {src / '123.parquet'}: is a directory, not a parquet file",
    ]
    assert npy_names(dst) == ["100.npy", "900.npy"]


def test_two_files_with_the_same_id_fail_that_id(tmp_path):
    src = good_folder(tmp_path / "src", n_spectrograms=1)
    write_eeg(src / "1.parquet", eeg_values(seed=1))
    write_eeg(src / "1.pq", eeg_values(seed=2))
    dst = tmp_path / "dst"

    with pytest.raises(ConversionError) as raised:
        convert_tree(src, dst, workers=1, progress=False)

    reason = "2 files have the id '1' (1.parquet, 1.pq); keep only one"
    assert raised.value.failures == {"1": reason}
    assert f"  {src / '1.parquet'}: {reason}" in str(raised.value).splitlines()
    assert npy_names(dst) == ["100.npy", "900.npy"]


def test_find_parquet(tmp_path):
    write_eeg(tmp_path / "7.PQ", eeg_values())
    (tmp_path / "8.parquet").mkdir()

    assert find_parquet(tmp_path, "7") == tmp_path / "7.PQ"
    with pytest.raises(FileNotFoundError, match="no .parquet or .pq file for id 9"):
        find_parquet(tmp_path, "9")
    with pytest.raises(ParquetFormatError, match="8.parquet: is a directory, not a parquet file"):
        find_parquet(tmp_path, 8)


# --- up to date means the same source: the sidecar -----------------------------------------


def test_sidecar_records_the_parquet_size_and_sha256(tmp_path):
    src = write_eeg(tmp_path / "5.parquet", eeg_values())

    dst = convert_file(src, tmp_path / "out" / "5.npy")

    assert sidecar_path(dst) == tmp_path / "out" / "5.npy.source.json"
    expected = {"size": src.stat().st_size, "sha256": hashlib.sha256(src.read_bytes()).hexdigest(), "array_format": 2}
    assert json.loads(sidecar_path(dst).read_text()) == expected
    assert ARRAY_FORMAT == 2


def test_sidecar_is_written_after_the_npy(tmp_path, monkeypatch):
    src = write_eeg(tmp_path / "5.parquet", eeg_values())
    dst = tmp_path / "out" / "5.npy"
    npy_existed = []
    write = convert.write_text_atomically

    def record_then_write(path, text):
        npy_existed.append(dst.exists())
        return write(path, text)

    monkeypatch.setattr(convert, "write_text_atomically", record_then_write)
    convert_file(src, dst)

    assert npy_existed == [True]


def test_unchanged_parquet_is_skipped_whatever_its_mtime(tmp_path):
    src = good_folder(tmp_path / "src", n_spectrograms=1)
    dst = tmp_path / "dst"
    convert_tree(src, dst, workers=1, progress=False)
    now = time.time()
    os.utime(dst / "100.npy", (now - 1000, now - 1000))
    os.utime(src / "100.parquet", (now, now))  # newer than the .npy, same content
    untouched_ns = (dst / "100.npy").stat().st_mtime_ns

    outputs = convert_tree(src, dst, workers=1, progress=False)

    assert dst / "100.npy" in outputs
    assert (dst / "100.npy").stat().st_mtime_ns == untouched_ns


def test_changed_parquet_is_reconverted_even_when_older(tmp_path):
    src = good_folder(tmp_path / "src", n_spectrograms=1)
    dst = tmp_path / "dst"
    convert_tree(src, dst, workers=1, progress=False)
    parquet = write_spectrogram(src / "100.parquet", spectrogram_values(seed=42))
    old = time.time() - 10_000
    os.utime(parquet, (old, old))  # older than the .npy, new content

    convert_tree(src, dst, workers=1, progress=False)

    np.testing.assert_array_equal(np.load(dst / "100.npy"), read_spectrogram(parquet))
    recorded = json.loads(sidecar_path(dst / "100.npy").read_text())
    assert recorded["sha256"] == hashlib.sha256(parquet.read_bytes()).hexdigest()


@pytest.mark.parametrize("damage", ["deleted", "not json", "not an object", "other digest", "other size", "no digest",
                                    "other format"])
def test_npy_without_a_matching_sidecar_is_reconverted(tmp_path, damage):
    src = good_folder(tmp_path / "src", n_spectrograms=1)
    dst = tmp_path / "dst"
    convert_tree(src, dst, workers=1, progress=False)
    sidecar = sidecar_path(dst / "100.npy")
    recorded = json.loads(sidecar.read_text())
    damaged = {
        "deleted": None,
        "not json": "{oops",
        "not an object": json.dumps([recorded]),
        "other digest": json.dumps({**recorded, "sha256": "0" * 64}),
        "other size": json.dumps({**recorded, "size": recorded["size"] + 1}),
        "no digest": json.dumps({"size": recorded["size"]}),
        "other format": json.dumps({**recorded, "array_format": 1}),
    }[damage]
    if damaged is None:
        sidecar.unlink()
    else:
        sidecar.write_text(damaged)
    np.save(dst / "100.npy", np.zeros(3, dtype=np.float32))  # a stale array

    convert_tree(src, dst, workers=1, progress=False)

    np.testing.assert_array_equal(np.load(dst / "100.npy"), read_spectrogram(src / "100.parquet"))
    assert json.loads(sidecar.read_text()) == recorded


def test_an_eeg_of_the_old_format_is_reconverted_with_its_nan(tmp_path):
    """Format 1 filled an EEG's NaN with its channel's mean and wrote a sidecar without
    `array_format`; its parquet unchanged, the .npy is still converted again."""
    src = tmp_path / "src"
    src.mkdir()
    values = eeg_values()
    values[1:3, 4] = np.nan
    parquet = write_eeg(src / "900.parquet", values)
    dst = tmp_path / "dst"
    old = np.where(np.isnan(values), np.nanmean(values, axis=0), values).astype(np.float32)
    dst.mkdir()
    np.save(dst / "900.npy", old)
    stamp = {"size": parquet.stat().st_size, "sha256": hashlib.sha256(parquet.read_bytes()).hexdigest()}
    sidecar_path(dst / "900.npy").write_text(json.dumps(stamp) + "\n")
    assert not convert.is_up_to_date(parquet, dst / "900.npy")

    convert_tree(src, dst, workers=1, progress=False)

    np.testing.assert_array_equal(np.load(dst / "900.npy"), values)
    assert np.isnan(np.load(dst / "900.npy")[1:3, 4]).all()
    assert json.loads(sidecar_path(dst / "900.npy").read_text()) == {**stamp, "array_format": ARRAY_FORMAT}
    assert convert.is_up_to_date(parquet, dst / "900.npy")


def test_failed_conversion_removes_the_old_npy_and_sidecar(tmp_path):
    src = good_folder(tmp_path / "src", n_spectrograms=1)
    dst = tmp_path / "dst"
    convert_tree(src, dst, workers=1, progress=False)
    (src / "100.parquet").write_bytes(b"a broken new version")

    with pytest.raises(ConversionError) as raised:
        convert_tree(src, dst, workers=1, progress=False)

    assert list(raised.value.failures) == ["100"]
    assert raised.value.converted == [dst / "900.npy"]
    assert sorted(path.name for path in dst.iterdir()) == ["900.npy", "900.npy.source.json"]


def test_a_second_file_for_an_id_removes_its_old_npy(tmp_path):
    src = good_folder(tmp_path / "src", n_spectrograms=1)
    dst = tmp_path / "dst"
    convert_tree(src, dst, workers=1, progress=False)
    write_spectrogram(src / "100.PQ", spectrogram_values(seed=5))

    with pytest.raises(ConversionError) as raised:
        convert_tree(src, dst, workers=1, progress=False)

    assert raised.value.failures == {"100": "2 files have the id '100' (100.PQ, 100.parquet); keep only one"}
    assert sorted(path.name for path in dst.iterdir()) == ["900.npy", "900.npy.source.json"]


def test_summary_is_logged(tmp_path, caplog):
    src = good_folder(tmp_path / "src", n_spectrograms=1)
    convert_tree(src, tmp_path / "dst", workers=1, progress=False)

    with caplog.at_level("INFO", logger="hms_offline.convert"):
        convert_tree(src, tmp_path / "dst", workers=1, progress=False)

    assert "converted 0, skipped 2 up to date, failed 0 parquet files" in caplog.text


def test_competition_folder_layout(tmp_path):
    src = tmp_path / "competition"
    for name in ("train_spectrograms", "test_spectrograms", "test_eegs"):
        (src / name).mkdir(parents=True)
    train = src / "train_spectrograms" / "1.parquet"
    write_spectrogram(train, spectrogram_values(), time_type=pa.int64())
    write_spectrogram(src / "test_spectrograms" / "2.parquet", spectrogram_values())
    write_eeg(src / "test_eegs" / "3.parquet", eeg_values())
    (src / "test.csv").write_text("spectrogram_id,eeg_id,patient_id\n2,3,4\n")
    dst = tmp_path / "npy"

    outputs = convert_tree(src, dst, workers=1, progress=False)

    assert outputs == [
        dst / "test_eegs" / "3.npy",
        dst / "test_spectrograms" / "2.npy",
        dst / "train_spectrograms" / "1.npy",
    ]
    assert all(path.exists() for path in outputs)
    folders = sorted(path.name for path in dst.iterdir())
    assert folders == ["test_eegs", "test_spectrograms", "train_spectrograms"]


def test_one_bad_file_among_good_ones(tmp_path):
    src = good_folder(tmp_path / "src")
    (src / "555.parquet").write_bytes(b"not parquet at all")
    dst = tmp_path / "dst"

    with pytest.raises(ConversionError) as raised:
        convert_tree(src, dst, workers=2, progress=False)

    error = raised.value
    assert isinstance(error, ValueError)
    message = str(error)
    assert message.startswith("1 of 5 parquet files failed to convert:")
    assert f"{src / '555.parquet'}: cannot be read as parquet" in message
    assert "100.parquet" not in message
    assert list(error.failures) == ["555"]
    assert error.failures["555"].startswith("cannot be read as parquet")
    assert error.converted == [dst / name for name in ("100.npy", "101.npy", "102.npy", "900.npy")]
    assert npy_names(dst) == ["100.npy", "101.npy", "102.npy", "900.npy"]


def test_every_failure_is_listed(tmp_path):
    src = good_folder(tmp_path / "src", n_spectrograms=1)
    (src / "a.parquet").write_bytes(b"junk")
    pq.write_table(pa.table({"x": [1.0]}), src / "b.parquet")

    with pytest.raises(ValueError) as raised:
        convert_tree(src, tmp_path / "dst", workers=1, progress=False)

    lines = str(raised.value).splitlines()
    assert lines[0] == "2 of 4 parquet files failed to convert:"
    assert lines[1].startswith(f"  {src / 'a.parquet'}: cannot be read as parquet")
    assert lines[2].startswith(f"  {src / 'b.parquet'}: neither a spectrogram nor an EEG parquet")


def test_failures_with_one_id_in_two_subfolders_share_its_entry(tmp_path):
    src = tmp_path / "competition"
    for name in ("train_spectrograms", "test_spectrograms"):
        (src / name).mkdir(parents=True)
        (src / name / "1.parquet").write_bytes(b"junk")
    write_spectrogram(src / "test_spectrograms" / "2.parquet", spectrogram_values())

    with pytest.raises(ConversionError) as raised:
        convert_tree(src, tmp_path / "npy", workers=1, progress=False)

    error = raised.value
    test_file, train_file = src / "test_spectrograms" / "1.parquet", src / "train_spectrograms" / "1.parquet"
    assert list(error.failed_files) == [test_file, train_file]
    assert list(error.failures) == ["1"]
    assert error.failures["1"].startswith(f"{test_file}: cannot be read as parquet")
    assert f"; {train_file}: cannot be read as parquet" in error.failures["1"]
    assert error.converted == [tmp_path / "npy" / "test_spectrograms" / "2.npy"]


def test_two_workers_write_the_same_bytes_as_one(tmp_path):
    src = good_folder(tmp_path / "src")

    serial = convert_tree(src, tmp_path / "serial", workers=1, progress=False)
    parallel = convert_tree(src, tmp_path / "parallel", workers=2, progress=False)

    assert [path.name for path in parallel] == [path.name for path in serial]
    for one, two in zip(serial, parallel):
        assert one.read_bytes() == two.read_bytes()


def test_missing_source_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        convert_tree(tmp_path / "nowhere", tmp_path / "dst")


def test_source_without_parquet_files(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.txt").write_text("hi")

    with pytest.raises(ValueError, match="no .parquet or .pq files"):
        convert_tree(tmp_path / "src", tmp_path / "dst")


def test_workers_must_be_positive(tmp_path):
    good_folder(tmp_path / "src")

    with pytest.raises(ValueError, match="workers must be >= 1"):
        convert_tree(tmp_path / "src", tmp_path / "dst", workers=0)


# --- a worker that dies ----------------------------------------------------------------------
# The pool's workers are spawned: they import these workers from this module (pytest puts
# tests/ on sys.path, and spawned children inherit it).

DEADLY_ID = "666"


def convert_or_die(src_file: Path, dst_file: Path) -> Path:
    """convert_file, except that the process dies on DEADLY_ID, as if killed by the OOM killer."""
    if Path(src_file).stem == DEADLY_ID:
        os._exit(1)
    return convert_file(src_file, dst_file)


def convert_or_die_once(src_file: Path, dst_file: Path) -> Path:
    """convert_or_die, only the first time (a marker beside the parquet remembers)."""
    marker = Path(src_file).with_suffix(".died")
    if Path(src_file).stem == DEADLY_ID and not marker.exists():
        marker.touch()
        os._exit(1)
    return convert_file(src_file, dst_file)


def deadly_folder(folder: Path) -> Path:
    """Six good spectrograms, one EEG, the deadly file (a good spectrogram) and one junk file."""
    good_folder(folder, n_spectrograms=6)
    write_spectrogram(folder / f"{DEADLY_ID}.parquet", spectrogram_values())
    (folder / "555.parquet").write_bytes(b"junk")
    return folder


@pytest.mark.slow
def test_a_dying_worker_costs_only_the_file_that_killed_it(tmp_path):
    src = deadly_folder(tmp_path / "src")
    dst = tmp_path / "dst"

    with pytest.raises(ConversionError) as raised:
        convert_tree(src, dst, workers=3, progress=False, _worker=convert_or_die)

    error = raised.value
    assert sorted(error.failures) == ["555", DEADLY_ID]
    assert error.failures[DEADLY_ID] == WORKER_DIED
    assert error.failures["555"].startswith("cannot be read as parquet")
    assert f"  {src / '666.parquet'}: {WORKER_DIED}" in str(error).splitlines()
    survivors = ["100.npy", "101.npy", "102.npy", "103.npy", "104.npy", "105.npy", "900.npy"]
    assert [path.name for path in error.converted] == survivors
    assert npy_names(dst) == survivors
    for name in survivors:
        np.testing.assert_array_equal(np.load(dst / name), read_parquet(src / name.replace(".npy", ".parquet")))


@pytest.mark.slow
def test_a_file_that_kills_only_once_is_converted_on_retry(tmp_path):
    src = deadly_folder(tmp_path / "src")
    (src / "555.parquet").unlink()
    dst = tmp_path / "dst"

    outputs = convert_tree(src, dst, workers=3, progress=False, _worker=convert_or_die_once)

    assert (src / f"{DEADLY_ID}.died").exists()  # it did kill a worker
    assert [path.name for path in outputs] == [
        "100.npy", "101.npy", "102.npy", "103.npy", "104.npy", "105.npy", "666.npy", "900.npy"
    ]
    assert npy_names(dst) == [path.name for path in outputs]


@pytest.mark.slow
def test_a_dying_worker_removes_the_old_npy_of_its_file(tmp_path):
    src = deadly_folder(tmp_path / "src")
    (src / "555.parquet").unlink()
    dst = tmp_path / "dst"
    convert_tree(src, dst, workers=1, progress=False)
    # New versions of two files: with two pending, the conversion runs in a pool (with one,
    # it would run in this process, which the deadly file would kill).
    write_spectrogram(src / f"{DEADLY_ID}.parquet", spectrogram_values(seed=9))
    write_spectrogram(src / "101.parquet", spectrogram_values(seed=10))

    with pytest.raises(ConversionError) as raised:
        convert_tree(src, dst, workers=2, progress=False, _worker=convert_or_die)

    assert raised.value.failures == {DEADLY_ID: WORKER_DIED}
    assert not (dst / "666.npy").exists() and not sidecar_path(dst / "666.npy").exists()
    np.testing.assert_array_equal(np.load(dst / "101.npy"), read_spectrogram(src / "101.parquet"))


# --- command line ------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hms_offline", "convert", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )


def test_cli_converts(tmp_path):
    src = good_folder(tmp_path / "src", n_spectrograms=1)

    result = run_cli("--src", str(src), "--dst", str(tmp_path / "dst"), "--workers", "2")

    assert result.returncode == 0, result.stderr
    assert npy_names(tmp_path / "dst") == ["100.npy", "900.npy"]
    assert "converted 2, skipped 0 up to date, failed 0" in result.stderr


def test_cli_reports_a_bad_file(tmp_path):
    src = good_folder(tmp_path / "src", n_spectrograms=1)
    (src / "777.parquet").write_text("oops")

    result = run_cli("--src", str(src), "--dst", str(tmp_path / "dst"), "--workers", "1")

    assert result.returncode == 2
    assert "777.parquet: cannot be read as parquet" in result.stderr


# --- the real competition sample ---------------------------------------------------------


def test_real_sample(hms_sample, tmp_path):
    outputs = convert_tree(hms_sample, tmp_path, workers=1, progress=False)

    expected_shapes = {
        tmp_path / "test_spectrograms" / "853520.npy": (400, 300),
        tmp_path / "train_spectrograms" / "1000189855.npy": (400, 690),
        tmp_path / "test_eegs" / "3911565283.npy": (10000, 20),
    }
    assert set(expected_shapes) <= set(outputs)
    for path, shape in expected_shapes.items():
        array = np.load(path)
        assert array.shape == shape, path
        assert array.dtype == np.float32, path

    test_table = pq.read_table(hms_sample / "test_spectrograms" / "853520.parquet")
    assert test_table.schema.field("time").type == pa.int16()
    test_spectrogram = np.load(tmp_path / "test_spectrograms" / "853520.npy")
    for column, row in [(0, 0), (123, 45), (399, 299)]:
        expected = test_table.column(SPECTROGRAM_COLUMNS[column])[row].as_py()
        assert test_spectrogram[column, row] == expected

    train_table = pq.read_table(hms_sample / "train_spectrograms" / "1000189855.parquet")
    assert train_table.schema.field("time").type == pa.int64()
    train_spectrogram = np.load(tmp_path / "train_spectrograms" / "1000189855.npy")
    for column, row in [(0, 0), (250, 600), (399, 689)]:
        expected = train_table.column(SPECTROGRAM_COLUMNS[column])[row].as_py()
        assert train_spectrogram[column, row] == expected

    eeg_table = pq.read_table(hms_sample / "test_eegs" / "3911565283.parquet")
    eeg = np.load(tmp_path / "test_eegs" / "3911565283.npy")
    for row, channel in [(0, 0), (5000, 8), (9999, 19)]:
        assert eeg[row, channel] == eeg_table.column(EEG_CHANNELS[channel])[row].as_py()


@pytest.mark.slow
def test_isolated_conversion_survives_a_deadly_file_even_when_it_is_the_only_one(tmp_path):
    """The kernel's mode: even one pending file converts in a worker process, so a file that
    crashes the reader costs its own row, never the caller (this test's process survives)."""
    src = tmp_path / "src"
    src.mkdir()
    write_spectrogram(src / f"{DEADLY_ID}.parquet", spectrogram_values())

    with pytest.raises(ConversionError) as raised:
        convert_tree(src, tmp_path / "dst", workers=1, progress=False, isolate=True, _worker=convert_or_die)

    assert raised.value.failures == {DEADLY_ID: WORKER_DIED}
    outputs = convert_tree(src, tmp_path / "dst", workers=1, progress=False, isolate=True)
    assert [path.name for path in outputs] == [f"{DEADLY_ID}.npy"]
