"""Reading ahead: the test samples' batches read and preprocessed in worker processes while
the models run in this one.

`read_ahead` yields `prepare(batch)` for each batch, in order, computed by `workers` spawned
processes with at most `2 * workers` batches in flight, so memory stays flat whatever the
size of the test set, and the engine (this process) rarely waits. The parquet files are
never read in this process: a file that crashes or kills the reader (a pyarrow crash, the
OOM killer) kills a worker, never the kernel. Once the pool breaks, each batch left
unfinished is redone in isolation, one worker and one file or sample in flight at a time:
its recordings are checked one by one, a recording whose read kills the worker is marked
unusable (stage `convert`), then its samples are prepared one by one (one that still kills
the worker loses its views, stage `preprocess`). A fresh pool takes the remaining batches.
"""

import logging
import multiprocessing
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Iterator

from hms_offline.serving.samples import Batch, Prepared, SourceProblem, prepare, read_recording, recording_problem

log = logging.getLogger(__name__)

IN_FLIGHT_PER_WORKER = 2  # one batch being made, one waiting: the engine never starves for long
WORKER_DIED = "the reading worker died (killed or crashed)"


@dataclass
class StreamStats:
    """What the reading ahead cost: summed worker seconds and this process's waits for a batch."""

    workers: int
    read: float = 0.0
    preprocess: float = 0.0
    waited: float = 0.0  # this process blocked on the next batch: reading not hidden behind the models
    restarts: int = 0  # pools broken by a dying worker

    def add(self, prepared: Prepared) -> None:
        self.read += prepared.seconds.get("read", 0.0)
        self.preprocess += prepared.seconds.get("preprocess", 0.0)

    def as_dict(self) -> dict:
        return {"workers": self.workers, "read (workers)": self.read, "preprocess (workers)": self.preprocess,
                "waited for input": self.waited, "worker restarts": self.restarts}


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    # "spawn": this process holds threads (pyarrow, TensorFlow) that fork would copy mid-lock.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def read_ahead(batches: list[Batch], workers: int, stats: StreamStats, read=read_recording) -> Iterator[Prepared]:
    """`prepare(batch, read)` for each batch, in order (see the module doc); `read(path, source)`
    replaces the parquet reader in tests only (picklable, module-level)."""
    pending = deque(batches)
    while pending:
        pool = spawn_pool(workers)
        in_flight: deque[tuple[Batch, Future]] = deque()
        broken = False
        try:
            while pending or in_flight:
                while pending and not broken and len(in_flight) < IN_FLIGHT_PER_WORKER * workers:
                    batch = pending.popleft()
                    try:
                        in_flight.append((batch, pool.submit(prepare, batch, read)))
                    except BrokenProcessPool:
                        pending.appendleft(batch)
                        broken = True
                if not in_flight:
                    break
                batch, future = in_flight.popleft()
                started = time.perf_counter()
                error = future.exception()
                stats.waited += time.perf_counter() - started
                if error is None:
                    prepared = future.result()
                    stats.add(prepared)
                    yield prepared
                    continue
                if isinstance(error, BrokenProcessPool) and not broken:
                    broken = True
                    log.warning("a reading worker died; redoing its unfinished batches one file at a time")
                elif not isinstance(error, BrokenProcessPool):
                    log.error("preparing a batch of %d samples failed (%s: %s): redoing it one file at a time",
                              len(batch.positions), type(error).__name__, error)
                started = time.perf_counter()
                prepared = isolated(batch, read)
                stats.waited += time.perf_counter() - started
                stats.add(prepared)
                yield prepared
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        stats.restarts += broken


class WorkerStartError(RuntimeError):
    """No worker process can run at all: nothing could be read."""


class _OneWorker:
    """One spawned worker, one call in flight: a death is pinned on that call; a fresh worker
    takes the next one."""

    def __init__(self):
        self.pool = None

    def call(self, function, *args):
        """(result, None), or (None, the reason it failed: its error, or WORKER_DIED)."""
        self.pool = self.pool or self._started()
        try:
            return self.pool.submit(function, *args).result(), None
        except BrokenProcessPool:
            self.pool.shutdown()
            self.pool = None
            return None, WORKER_DIED
        except Exception as error:  # the call's own failure: reported as its reason
            return None, f"{type(error).__name__}: {error}"

    @staticmethod
    def _started() -> ProcessPoolExecutor:
        """A fresh one-worker pool that has run a no-op: one that cannot start at all would
        otherwise pin its death on every file in turn, one process start each."""
        pool = spawn_pool(1)
        try:
            pool.submit(int).result()
        except BrokenProcessPool:
            pool.shutdown()
            raise WorkerStartError("a reading worker process cannot start (it dies before reading any file): "
                                   "see its error above") from None
        return pool

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()


def isolated(batch: Batch, read=read_recording) -> Prepared:
    """The batch redone after its worker died (or its call failed): each recording checked
    alone, then each sample prepared alone, in one worker, one call in flight."""
    worker = _OneWorker()
    try:
        known = dict(batch.known)
        for key in batch.recordings():
            path = batch.files[key]
            problem, failure = worker.call(recording_problem, path, key[0], read)
            if failure is not None:  # logged with the batch's other problems
                problem = SourceProblem("convert", f"{path}: {_reason(failure, 'reading it')}")
            if problem is not None:
                known[key] = problem
        parts = []
        for index in range(len(batch.positions)):
            alone = batch.subset(index, {k: p for k, p in known.items() if k in batch.keys[index].values()})
            prepared, failure = worker.call(prepare, alone, read)
            parts.append(prepared or _unshown(alone, _reason(failure, "making its images")))
        merged = Prepared.merge(parts)
        merged.problems.update({key: problem for key, problem in known.items() if key not in batch.known})
        return merged
    finally:
        worker.close()


def _reason(failure: str, doing: str) -> str:
    """What a failed isolated call says: the worker's death while `doing`, or the call's error."""
    return f"{WORKER_DIED} while {doing}" if failure == WORKER_DIED else f"{doing} failed: {failure}"


def _unshown(batch: Batch, reason: str) -> Prepared:
    """A one-sample batch shown in no view, each view's reason `reason` (stage preprocess)."""
    problem = SourceProblem("preprocess", reason)
    return Prepared(batch.positions, {}, {0: {view: problem for view in batch.views}}, {})
