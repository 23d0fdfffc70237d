"""Part 2: the kernel end to end against what it cannot avoid, per engine and ensemble size.

For an ensemble of K models (K = 1: MobileNetV3 Large; K = 10: 5 folds x 2 architectures)
and each engine:
- `kernel`: hms_offline.serving.inference.predict_competition on test sets of N1 and N2
  spectrograms; its marginal cost per sample is the difference over N2 - N1 of each size's
  fastest run less the seconds its report gives to loading the models: start-up (loading the
  models, starting the conversion worker) cancels out;
- `forward`: the engine's `predict_on_batch` alone for every model, on already-preprocessed
  images, in batches of the kernel's size;
- `floor`: the fastest pyarrow read of each test file (conversion.floor_read);
- `naive`: an ensemble that, for every model, reads and preprocesses the whole test set
  again (read_spectrogram + features.spectrogram.model_input) before predicting.
The target compares `kernel` with `forward + floor`: the kernel should cost its models and
a read of its files, little else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.bench.conversion import floor_read
from hms_offline.bench.measure import Part, best, interleaved
from hms_offline.constants import ID_COLUMN, SUBMISSION_COLUMNS, VOTE_COLUMNS
from hms_offline.convert import find_parquet, read_spectrogram
from hms_offline.features.spectrogram import model_input
from hms_offline.serving.inference import DEFAULT_BATCH_SIZE, predict_competition

LOAD_STAGE = "load models"  # the report's stage of opening every model: start-up, taken out
EXTRA_ROUNDS = 3  # more kernel rounds, at most, while noise hides the marginal cost (it comes out <= 0)
ENSEMBLES = {1: {"mobilenetv3_large": 1}, 10: {"mobilenetv3_large": 5, "efficientnetv2_b2": 5}}
TARGETS = {1: ("at_most", 1.25), 10: ("at_most", 1.10)}


def base_competition(work: Path, distinct: int) -> Path:
    """A synthetic competition whose `distinct` test spectrograms the test sets reuse."""
    from hms_offline.synthetic.write import write_competition

    return write_competition(work / "base", n_train=1, n_test=distinct, seed=0)


def replicated_test_set(base: Path, out: Path, n: int) -> Path:
    """A competition folder of `n` test samples, each its own spectrogram_id and eeg_id, whose
    files are hard links to the base's test spectrograms in turn (copies where links fail)."""
    sources = sorted((base / "test_spectrograms").glob("*.parquet"))
    folder = out / "test_spectrograms"
    folder.mkdir(parents=True)
    spectrogram_ids = np.arange(n, dtype=np.int64) + 10_000_000
    for index, spectrogram_id in enumerate(spectrogram_ids):
        target = folder / f"{spectrogram_id}.parquet"
        try:
            os.link(sources[index % len(sources)], target)
        except OSError:
            shutil.copyfile(sources[index % len(sources)], target)
    eeg_ids = spectrogram_ids + 500_000_000
    pd.DataFrame({"spectrogram_id": spectrogram_ids, ID_COLUMN: eeg_ids, "patient_id": np.arange(n)}).to_csv(
        out / "test.csv", index=False)
    submission = pd.DataFrame({ID_COLUMN: eeg_ids, **{column: 1 / len(VOTE_COLUMNS) for column in VOTE_COLUMNS}})
    submission[list(SUBMISSION_COLUMNS)].to_csv(out / "sample_submission.csv", index=False)
    return out


def test_files(data_dir: Path) -> list[Path]:
    """The test spectrograms test.csv names, in its order."""
    test = pd.read_csv(data_dir / "test.csv")
    return [find_parquet(data_dir / "test_spectrograms", str(i)) for i in test["spectrogram_id"].drop_duplicates()]


def load_engines(bundle: Path, engine: str) -> list:
    """Each model of the bundle opened by `engine`, as the kernel opens it."""
    from hms_offline.models.engines import EngineLoader
    from hms_offline.models.manifest import load_manifest

    manifest, root = load_manifest(bundle)
    loader = EngineLoader(engine, gpu=False)
    return [loader(entry, root) for entry in manifest.models]


def preprocessed(files: list[Path]) -> np.ndarray:
    return np.stack([model_input(read_spectrogram(path)) for path in files])


def forward(engines: list, images: np.ndarray, batch_size: int) -> None:
    for engine in engines:
        for start in range(0, len(images), batch_size):
            engine.predict_on_batch(images[start : start + batch_size])


def naive_ensemble(engines: list, files: list[Path], batch_size: int) -> None:
    """Every model reads and preprocesses the test set again."""
    for engine in engines:
        for start in range(0, len(files), batch_size):
            engine.predict_on_batch(preprocessed(files[start : start + batch_size]))


def kernel_route(data_dir: Path, bundle: Path, engine: str, batch_size: int, loading: list[float]):
    """predict_competition once; the seconds its report gives to loading the models go to `loading`."""
    def route(scratch: Path):
        report = predict_competition(data_dir, bundle, scratch / "submission.csv", batch_size=batch_size,
                                     engine=engine)
        loading.append(report.stage_seconds.get(LOAD_STAGE, 0.0))
    return route


def marginal_seconds(sizes: tuple[int, int], runs: dict[int, list[float]], loading: dict[int, list[float]]) -> float:
    """Seconds per sample between the two sizes, each size's fastest run without its model loading."""
    (n1, n2) = sizes
    fastest = {n: min(total - load for total, load in zip(runs[n], loading[n])) for n in sizes}
    return (fastest[n2] - fastest[n1]) / (n2 - n1)


def measure(part: Part, label: str, sets: dict[int, Path], bundle: Path, engine: str, rounds: int,
            target) -> None:
    """One engine on one ensemble: the figures and ratios under `label` (e.g. tflite_k1)."""
    (n1, small), (n2, large) = sorted(sets.items())
    files = test_files(large)
    images = preprocessed(files)
    engines = load_engines(bundle, engine)
    loading = {n1: [], n2: []}
    kernels = {n: kernel_route(folder, bundle, engine, DEFAULT_BATCH_SIZE, loading[n]) for n, folder in sets.items()}
    routes = {f"kernel_n{n1}": kernels[n1], f"kernel_n{n2}": kernels[n2],
              "forward": lambda scratch: forward(engines, images, DEFAULT_BATCH_SIZE),
              "floor": lambda scratch: [floor_read(path) for path in files],
              "naive": lambda scratch: naive_ensemble(engines, files, DEFAULT_BATCH_SIZE)}
    forward(engines, images[:DEFAULT_BATCH_SIZE], DEFAULT_BATCH_SIZE)  # warm-up: tracing, allocation
    seconds = interleaved(routes, rounds)
    runs = {n: seconds[f"kernel_n{n}"] for n in (n1, n2)}
    for _ in range(EXTRA_ROUNDS):
        if marginal_seconds((n1, n2), runs, loading) > 0:
            break
        for n, measured in interleaved({n1: kernels[n1], n2: kernels[n2]}, 1).items():
            runs[n] += measured
    marginal = marginal_seconds((n1, n2), runs, loading)
    if marginal <= 0:
        raise RuntimeError(f"{label}: the kernel on {n2} samples was not slower than on {n1} in "
                           f"{len(runs[n1])} rounds: noise hides its cost per sample on this machine now; "
                           "run again when it is quieter")
    part.rounds.update({f"{label}_{name}": measured for name, measured in seconds.items()})
    part.rounds.update({f"{label}_kernel_n{n}": measured for n, measured in runs.items()})
    part.rounds.update({f"{label}_kernel_n{n}_loading": measured for n, measured in loading.items()})
    part.figure(f"{label}_kernel_n{n1}_s", best(runs[n1]), "s")
    part.figure(f"{label}_kernel_n{n2}_s", best(runs[n2]), "s")
    part.figure(f"{label}_kernel_ms_per_sample", marginal * 1e3, "ms/sample")
    part.figure(f"{label}_forward_ms_per_sample", best(seconds["forward"]) / n2 * 1e3, "ms/sample")
    part.figure(f"{label}_floor_ms_per_file", best(seconds["floor"]) / n2 * 1e3, "ms/file")
    part.figure(f"{label}_forward_plus_floor_ms_per_sample",
                part.figures[f"{label}_forward_ms_per_sample"] + part.figures[f"{label}_floor_ms_per_file"],
                "ms/sample")
    part.figure(f"{label}_naive_ms_per_sample", best(seconds["naive"]) / n2 * 1e3, "ms/sample")
    part.ratio(f"{label}_kernel_over_forward_plus_floor", f"{label}_kernel_ms_per_sample",
               f"{label}_forward_plus_floor_ms_per_sample", target)
    part.ratio(f"{label}_naive_over_kernel", f"{label}_naive_ms_per_sample", f"{label}_kernel_ms_per_sample")
    del engines


def run(work: Path, sizes: tuple[int, int], ensembles: tuple[int, ...], engines: tuple[str, ...], rounds: int,
        cache: Path, data_dir: Path | None) -> list[Part]:
    from hms_offline.bench.models import write_bench_bundle

    base = base_competition(work / "kernel", distinct=min(16, min(sizes)))
    sets = {n: replicated_test_set(base, work / "kernel" / f"test_n{n}", n) for n in sizes}
    part = Part("kernel", f"2. kernel, N = {sizes[0]} and {sizes[1]} test spectrograms, batch {DEFAULT_BATCH_SIZE}",
                data={"sizes": list(sizes), "ensembles": {str(k): ENSEMBLES[k] for k in ensembles},
                      "engines": list(engines), "rounds": rounds})
    for k in ensembles:
        bundle = write_bench_bundle(work / "kernel" / f"bundle_k{k}", ENSEMBLES[k], engines, cache)
        for engine in engines:
            measure(part, f"{engine}_k{k}", sets, bundle, engine, rounds, TARGETS[k])
    parts = [part]
    if data_dir is not None:
        parts.append(data_dir_part(work, Path(data_dir), engines, rounds, cache))
    return parts


def data_dir_part(work: Path, data_dir: Path, engines: tuple[str, ...], rounds: int, cache: Path) -> Part:
    """The kernel on the user's test set (K = 1) beside its forward pass and floor read; with one
    test-set size only, its per-sample figure includes the start-up."""
    from hms_offline.bench.models import write_bench_bundle

    bundle = write_bench_bundle(work / "kernel" / "bundle_data_dir", ENSEMBLES[1], engines, cache)
    files = test_files(data_dir)
    images = preprocessed(files)
    part = Part("kernel_data_dir", f"2. kernel, the {len(files)} test spectrograms of {data_dir}, K = 1, "
                                   "start-up included", data={"samples": len(files), "rounds": rounds})
    for engine in engines:
        opened = load_engines(bundle, engine)
        forward(opened, images[:DEFAULT_BATCH_SIZE], DEFAULT_BATCH_SIZE)
        seconds = interleaved({"kernel": kernel_route(data_dir, bundle, engine, DEFAULT_BATCH_SIZE, []),
                               "forward": lambda scratch: forward(opened, images, DEFAULT_BATCH_SIZE),
                               "floor": lambda scratch: [floor_read(path) for path in files]}, rounds)
        part.rounds.update({f"{engine}_{name}": measured for name, measured in seconds.items()})
        part.figure(f"{engine}_kernel_ms_per_sample", best(seconds["kernel"]) / len(files) * 1e3, "ms/sample")
        part.figure(f"{engine}_forward_plus_floor_ms_per_sample",
                    (best(seconds["forward"]) + best(seconds["floor"])) / len(files) * 1e3, "ms/sample")
        part.ratio(f"{engine}_kernel_over_forward_plus_floor", f"{engine}_kernel_ms_per_sample",
                   f"{engine}_forward_plus_floor_ms_per_sample")
    return part
