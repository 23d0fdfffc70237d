"""Training loader: labelled windows -> `tf.data` batches through THE preprocessing.

Each example is `preprocess.model_input(<spectrogram_id>.npy, spectrogram_label_offset_seconds)`,
the same function the kernel applies to a test spectrogram, so a model trains on exactly
what it will be shown. The converted spectrograms are memory-mapped: only the window is read.
"""

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.constants import CLASSES, IMAGE_SHAPE
from hms_offline.features.spectrogram import model_input

log = logging.getLogger(__name__)

SPECTROGRAM_FOLDER = "train_spectrograms"


def default_cache_dir(data_dir: Path) -> Path:
    """~/.cache/hms_offline/<name>-<hash of the path>: one cache per competition folder,
    never inside it (it is read-only on Kaggle)."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hms_offline"
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:10]
    return root / f"{Path(data_dir).name}-{digest}"


def spectrogram_path(folder: Path, spectrogram_id) -> Path:
    return Path(folder) / f"{spectrogram_id}.npy"


def check_files(folder: Path, labels: pd.DataFrame, suffix: str) -> None:
    """Every spectrogram_id of `labels` has `<id><suffix>` in `folder`, or a FileNotFoundError
    naming the first missing files."""
    ids = labels["spectrogram_id"].unique()
    missing = [path for path in (Path(folder) / f"{sid}{suffix}" for sid in ids) if not path.is_file()]
    if missing:
        shown = ", ".join(str(path) for path in missing[:5])
        raise FileNotFoundError(
            f"{len(missing)} of {len(ids)} spectrogram files missing: {shown}{', ...' if len(missing) > 5 else ''}"
        )


def prepare_spectrograms(
    data_dir: Path,
    labels: pd.DataFrame,
    work_dir: Path | None = None,
    spectrogram_dir: Path | None = None,
) -> Path:
    """The folder of `<spectrogram_id>.npy` files for `labels`.

    `spectrogram_dir` is used as it is; otherwise `<data_dir>/train_spectrograms/*.parquet`
    are converted (files already up to date are skipped) into `work_dir` or the default cache.
    """
    if spectrogram_dir is not None:
        check_files(spectrogram_dir, labels, ".npy")
        return Path(spectrogram_dir)
    from hms_offline.convert import convert_tree

    source = Path(data_dir) / SPECTROGRAM_FOLDER
    if not source.is_dir():
        raise FileNotFoundError(f"{source} not found (or pass --spectrogram-dir with converted .npy files)")
    check_files(source, labels, ".parquet")
    target = Path(work_dir or default_cache_dir(data_dir)) / SPECTROGRAM_FOLDER
    log.info("converting %s -> %s (files up to date are skipped)", source, target)
    convert_tree(source, target, only={str(sid) for sid in labels["spectrogram_id"].unique()})
    return target


def load_image(folder: Path, spectrogram_id, offset_seconds: float) -> np.ndarray:
    """One labelled window as the model sees it: `[400, 300, 3]` float32."""
    spectrogram = np.load(spectrogram_path(folder, spectrogram_id), mmap_mode="r")
    return np.asarray(model_input(spectrogram, float(offset_seconds)), dtype=np.float32)


class WindowTable:
    """The rows a dataset may draw from: spectrogram id, offset and target per position."""

    def __init__(self, folder: Path, labels: pd.DataFrame, targets: np.ndarray):
        self.folder = Path(folder)
        self.spectrogram_ids = labels["spectrogram_id"].to_numpy()
        self.offsets = labels["spectrogram_label_offset_seconds"].to_numpy(dtype=np.float64)
        self.targets = np.asarray(targets, dtype=np.float32)

    def example(self, position) -> tuple[np.ndarray, np.ndarray]:
        i = int(position)
        return load_image(self.folder, self.spectrogram_ids[i], self.offsets[i]), self.targets[i]


def window_dataset(table: WindowTable, positions: np.ndarray, batch_size: int, drop_remainder: bool, augment=None):
    """`tf.data.Dataset` of (images, targets) batches for `positions`, in that order.

    `augment(images, targets) -> (images, targets)` runs on whole batches (training only).
    """
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
