"""Corrupt parquet files get a clear ParquetFormatError: never a crash, a hang or another
exception type.

The cases are read in a subprocess (this file, run as a script), since a corrupt file that
crashed the reader would otherwise take pytest down with it. The script reports each case
as a JSON line before and after reading it, so a death or a hang is pinned on one case.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hms_offline.constants import EEG_CHANNELS, SPECTROGRAM_COLUMNS
from hms_offline.convert import ConversionError, ParquetFormatError, convert_tree, read_parquet

N_TRUNCATIONS = 100  # per base file (2 base files)
N_BIT_FLIPS = 100  # per base file
N_RANDOM_BLOBS = 50
TIMEOUT_SECONDS = 120
# A column name that is not UTF-8 (same length as the name it replaces, so the file stays valid).
BAD_NAME = (b"LL_0.78", b"\xff\xfe_0.78")


def base_files() -> dict[str, bytes]:
    """A real-format spectrogram (int16 `time` + 400 float32 columns) and EEG, as bytes."""
    rng = np.random.default_rng(0)
    power = rng.uniform(0.01, 4000, size=(30, len(SPECTROGRAM_COLUMNS))).astype(np.float32)
    power[3] = np.nan
    spectrogram = pa.table(
        [pa.array(np.arange(1, 60, 2, dtype=np.int16))] + [pa.array(column) for column in power.T],
        names=["time", *SPECTROGRAM_COLUMNS],
    )
    signals = rng.normal(0, 50, size=(400, len(EEG_CHANNELS))).astype(np.float32)
    eeg = pa.table([pa.array(column) for column in signals.T], names=list(EEG_CHANNELS))
    return {"spectrogram": _parquet_bytes(spectrogram), "eeg": _parquet_bytes(eeg)}


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def corrupt_cases(seed: int = 0) -> dict[str, tuple[bytes, bool]]:
    """{case name: (bytes, whether a valid read is acceptable)}: truncations and random
    blobs must fail; a bit flip may land in a value and leave a valid file."""
    rng = np.random.default_rng(seed)
    cases = {}
    for kind, data in base_files().items():
        for i, length in enumerate(rng.integers(0, len(data), size=N_TRUNCATIONS)):
            cases[f"{kind}-truncated-{i:03d}-to-{length}"] = (data[:length], False)
        for i in range(N_BIT_FLIPS):
            flipped = bytearray(data)
            # Half the flips land in the footer (the metadata), where they do the most harm.
            low = len(data) - min(len(data), 3000) if i % 2 else 0
            for position in rng.integers(low, len(data), size=rng.integers(1, 9)):
                flipped[position] ^= 1 << int(rng.integers(0, 8))
            cases[f"{kind}-bitflip-{i:03d}"] = (bytes(flipped), True)
    for i in range(N_RANDOM_BLOBS):
        blob = rng.integers(0, 256, size=int(rng.integers(0, 5000)), dtype=np.uint8).tobytes()
        if i % 2:  # parquet's magic at both ends gets past the first check
            blob = b"PAR1" + blob + b"PAR1"
        cases[f"random-{i:03d}"] = (blob, False)
    spectrogram = base_files()["spectrogram"]
    assert spectrogram.count(BAD_NAME[0]) >= 1
    cases["non-utf8-column-name"] = (spectrogram.replace(*BAD_NAME), False)
    return cases


def read_case(path: Path) -> dict:
    """Read one file as the converter does; what happened, as a JSON-ready dict."""
    try:
        array = read_parquet(path)
    except ParquetFormatError as error:
        return {"outcome": "ParquetFormatError", "message": str(error)}
    except Exception as error:  # noqa: BLE001 - any other type is what the test looks for
        return {"outcome": type(error).__name__, "message": str(error)}
    return {"outcome": "read", "shape": list(array.shape), "dtype": str(array.dtype)}


def run_cases(folder: Path) -> None:
    """Print a JSON line as each case starts and another with its outcome."""
    for path in sorted(Path(folder).iterdir()):
        print(json.dumps({"case": path.stem, "started": True}), flush=True)
        print(json.dumps({"case": path.stem, **read_case(path)}), flush=True)


def parse_report(stdout: str | bytes | None) -> tuple[dict[str, dict], str | None]:
    """({case: outcome}, the case that started without finishing, if any)."""
    if isinstance(stdout, bytes):
        stdout = stdout.decode(errors="replace")
    outcomes, unfinished = {}, None
    for line in (stdout or "").splitlines():
        record = json.loads(line)
        if record.pop("started", False):
            unfinished = record["case"]
        else:
            outcomes[record.pop("case")] = record
            unfinished = None
    return outcomes, unfinished


def test_corrupt_parquet_files_raise_parquet_format_error(tmp_path):
    """451 cases, each a `.parquet` read with `read_parquet`: 200 truncations and 200 bit
    flips (1-8 bits; half of them in the footer) of a real-format spectrogram and EEG, 50
    random blobs (half wrapped in parquet's `PAR1` magic) and one non-UTF-8 column name.
    A truncation, blob or bad name must raise ParquetFormatError naming the file; a bit
    flip may instead read as a valid array (it can land in a value), but nothing else."""
    cases = corrupt_cases()
    assert len(cases) == 2 * (N_TRUNCATIONS + N_BIT_FLIPS) + N_RANDOM_BLOBS + 1 == 451
    for name, (data, _) in cases.items():
        (tmp_path / f"{name}.parquet").write_bytes(data)

    try:
        result = subprocess.run(
            [sys.executable, __file__, str(tmp_path)],
            capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired as expired:
        _, unfinished = parse_report(expired.stdout)
        raise AssertionError(f"reading hung for {TIMEOUT_SECONDS} s on case {unfinished}") from None
    outcomes, unfinished = parse_report(result.stdout)
    assert result.returncode == 0 and unfinished is None, (
        f"the reader died (exit code {result.returncode}) on case {unfinished}: {result.stderr[-2000:]}"
    )

    assert set(outcomes) == set(cases)
    for name, (_, may_read) in cases.items():
        outcome = outcomes[name]
        if outcome["outcome"] == "read" and may_read:
            assert outcome["dtype"] == "float32", name
            assert outcome["shape"] in ([400, 30], [400, 20]), (name, outcome)
            continue
        assert outcome["outcome"] == "ParquetFormatError", (name, outcome)
        assert outcome["message"].startswith(f"{tmp_path / name}.parquet: "), (name, outcome)
    failed = [name for name, outcome in outcomes.items() if outcome["outcome"] != "read"]
    assert len(failed) > len(cases) / 2  # the corruption did reach the reader


def test_convert_tree_reports_every_corrupt_file_as_a_failure(tmp_path):
    """20 truncated copies beside one intact file: a ConversionError names exactly the 20."""
    spectrogram = base_files()["spectrogram"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "1.parquet").write_bytes(spectrogram)
    truncated = {str(100 + i): spectrogram[: len(spectrogram) * i // 20] for i in range(20)}
    for file_id, data in truncated.items():
        (src / f"{file_id}.parquet").write_bytes(data)

    with pytest.raises(ConversionError) as raised:
        convert_tree(src, tmp_path / "dst", workers=1, progress=False)

    assert set(raised.value.failures) == set(truncated)
    assert all(reason.startswith("cannot be read as parquet") for reason in raised.value.failures.values())
    assert raised.value.converted == [tmp_path / "dst" / "1.npy"]


if __name__ == "__main__":
    run_cases(Path(sys.argv[1]))
