"""Training loader: labelled windows -> `tf.data` batches through THE transform of the run's
input view.

Each example is the view's image of the label's recordings (`<spectrogram_id>.npy` at
`spectrogram_label_offset_seconds`, `<eeg_id>.npy` at `eeg_label_offset_seconds`, as the view
needs), computed by the same function the kernel applies to a test sample
(features/views.py), so a model trains on exactly what it will be shown: a batch is one
`InputView.images` call, of which the kernel's one image is a batch of one. The converted
recordings are memory-mapped: only the window is read.
"""

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.constants import CLASSES, IMAGE_SHAPE
from hms_offline.features.sources import SOURCES
from hms_offline.features.views import get_view

log = logging.getLogger(__name__)


def default_cache_dir(data_dir: Path) -> Path:
    """~/.cache/hms_offline/<name>-<hash of the path>: one cache per competition folder,
    never inside it (it is read-only on Kaggle)."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hms_offline"
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:10]
    return root / f"{Path(data_dir).name}-{digest}"


def check_files(folder: Path, labels: pd.DataFrame, source: str, suffix: str) -> None:
    """Every recording of `source` that `labels` name has `<id><suffix>` in `folder`, or a
    FileNotFoundError naming the first missing files."""
    ids = labels[SOURCES[source].id_column].unique()
    missing = [path for path in (Path(folder) / f"{i}{suffix}" for i in ids) if not path.is_file()]
    if missing:
        shown = ", ".join(str(path) for path in missing[:5])
        raise FileNotFoundError(
            f"{len(missing)} of {len(ids)} {source} files missing: {shown}{', ...' if len(missing) > 5 else ''}"
        )


def check_offsets(labels: pd.DataFrame, sources, path: Path) -> None:
    """The offset column of every source is in train.csv, numeric and >= 0."""
    for name in sources:
        column = SOURCES[name].offset_column
        if column not in labels.columns:
            raise ValueError(f"{path}: missing column {column!r}, which the {name} input needs")
        bad = pd.to_numeric(labels[column], errors="coerce")
        bad = bad.isna() | (bad < 0)
        if bad.any():
            examples = ", ".join(str(value) for value in labels.loc[bad, "label_id"].head(5))
            raise ValueError(f"{path}: {int(bad.sum())} row(s) with {column!r} missing or negative (label_id {examples})")


def prepare_recordings(
    data_dir: Path,
    labels: pd.DataFrame,
    sources,
    work_dir: Path | None = None,
    spectrogram_dir: Path | None = None,
) -> dict[str, Path]:
    """{source: the folder of its `<id>.npy` files} for `labels`, for each source the view reads.

    `spectrogram_dir` is used as it is; otherwise `<data_dir>/<train folder>/*.parquet` are
    converted (files already up to date are skipped) into `work_dir` or the default cache.
    """
    folders = {}
    for name in sources:
        source = SOURCES[name]
        if name == "spectrogram" and spectrogram_dir is not None:
            check_files(spectrogram_dir, labels, name, ".npy")
            folders[name] = Path(spectrogram_dir)
            continue
        from hms_offline.convert import convert_tree

        origin = Path(data_dir) / source.train_folder
        if not origin.is_dir():
            hint = " (or pass --spectrogram-dir with converted .npy files)" if name == "spectrogram" else ""
            raise FileNotFoundError(f"{origin} not found{hint}")
        check_files(origin, labels, name, ".parquet")
        target = Path(work_dir or default_cache_dir(data_dir)) / source.train_folder
        log.info("converting %s -> %s (files up to date are skipped)", origin, target)
        convert_tree(origin, target, only={str(i) for i in labels[source.id_column].unique()})
        folders[name] = target
    return folders


class WindowTable:
    """The rows a dataset may draw from: each row's recordings and offsets, and its target."""

    def __init__(self, folders: dict[str, Path], labels: pd.DataFrame, targets: np.ndarray, view: str):
        self.view = get_view(view)
        self.folders = {name: Path(folders[name]) for name in self.view.sources}
        self.ids = {name: labels[SOURCES[name].id_column].to_numpy() for name in self.view.sources}
        self.offsets = {name: labels[SOURCES[name].offset_column].to_numpy(dtype=np.float64) for name in self.view.sources}
        self.targets = np.asarray(targets, dtype=np.float32)

    def sample(self, position: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """One row's recordings (memory-mapped: only its windows are read) and offsets."""
        arrays = {name: np.load(self.folders[name] / f"{self.ids[name][position]}.npy", mmap_mode="r")
                  for name in self.view.sources}
        offsets = {name: float(self.offsets[name][position]) for name in self.view.sources}
        return arrays, offsets

    def image(self, position: int) -> np.ndarray:
        """One labelled window as the model sees it: `[400, 300, 3]` float32."""
        return self.view.image(*self.sample(position))

    def example(self, position) -> tuple[np.ndarray, np.ndarray]:
        """One labelled window and its target."""
        i = int(position)
        return self.image(i), self.targets[i]

    def batch(self, positions) -> tuple[np.ndarray, np.ndarray]:
        """The windows at `positions` as one batch: `[B, 400, 300, 3]` float32 images, each
        `image(position)`, and their `[B, 6]` targets."""
        positions = np.asarray(positions, dtype=np.int64)
        images = aligned_empty((len(positions), *IMAGE_SHAPE))
        return self.view.images([self.sample(int(i)) for i in positions], out=images), self.targets[positions]


# TensorFlow takes a numpy array returned by `tf.numpy_function` as its tensor's memory only
# when the data starts on a 64-byte boundary (EIGEN_MAX_ALIGN_BYTES); otherwise it copies it.
# numpy's large arrays start 16 bytes into their pages: copying a batch of images cost about
# as much again as computing it.
TENSOR_ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """An uninitialised array whose data starts on a TENSOR_ALIGNMENT boundary."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + TENSOR_ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % TENSOR_ALIGNMENT
    return raw[start : start + size].view(dtype).reshape(shape)


def window_dataset(table: WindowTable, positions: np.ndarray, batch_size: int, drop_remainder: bool, augment=None):
    """`tf.data.Dataset` of (images, targets) batches for `positions`, in that order.

    Each batch is one `tf.numpy_function` call of `table.batch`: the per-call overhead is paid
    once per batch, and the calls for several batches run in parallel, each holding the GIL
    only between numpy's (and scipy's) loops, which release it. `augment(images, targets) ->
    (images, targets)` runs on whole batches (training only).
    """
    import tensorflow as tf

    size = batch_size if drop_remainder else None

    def load(batch_positions):
        images, targets = tf.numpy_function(table.batch, [batch_positions], [tf.float32, tf.float32], stateful=False)
        return tf.ensure_shape(images, [size, *IMAGE_SHAPE]), tf.ensure_shape(targets, [size, len(CLASSES)])

    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(positions, dtype=np.int64))
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment is not None:
        dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
