"""What one inference run did, for the log and for `inference_report.json` beside the
submission: rows, the fallback vector and where it came from, every row that got it and
why, the models used and dropped, engine, versions and timings.

`problems()` lists every departure from a clean run; `--strict` turns them into an error.
A version warning (this TensorFlow older than a model's training one) is not one of them.
"""

import contextlib
import dataclasses
import json
import platform
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hms_offline.atomic import write_text_atomically

REPORT_NAME = "inference_report.json"
LISTED_IN_LOG = 10


@dataclass(frozen=True)
class FallbackRow:
    """A submission row (or test row / spectrogram) predicted by the fallback, and why."""

    eeg_id: object
    spectrogram_id: int | None
    stage: str  # test.csv, sample_submission.csv, convert, signal, preprocess
    reason: str


@dataclass(frozen=True)
class DroppedModel:
    name: str
    file: str
    reason: str


@dataclass
class InferenceReport:
    submission: str = ""  # the path written (or, under --strict, not written)
    rows: int = 0
    spectrograms: int = 0
    eegs: int = 0  # test EEG files read (0 when no input view of the ensemble needs them)
    views: list[str] = field(default_factory=list)  # the input views of the ensemble's models
    engine: str = "auto"  # the one asked for; each model's own is in `models`
    fallback: list[float] = field(default_factory=list)
    fallback_source: str = ""
    fallback_rows: list[FallbackRow] = field(default_factory=list)  # rows of submission.csv
    set_aside_test_rows: list[FallbackRow] = field(default_factory=list)  # rows of test.csv not used
    # Test samples predicted without the models of some view (its recording unusable), by the rest.
    partial_rows: list[FallbackRow] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)  # name, engine, file, weight (renormalised)
    models_dropped: list[DroppedModel] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # choices a reader should know of
    # This TensorFlow older than the one that trained and exported models of the ensemble: said,
    # never a fault (TF 2.21 exports on the image's 2.20 is what --verify checks).
    version_warnings: list[str] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # wall time, stage after stage
    # Inside "stream and predict": the reading workers' own seconds (overlapping the models'), and
    # how long the models waited for the next batch (the reading not hidden behind them).
    stream_seconds: dict[str, float] = field(default_factory=dict)
    model_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def fallbacks(self) -> list:
        """The eeg_ids of submission rows predicted by the fallback."""
        return [row.eeg_id for row in self.fallback_rows]

    def engines_used(self) -> str:
        """e.g. 'tflite: 9, keras: 1'."""
        counts = Counter(model.get("engine", "?") for model in self.models)
        return ", ".join(f"{engine}: {count}" for engine, count in counts.most_common()) or "no model"

    def problems(self) -> list[str]:
        """Every departure from a clean run, one line each."""
        return (
            [f"test.csv row set aside: {row.reason}" for row in self.set_aside_test_rows]
            + [f"eeg_id {row.eeg_id} (spectrogram {row.spectrogram_id}) got the fallback at stage "
               f"{row.stage}: {row.reason}" for row in self.fallback_rows]
            + [f"eeg_id {row.eeg_id} (spectrogram {row.spectrogram_id}) predicted without some models at stage "
               f"{row.stage}: {row.reason}" for row in self.partial_rows]
            + [f"model {model.name} ({model.file}) dropped: {model.reason}" for model in self.models_dropped]
            + self.warnings
        )

    def lines(self) -> list[str]:
        out = [
            f"submission rows: {self.rows}",
            f"test spectrograms: {self.spectrograms}" + (f", test EEGs: {self.eegs}" if self.eegs else ""),
            f"input views: {', '.join(self.views)}",
            f"engine: {self.engine} ({self.engines_used()})",
            f"models: {len(self.models)} ({', '.join(model['name'] for model in self.models)})",
            f"models dropped: {len(self.models_dropped)}"
            + "".join(f"\n  {model.name}: {model.reason}" for model in self.models_dropped),
            f"fallback: {self.fallback_source} {[round(p, 4) for p in self.fallback]}",
            f"fallback rows: {len(self.fallback_rows)} of {self.rows}"
            + "".join(f"\n  eeg_id {row.eeg_id}: {row.stage}: {row.reason}"
                      for row in self.fallback_rows[:LISTED_IN_LOG])
            + (f"\n  ... and {len(self.fallback_rows) - LISTED_IN_LOG} more" if len(self.fallback_rows) > LISTED_IN_LOG else ""),
            f"partial rows (some views unusable): {len(self.partial_rows)}"
            + "".join(f"\n  eeg_id {row.eeg_id}: {row.stage}: {row.reason}" for row in self.partial_rows[:LISTED_IN_LOG]),
            f"test.csv rows set aside: {len(self.set_aside_test_rows)}",
        ]
        out += [f"warning: {warning}" for warning in self.warnings]
        out += [f"version warning: {warning}" for warning in self.version_warnings]
        out += [f"stage {name}: {seconds:.1f} s" for name, seconds in self.stage_seconds.items()]
        if self.stream_seconds:
            stream = self.stream_seconds
            out.append(f"  of which: {stream['workers']} reading worker(s) read {stream['read (workers)']:.1f} s and "
                       f"preprocessed {stream['preprocess (workers)']:.1f} s, overlapped with the models; the models "
                       f"waited {stream['waited for input']:.1f} s for input"
                       + (f"; {stream['worker restarts']} worker death(s)" if stream["worker restarts"] else ""))
        out += [f"model {name}: {seconds:.1f} s" for name, seconds in self.model_seconds.items()]
        return out

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, default=str) + "\n"

    def write(self, path: Path) -> Path:
        return write_text_atomically(Path(path), self.to_json())


@contextlib.contextmanager
def timed(into: dict[str, float], name: str):
    """Add the wall time of the block to `into[name]` (a stage's, a model's)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[name] = into.get(name, 0.0) + time.perf_counter() - start


def release(version: str) -> tuple[int, ...]:
    """The leading release numbers of a version: '2.21.0rc1' -> (2, 21, 0)."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def tensorflow_warnings(entries: list, runtime: str | None) -> list[str]:
    """One line per TensorFlow newer than `runtime` that trained (and exported) models among
    `entries` (their manifest `tensorflow`), naming them; [] when this one is as new or
    either version is unknown."""
    if not runtime or not release(runtime):
        return []
    newer: dict[str, list[str]] = {}
    for entry in entries:
        if entry.tensorflow and release(entry.tensorflow) > release(runtime):
            newer.setdefault(entry.tensorflow, []).append(entry.name)
    return [f"TensorFlow {runtime} here is older than the {version} that trained {len(names)} model(s) "
            f"({', '.join(names)}): their exports usually run on it (2.21 on 2.20 is checked by --verify); "
            "if one fails to load or predict, this may be why"
            for version, names in sorted(newer.items(), key=lambda item: release(item[0]))]


def runtime_versions() -> dict[str, str | None]:
    """Python, the platform and the packages the kernel ran on (from metadata: no imports)."""
    from importlib import metadata

    import hms_offline
    from hms_offline.models.manifest import installed_versions

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hms_offline": hms_offline.__version__,
        **{name: version(name) for name in ("numpy", "pandas", "pyarrow")},
        **installed_versions(),
    }
