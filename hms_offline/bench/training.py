"""Part 4: training, so a user sees whether the loader or the model bounds a run.

- `loader`: hms_offline.training.data.window_dataset alone (windows/s; no model), iterated to
  the end over W labelled windows of converted synthetic train spectrograms;
- `per_window_baseline`: the loader as it was when this bench was written (below, kept as the
  named baseline): tf.numpy_function per window calling WindowTable.example;
- a training step of each architecture (samples/s): the model `train` builds
  (training.fold.training_model: Adam on the recipe's schedule, KLDivergence), train_on_batch
  on one batch of the loader's images, traced before the timing. Augmentation is not included.
A ratio above 1 of loader to step means the model bounds the run on this machine; on a GPU
the step is many times faster, and the loader (CPU) must keep up with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hms_offline.bench.measure import Part, best, interleaved
from hms_offline.constants import CLASSES, IMAGE_SHAPE

TARGET = ("at_least", 3.0)  # loader over per_window_baseline


def per_window_baseline(table, positions: np.ndarray, batch_size: int, drop_remainder: bool, augment=None):
    """THE BASELINE, not the package's loader: window_dataset as of issue 14 (each window
    through tf.numpy_function: np.load of a memory-mapped .npy, slice, clip, log, standardise,
    tile, in Python under the GIL)."""
    import tensorflow as tf

    def load(position):
        image, target = tf.numpy_function(table.example, [position], [tf.float32, tf.float32], stateful=False)
        return tf.ensure_shape(image, IMAGE_SHAPE), tf.ensure_shape(target, [len(CLASSES)])

    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(positions, dtype=np.int64))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if augment is not None:
        dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def window_table(work: Path, n_rows: int):
    """A WindowTable of a synthetic competition's train.csv, its spectrograms converted."""
    from hms_offline.convert import convert_tree
    from hms_offline.features.views import DEFAULT_VIEW
    from hms_offline.synthetic.write import write_competition
    from hms_offline.training.data import WindowTable
    from hms_offline.training.labels import read_train_labels, vote_fractions

    competition = write_competition(work / "competition", n_train=n_rows, n_test=1, seed=0)
    folder = work / "train_spectrograms"
    convert_tree(competition / "train_spectrograms", folder, workers=1, progress=False)
    labels = read_train_labels(competition / "train.csv")
    return WindowTable({"spectrogram": folder}, labels, vote_fractions(labels), DEFAULT_VIEW), labels


def drain(dataset) -> int:
    return sum(int(images.shape[0]) for images, _ in dataset)


def training_models(work: Path, archs: tuple[str, ...], batch_size: int) -> dict:
    from hms_offline.training.config import TrainConfig
    from hms_offline.training.fold import training_model

    return {arch: training_model(TrainConfig(data_dir=work, out=work / arch, arch=arch, batch_size=batch_size,
                                             steps_per_epoch=100).resolved()) for arch in archs}


def run(work: Path, windows: int, batch_size: int, archs: tuple[str, ...], step_batch: int, steps: int,
        rounds: int) -> list[Part]:
    from hms_offline.training.data import window_dataset

    folder = work / "training"
    table, labels = window_table(folder, n_rows=64)
    positions = np.resize(np.arange(len(labels)), windows)
    routes = {"loader": lambda scratch: drain(window_dataset(table, positions, batch_size, False)),
              "per_window_baseline": lambda scratch: drain(per_window_baseline(table, positions, batch_size, False))}
    images, targets = next(iter(window_dataset(table, positions[:step_batch], step_batch, False)))
    images, targets = np.asarray(images), np.asarray(targets)
    models = training_models(folder, archs, step_batch)
    for model in models.values():
        model.train_on_batch(images, targets)  # traced here, not in the timing

    def train_steps(model):
        def route(scratch: Path):
            for _ in range(steps):
                model.train_on_batch(images, targets)
        return route

    routes.update({f"step_{arch}": train_steps(model) for arch, model in models.items()})
    interleaved({"loader": routes["loader"], "per_window_baseline": routes["per_window_baseline"]}, 1)  # warm-up
    seconds = interleaved(routes, rounds)
    part = Part("training", f"4. training, {windows} windows in batches of {batch_size}; steps of batch {step_batch}",
                data={"windows": windows, "batch_size": batch_size, "step_batch": step_batch, "steps": steps,
                      "archs": list(archs), "rounds": rounds}, rounds=seconds)
    part.figure("loader_windows_per_s", windows / best(seconds["loader"]), "windows/s")
    part.figure("per_window_baseline_windows_per_s", windows / best(seconds["per_window_baseline"]), "windows/s")
    part.ratio("loader_over_per_window_baseline", "loader_windows_per_s", "per_window_baseline_windows_per_s", TARGET)
    for arch in archs:
        part.figure(f"step_{arch}_samples_per_s", steps * step_batch / best(seconds[f"step_{arch}"]), "samples/s")
        part.ratio(f"loader_over_step_{arch}", "loader_windows_per_s", f"step_{arch}_samples_per_s")
    return [part]
