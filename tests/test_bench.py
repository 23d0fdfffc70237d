"""`python -m hms_offline bench`: the quick run end to end (its JSON: every part, finite positive
figures, each ratio the quotient of the figures it names), and the correctness of what it times:
the conversion route against the starter's on the same real-format files, the named per-window
baseline against the package's loader, the process tree its memory figure sums. No timing is
asserted anywhere: the figures depend on the machine."""

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from hms_offline.bench import conversion, kernel, memory
from hms_offline.bench.measure import Part, interleaved
from hms_offline.convert import convert_tree, read_spectrogram
from hms_offline.serving.samples import distinct_samples
from hms_offline.serving.submission import read_sample_submission, read_test_rows

from conftest import REPO_ROOT

PARTS = {"conversion", "kernel", "memory", "training"}


def test_generated_spectrograms_are_real_format_and_convert_equals_the_starter(tmp_path):
    paths = conversion.write_real_format_spectrograms(tmp_path / "src", 3)
    shape = conversion.file_format(paths)
    assert (shape["rows"], shape["columns"]) == (690, 401)
    assert shape["metadata_bytes"] > 170_000  # the real file's footer: 177,692 bytes
    # written like the real files: dictionary-encoded value columns, the same encodings
    assert pq.ParquetFile(paths[0]).metadata.row_group(0).column(1).encodings == ("PLAIN", "RLE", "RLE_DICTIONARY")
    real_path = REPO_ROOT.parent / "shared/data/hms-sample/train_spectrograms/1000189855.parquet"
    if real_path.is_file():
        real = pq.ParquetFile(real_path)
        assert abs(shape["metadata_bytes"] - real.metadata.serialized_size) < 0.05 * real.metadata.serialized_size
        assert pq.ParquetFile(paths[0]).schema_arrow == real.schema_arrow.remove_metadata().with_metadata(
            pq.ParquetFile(paths[0]).schema_arrow.metadata)
    assert np.isnan(pq.read_table(paths[0]).to_pandas().to_numpy(dtype=float)).any()  # fillna(0) matters
    assert conversion.identical_to_starter(paths)
    converted = convert_tree(tmp_path / "src", tmp_path / "convert", workers=1, progress=False)
    for path, npy in zip(paths, converted):
        starter = conversion.starter_file(path, tmp_path / f"starter_{path.stem}.npy")
        assert np.array_equal(np.load(npy), np.load(starter)) and np.load(npy).dtype == np.float32
        assert np.array_equal(read_spectrogram(path), np.load(starter))


def test_a_ratio_is_the_quotient_of_its_figures_and_says_whether_it_meets_its_target():
    part = Part("p", "a part")
    part.figure("slow_ms", 30.0, "ms")
    part.figure("fast_ms", 12.0, "ms")
    assert part.ratio("speed-up", "slow_ms", "fast_ms", ("at_least", 2.0)) == 2.5
    part.ratio("overhead", "slow_ms", "fast_ms", ("at_most", 1.25))
    assert part.ratios["speed-up"] == {"numerator": "slow_ms", "denominator": "fast_ms", "value": 2.5,
                                       "target": {"at_least": 2.0}, "met": True}
    assert part.ratios["overhead"]["met"] is False
    lines = part.lines()
    assert "  speed-up: 2.50x  (slow_ms / fast_ms)   target >= 2: met" in lines
    assert "  overhead: 2.50x  (slow_ms / fast_ms)   target <= 1.25: NOT met" in lines


def test_interleaved_rounds_rotate_the_order_and_give_each_run_a_fresh_folder():
    calls, folders = [], []

    def route(name):
        def run(scratch):
            calls.append(name)
            folders.append(scratch)
            assert scratch.is_dir() and not any(scratch.iterdir())
            (scratch / "left").write_text("x")
        return run

    seconds = interleaved({name: route(name) for name in "abc"}, rounds=3)
    assert calls == list("abc" "bca" "cab")
    assert all(len(measured) == 3 and min(measured) >= 0 for measured in seconds.values())
    assert len(set(folders)) == 9 and not any(folder.exists() for folder in folders)


def test_replicated_test_set_names_n_distinct_samples_the_kernel_reads(tmp_path):
    base = kernel.base_competition(tmp_path, distinct=2)
    data_dir = kernel.replicated_test_set(base, tmp_path / "n5", 5)
    test = read_test_rows(data_dir / "test.csv")
    assert len(distinct_samples(test.rows)) == 5 and not test.set_aside
    files = kernel.test_files(data_dir)
    assert len(files) == 5 and len({os.stat(path).st_ino for path in files}) == 2  # hard links to 2 files
    assert list(read_sample_submission(data_dir / "sample_submission.csv")["eeg_id"]) == list(test.rows["eeg_id"])


def test_peak_rss_sums_the_whole_process_tree():
    """A child holding 200 MiB while its parent holds little: the peak counts the child."""
    child = "import time; block = bytearray(200 * 2**20); time.sleep(2)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    peak, seconds = memory.peak_rss([sys.executable, "-c", parent])
    assert peak > 200 * 2**20 and seconds >= 2
    with pytest.raises(RuntimeError, match="exited 3"):
        memory.peak_rss([sys.executable, "-c", "raise SystemExit(3)"])
    # A kernel that logs more than a pipe holds (64 KiB) runs to its end (it once blocked on a full pipe).
    talkative = "import sys; sys.stderr.write('x' * 2**20); print('y' * 2**20)"
    assert memory.peak_rss([sys.executable, "-c", talkative])[0] > 0


@pytest.mark.slow
def test_the_per_window_baseline_gives_the_loaders_batches(tmp_path):
    """What the training part times on both sides is the same data (the loader may move its
    transform into TensorFlow ops: equal within 1e-5)."""
    from hms_offline.bench.training import per_window_baseline, window_table
    from hms_offline.training.data import window_dataset

    table, labels = window_table(tmp_path, n_rows=8)
    positions = np.arange(len(labels))[::-1]
    for (images, targets), (base_images, base_targets) in zip(window_dataset(table, positions, 4, False),
                                                              per_window_baseline(table, positions, 4, False)):
        np.testing.assert_allclose(np.asarray(images), np.asarray(base_images), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(targets), np.asarray(base_targets))


@pytest.mark.slow
def test_quick_bench_runs_end_to_end_and_its_json_holds_every_part(tmp_path):
    out = tmp_path / "bench.json"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "hms_offline", "bench", "--quick", "--json", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert set(record["parts"]) == PARTS and set(record["part_seconds"]) == PARTS
    assert record["machine"]["cores"] == os.cpu_count() and record["machine"]["versions"]["pyarrow"]
    for name, part in record["parts"].items():
        assert part["figures"] and part["ratios"], name
        for figure, value in part["figures"].items():
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, figure, value)
        for ratio, entry in part["ratios"].items():
            assert entry["value"] == part["figures"][entry["numerator"]] / part["figures"][entry["denominator"]], ratio
        assert part["title"] in result.stdout
    conversion_data = record["parts"]["conversion"]["data"]
    assert conversion_data["identical_to_starter"] is True and conversion_data["rows"] == 690
    assert {"starter_over_convert_w1", "convert_over_floor_w1"} <= set(record["parts"]["conversion"]["ratios"])
    assert "tflite_k1_kernel_over_forward_plus_floor" in record["parts"]["kernel"]["ratios"]
    assert "loader_over_per_window_baseline" in record["parts"]["training"]["ratios"]
    print(f"quick bench: {time.perf_counter() - started:.0f} s, parts {record['part_seconds']}")
