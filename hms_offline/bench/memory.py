"""Part 3: peak memory of the kernel at two test-set sizes.

predict_competition runs in a subprocess (a fresh Python, as on Kaggle); every SAMPLE_SECONDS
the resident set sizes (VmRSS, /proc/<pid>/status) of that process and all its descendants
(the conversion workers) are summed, and the peak of the sum is the figure. The target: the
peak at the larger size within 10 % of the smaller's, a kernel whose memory does not grow
with the test set. The test sets hard-link a few generated files under distinct ids
(kernel.replicated_test_set), so 5,000 spectrograms cost little to make.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hms_offline.bench.measure import Part

SAMPLE_SECONDS = 0.05
TARGET = ("at_most", 1.10)


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """The process and all its descendants, now."""
    pids, index = [pid], 0
    while index < len(pids):
        pids += children(pids[index])
        index += 1
    return pids


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:  # it ended between listing and reading
        pass
    return 0


def tree_rss_bytes(pid: int) -> int:
    return sum(rss_bytes(member) for member in tree(pid))


def peak_rss(command: list[str]) -> tuple[int, float]:
    """Run `command`; the peak of its process tree's summed RSS (bytes) and its wall seconds.
    Raises naming the command and its last output when it fails. Its output goes to a file, not
    a pipe: a pipe nobody reads while it runs would block it once full."""
    started = time.perf_counter()
    peak = 0
    with tempfile.TemporaryFile("w+", errors="replace") as log:
        with subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True) as process:
            while process.poll() is None:
                peak = max(peak, tree_rss_bytes(process.pid))
                time.sleep(SAMPLE_SECONDS)
        if process.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(command[:3])} ... exited {process.returncode}: {log.read()[-2000:]}")
    return peak, time.perf_counter() - started


def kernel_command(data_dir: Path, bundle: Path, output: Path, engine: str) -> list[str]:
    code = ("import sys; from hms_offline.serving.inference import predict_competition; "
            "predict_competition(sys.argv[1], sys.argv[2], sys.argv[3], engine=sys.argv[4])")
    return [sys.executable, "-c", code, str(data_dir), str(bundle), str(output), engine]


def run(work: Path, sizes: tuple[int, int], engine: str, cache: Path) -> list[Part]:
    from hms_offline.bench.kernel import ENSEMBLES, base_competition, replicated_test_set
    from hms_offline.bench.models import write_bench_bundle

    folder = work / "memory"
    base = base_competition(folder, distinct=16)
    bundle = write_bench_bundle(folder / "bundle", ENSEMBLES[1], (engine,), cache)
    part = Part("memory", f"3. peak memory of the kernel (RSS of its process tree), {engine}, K = 1",
                data={"sizes": list(sizes), "engine": engine, "sample_seconds": SAMPLE_SECONDS})
    for n in sizes:
        data_dir = replicated_test_set(base, folder / f"test_n{n}", n)
        peak, seconds = peak_rss(kernel_command(data_dir, bundle, folder / f"submission_n{n}.csv", engine))
        part.figure(f"peak_rss_n{n}_mb", peak / 2**20, "MiB")
        part.data[f"wall_seconds_n{n}"] = seconds
    small, large = sorted(sizes)
    part.ratio(f"peak_n{large}_over_n{small}", f"peak_rss_n{large}_mb", f"peak_rss_n{small}_mb", TARGET)
    return [part]
