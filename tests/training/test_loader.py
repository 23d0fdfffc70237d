"""The training loader (training/data.py) on synthetic recordings: `window_dataset` batches are
the views' images of the positions asked for, in order, with their targets, and the Kaggle
view's images are today's (the per-window loader of 6f594ad) within 1e-5.

Imports TensorFlow: slow-marked. ~20 s on 2 cores, most of it the TensorFlow import and the
EEG view's images.
"""

import numpy as np
import pytest

from hms_offline.constants import IMAGE_SHAPE, LOG_CLIP_MAX_EXPONENT, LOG_CLIP_MIN_EXPONENT, STANDARDIZE_EPSILON
from hms_offline.features import eeg, spectrogram
from hms_offline.features.views import INPUT_CHOICES

pytestmark = pytest.mark.slow

POSITIONS = np.array([3, 0, 3, 7, 1])  # a repeat, out of order: the sampler's positions are both


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    from hms_offline.synthetic.write import write_competition
    from hms_offline.training.data import prepare_recordings
    from hms_offline.training.labels import read_train_labels, vote_fractions

    root = tmp_path_factory.mktemp("loader")
    competition = write_competition(root / "competition", n_train=16, n_test=1, seed=11)
    labels = read_train_labels(competition / "train.csv")
    folders = prepare_recordings(competition, labels, ["spectrogram", "eeg"], work_dir=root / "work")
    return labels, folders, vote_fractions(labels)


def batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(images.numpy(), targets.numpy()) for images, targets in dataset]


@pytest.mark.parametrize("choice", list(INPUT_CHOICES))
def test_batches_are_the_positions_images_and_targets_in_order(recordings, choice):
    from hms_offline.training.data import WindowTable, window_dataset

    labels, folders, targets = recordings
    table = WindowTable(folders, labels, targets, INPUT_CHOICES[choice])
    kept = batches(window_dataset(table, POSITIONS, batch_size=2, drop_remainder=False))
    assert [len(images) for images, _ in kept] == [2, 2, 1]
    images = np.concatenate([images for images, _ in kept])
    np.testing.assert_array_equal(images, np.stack([table.image(i) for i in POSITIONS]))
    np.testing.assert_array_equal(np.concatenate([t for _, t in kept]), targets[POSITIONS].astype(np.float32))
    assert table.batch(POSITIONS)[0].ctypes.data % 64 == 0  # what TensorFlow takes without copying it
    if choice == "eeg":  # the module's own function on the memory-mapped recording
        row = labels.iloc[POSITIONS[0]]
        recording = np.load(folders["eeg"] / f"{row.eeg_id}.npy")
        np.testing.assert_array_equal(images[0], eeg.model_input(recording, row.eeg_label_offset_seconds))

    dropped = window_dataset(table, POSITIONS, batch_size=2, drop_remainder=True,
                             augment=lambda images, targets: (-images, 2 * targets))
    assert dropped.element_spec[0].shape.as_list() == [2, *IMAGE_SHAPE]
    assert dropped.element_spec[1].shape.as_list() == [2, 6]
    augmented = batches(dropped)
    assert len(augmented) == 2
    np.testing.assert_array_equal(np.concatenate([i for i, _ in augmented]), -images[:4])
    np.testing.assert_array_equal(np.concatenate([t for _, t in augmented]), 2 * targets[POSITIONS[:4]].astype(np.float32))


def todays_kaggle_image(recording: np.ndarray, offset_seconds: float) -> np.ndarray:
    """The Kaggle view as the per-window loader of 6f594ad computed it: float32 statistics."""
    window = spectrogram.cut_window(recording, offset_seconds)
    power = np.nan_to_num(window, nan=0.0, posinf=np.inf, neginf=-np.inf)
    logged = np.log(np.clip(power, np.exp(LOG_CLIP_MIN_EXPONENT), np.exp(LOG_CLIP_MAX_EXPONENT))).astype(np.float32)
    image = ((logged - logged.mean()) / (logged.std() + STANDARDIZE_EPSILON)).astype(np.float32)
    return np.repeat(image[..., None], 3, axis=-1)


def test_the_kaggle_views_images_are_todays_within_1e_5(recordings):
    """What a training run is shown is unchanged: every labelled window of the synthetic set
    through `window_dataset`, against today's transform of the same window."""
    from hms_offline.training.data import WindowTable, window_dataset

    labels, folders, targets = recordings
    table = WindowTable(folders, labels, targets, INPUT_CHOICES["kaggle"])
    positions = np.arange(len(labels))
    images = np.concatenate([images for images, _ in batches(window_dataset(table, positions, 8, False))])
    today = np.stack([todays_kaggle_image(np.load(folders["spectrogram"] / f"{row.spectrogram_id}.npy"),
                                          row.spectrogram_label_offset_seconds) for row in labels.itertuples()])
    assert images.shape == today.shape == (len(labels), *IMAGE_SHAPE)
    np.testing.assert_allclose(images, today, rtol=0, atol=1e-5)
    assert np.abs(images - today).max() > 0  # float64 statistics: not bit-identical, and this says so
