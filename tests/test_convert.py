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
from hms_offline.convert import convert_file, convert_tree, read_eeg, read_parquet, read_spectrogram

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


def test_eeg_round_trip_fills_nan_with_channel_mean(tmp_path):
    values = eeg_values()
    values[:, 0] = [1, np.nan, 2, 3, np.nan, 6]  # mean of the rest: 3
    values[:, 19] = [np.nan, -4, np.nan, np.nan, np.nan, np.nan]  # mean: -4
    values[:, 5] = np.nan  # whole channel missing -> 0
    src = write_eeg(tmp_path / "3911565283.parquet", values)

    array = np.load(convert_file(src, tmp_path / "3911565283.npy"))

    assert array.dtype == np.float32
    assert array.shape == (6, 20)
    expected = values.copy()
    expected[:, 0] = [1, 3, 2, 3, 3, 6]
    expected[:, 19] = -4
    expected[:, 5] = 0
    np.testing.assert_array_equal(array, expected)
    np.testing.assert_array_equal(read_eeg(src), expected)


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


# --- bad files ---------------------------------------------------------------------------


def test_spectrogram_columns_out_of_order(tmp_path):
    columns = list(SPECTROGRAM_COLUMNS)
    columns[1], columns[2] = columns[2], columns[1]
    src = write_spectrogram(tmp_path / "swapped.parquet", spectrogram_values(), columns=columns)

    with pytest.raises(ValueError, match="out of order") as raised:
        convert_file(src, tmp_path / "swapped.npy")

    message = str(raised.value)
    assert "swapped.parquet" in message
    assert "column 2 is 'LL_0.98' where 'LL_0.78' was expected" in message
    assert not (tmp_path / "swapped.npy").exists()


def test_spectrogram_missing_column(tmp_path):
    values = spectrogram_values()[:, :-1]
    src = write_spectrogram(tmp_path / "short.parquet", values, columns=SPECTROGRAM_COLUMNS[:-1])

    with pytest.raises(ValueError, match="missing columns 'RP_19.92'") as raised:
        convert_file(src, tmp_path / "short.npy")
    assert "short.parquet" in str(raised.value)
    assert "expected 'time' then the 400 spectrogram columns" in str(raised.value)


def test_spectrogram_without_time(tmp_path):
    values = spectrogram_values()
    table = pa.table([pa.array(values[:, i]) for i in range(400)], names=list(SPECTROGRAM_COLUMNS))
    pq.write_table(table, tmp_path / "no_time.parquet")

    expected = "no_time.parquet: not a valid spectrogram parquet: missing columns 'time'"
    with pytest.raises(ValueError, match=expected):
        read_parquet(tmp_path / "no_time.parquet")


def test_eeg_missing_channel(tmp_path):
    src = write_eeg(tmp_path / "eeg.parquet", eeg_values()[:, :-1], channels=EEG_CHANNELS[:-1])

    expected = "eeg.parquet: not a valid EEG parquet: missing columns 'EKG'"
    with pytest.raises(ValueError, match=expected):
        convert_file(src, tmp_path / "eeg.npy")


def test_eeg_read_as_spectrogram_is_refused(tmp_path):
    src = write_eeg(tmp_path / "eeg.parquet", eeg_values())

    with pytest.raises(ValueError, match="missing columns 'time', 'LL_0.59'"):
        read_spectrogram(src)


def test_unknown_file(tmp_path):
    table = pa.table({"patient_id": [1, 2], "label": [0.5, 0.25]})
    pq.write_table(table, tmp_path / "labels.parquet")

    with pytest.raises(ValueError) as raised:
        convert_file(tmp_path / "labels.parquet", tmp_path / "labels.npy")

    message = str(raised.value)
    assert "labels.parquet: neither a spectrogram nor an EEG parquet" in message
    assert "'patient_id', 'label'" in message
    assert "'time' then the 400 spectrogram columns LL_0.59 ... RP_19.92" in message
    assert "the 20 EEG channels Fp1 F3" in message


def test_non_numeric_column(tmp_path):
    arrays = [pa.array(eeg_values()[:, i]) for i in range(20)]
    arrays[9] = pa.array(["a"] * 6)
    pq.write_table(pa.table(arrays, names=list(EEG_CHANNELS)), tmp_path / "text.parquet")

    with pytest.raises(ValueError, match=r"text.parquet: non-numeric EEG columns 'Cz' \(string\)"):
        convert_file(tmp_path / "text.parquet", tmp_path / "text.npy")


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
    assert [path.name for path in dst.parent.iterdir()] == ["1.npy"]


def test_npy_has_no_extra_suffix(tmp_path):
    src = write_eeg(tmp_path / "x.parquet", eeg_values())

    convert_file(src, tmp_path / "out" / "x.npy")

    assert [path.name for path in (tmp_path / "out").iterdir()] == ["x.npy"]


# --- trees -------------------------------------------------------------------------------


def test_tree_of_parquet_files(tmp_path):
    src = good_folder(tmp_path / "src")
    dst = tmp_path / "dst"

    outputs = convert_tree(src, dst, workers=1, progress=False)

    assert outputs == [dst / "100.npy", dst / "101.npy", dst / "102.npy", dst / "900.npy"]
    np.testing.assert_array_equal(np.load(dst / "101.npy"), read_spectrogram(src / "101.parquet"))
    assert np.load(dst / "900.npy").shape == (6, 20)


def test_skips_files_that_are_up_to_date(tmp_path):
    src = good_folder(tmp_path / "src", n_spectrograms=1)
    dst = tmp_path / "dst"
    parquet, npy = src / "100.parquet", dst / "100.npy"
    now = time.time()
    os.utime(parquet, (now - 1000, now - 1000))
    convert_tree(src, dst, workers=1, progress=False)
    os.utime(npy, (now - 500, now - 500))
    untouched_ns = npy.stat().st_mtime_ns

    outputs = convert_tree(src, dst, workers=1, progress=False)

    assert npy in outputs
    assert npy.stat().st_mtime_ns == untouched_ns

    os.utime(parquet, (now - 100, now - 100))
    convert_tree(src, dst, workers=1, progress=False)

    assert npy.stat().st_mtime_ns > parquet.stat().st_mtime_ns


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

    with pytest.raises(ValueError) as raised:
        convert_tree(src, dst, workers=2, progress=False)

    message = str(raised.value)
    assert message.startswith("1 of 5 parquet files failed to convert:")
    assert f"{src / '555.parquet'}: cannot be read as parquet" in message
    assert "100.parquet" not in message
    converted = sorted(path.name for path in dst.iterdir())
    assert converted == ["100.npy", "101.npy", "102.npy", "900.npy"]


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

    with pytest.raises(ValueError, match="no .parquet files"):
        convert_tree(tmp_path / "src", tmp_path / "dst")


def test_workers_must_be_positive(tmp_path):
    good_folder(tmp_path / "src")

    with pytest.raises(ValueError, match="workers must be >= 1"):
        convert_tree(tmp_path / "src", tmp_path / "dst", workers=0)


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
    assert sorted(path.name for path in (tmp_path / "dst").iterdir()) == ["100.npy", "900.npy"]
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
