"""hms_offline.features.views: the input views by name, as weights manifests record them."""

import json

import numpy as np
import pytest

from hms_offline.constants import EEG_CHANNELS, IMAGE_SHAPE
from hms_offline.features import eeg, spectrogram, stacked
from hms_offline.features.sources import SOURCES
from hms_offline.features.views import (
    DEFAULT_VIEW,
    INPUT_CHOICES,
    MIRROR_ROWS,
    VIEWS,
    InputView,
    get_view,
    mirror_left_right,
    view_record,
)
from hms_offline.models.manifest import ModelEntry

# Each left electrode and its right twin; the midline (Fz, Cz, Pz) and EKG stay.
LEFT_RIGHT = [("Fp1", "Fp2"), ("F3", "F4"), ("C3", "C4"), ("P3", "P4"), ("F7", "F8"), ("T3", "T4"), ("T5", "T6"),
              ("O1", "O2")]


def recordings(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "spectrogram": rng.uniform(0.01, 300, size=(400, 350)).astype(np.float32),
        "eeg": rng.normal(0, 30, size=(12_000, 20)).astype(np.float32),
    }


def test_the_three_views_their_sources_and_the_training_choices():
    assert list(VIEWS) == ["starter_log_standardize", "eeg_bipolar_stft", "kaggle_eeg_stacked"]
    assert {name: view.sources for name, view in VIEWS.items()} == {
        "starter_log_standardize": ("spectrogram",), "eeg_bipolar_stft": ("eeg",),
        "kaggle_eeg_stacked": ("spectrogram", "eeg")}
    assert all(set(view.sources) <= set(SOURCES) for view in VIEWS.values())
    assert INPUT_CHOICES == {"kaggle": "starter_log_standardize", "eeg": "eeg_bipolar_stft", "both": "kaggle_eeg_stacked"}
    assert DEFAULT_VIEW == spectrogram.VIEW_NAME == "starter_log_standardize"
    assert all(isinstance(get_view(name), InputView) and get_view(name).name == name for name in VIEWS)
    assert spectrogram.VIEW_PARAMS == {"window_columns": 300, "offset_divisor_seconds": 2, "clip_min_exponent": -4.0,
                                       "clip_max_exponent": 8.0, "epsilon": 1e-06, "channels": 3}
    assert VIEWS["kaggle_eeg_stacked"].params == {
        "channel_order": ["starter_log_standardize", "eeg_bipolar_stft", "mean"],
        "starter_log_standardize": spectrogram.VIEW_PARAMS, "eeg_bipolar_stft": eeg.VIEW_PARAMS}


@pytest.mark.parametrize("name", list(VIEWS))
def test_every_views_params_survive_a_json_round_trip_equal(name):
    """What the manifest check compares: a manifest's params, read back from JSON, against
    the registry's. A tuple or a numpy number would not compare (or not serialise)."""
    params = VIEWS[name].params
    assert json.loads(json.dumps(params)) == params
    assert json.loads(json.dumps(view_record(name))) == {"name": name, "params": params}


def test_unknown_view_names_the_known_ones():
    with pytest.raises(KeyError) as raised:
        get_view("raw_eeg_melspec")
    assert str(raised.value) == ("unknown input view 'raw_eeg_melspec'; this code implements "
                                 "['eeg_bipolar_stft', 'kaggle_eeg_stacked', 'starter_log_standardize']")
    with pytest.raises(KeyError, match="unknown input view None"):
        view_record(None)


def test_a_record_is_a_deep_copy_and_the_default_of_every_manifest_entry():
    record = view_record()
    record["params"]["channels"] = 1
    assert VIEWS[DEFAULT_VIEW].params["channels"] == 3
    eeg_record = view_record("eeg_bipolar_stft")
    eeg_record["params"]["montage"][0][0][0] = "Fz"
    assert eeg.VIEW_PARAMS["montage"][0][0] == ["Fp1", "F7"]
    entry = ModelEntry(name="m", arch="mobilenetv3_large", fold=0, file="m.weights.h5", sha256="0")
    assert entry.input == view_record() == {"name": DEFAULT_VIEW, "params": spectrogram.VIEW_PARAMS}


def test_each_view_is_its_modules_transform_and_the_stack_holds_both():
    arrays, offsets = recordings(), {"spectrogram": 20.0, "eeg": 4.0}
    kaggle = get_view("starter_log_standardize").image(arrays, offsets)
    from_eeg = get_view("eeg_bipolar_stft").image(arrays, offsets)
    both = get_view("kaggle_eeg_stacked").image(arrays, offsets)
    np.testing.assert_array_equal(kaggle, spectrogram.model_input(arrays["spectrogram"], 20.0))
    np.testing.assert_array_equal(from_eeg, eeg.model_input(arrays["eeg"], 4.0))
    for image in (kaggle, from_eeg, both):
        assert image.shape == IMAGE_SHAPE and image.dtype == np.float32 and np.isfinite(image).all()
    np.testing.assert_array_equal(both[..., 0], kaggle[..., 0])
    np.testing.assert_array_equal(both[..., 1], from_eeg[..., 0])
    np.testing.assert_array_equal(both[..., 2], (kaggle[..., 0] + from_eeg[..., 0]) / 2)
    np.testing.assert_array_equal(both, stacked.model_input(arrays["spectrogram"], arrays["eeg"], 20.0, 4.0))
    # no offsets (a test sample): each recording's centre
    np.testing.assert_array_equal(get_view("kaggle_eeg_stacked").image(arrays),
                                  stacked.model_input(arrays["spectrogram"], arrays["eeg"]))
    np.testing.assert_array_equal(get_view("eeg_bipolar_stft").image(arrays, {"eeg": None}),
                                  eeg.model_input(arrays["eeg"]))


def test_a_view_needs_every_source_it_reads():
    with pytest.raises(KeyError, match=r"input view 'kaggle_eeg_stacked' reads \['spectrogram', 'eeg'\]; no array "
                                       r"for \['eeg'\]"):
        get_view("kaggle_eeg_stacked").image({"spectrogram": recordings()["spectrogram"]})
    with pytest.raises(ValueError, match=r"expected a \[T, 20\] EEG"):
        get_view("eeg_bipolar_stft").image({"eeg": np.zeros((20, 100), dtype=np.float32)})


def test_signal_fractions_per_source():
    arrays = recordings()
    arrays["spectrogram"][:, :175] = np.nan  # the centred window [25, 325) keeps 150 of its 300 columns
    arrays["eeg"][:, 0] = np.nan  # Fp1, one of the montage's 16 electrodes
    assert get_view("kaggle_eeg_stacked").signal_fractions(arrays) == {"spectrogram": 0.5, "eeg": 15 / 16}
    assert get_view("starter_log_standardize").signal_fractions(arrays) == {"spectrogram": 0.5}
    assert get_view("eeg_bipolar_stft").signal_fractions(arrays) == {"eeg": 15 / 16}


# --- left <-> right ------------------------------------------------------------------------


def test_mirror_rows_swap_the_left_and_right_blocks():
    assert MIRROR_ROWS.shape == (400,) and MIRROR_ROWS.dtype.kind == "i"
    expected = [*range(100, 200), *range(0, 100), *range(300, 400), *range(200, 300)]
    np.testing.assert_array_equal(MIRROR_ROWS, expected)
    tagged = np.arange(400)[:, None] * 1000 + np.arange(7)  # [400, 7]: row r holds r * 1000 + column
    mirrored = mirror_left_right(tagged)
    np.testing.assert_array_equal(mirrored[:, 0] // 1000, expected)
    np.testing.assert_array_equal(mirrored[5], tagged[105])  # LL row 5 <- RL row 5
    np.testing.assert_array_equal(mirrored[399], tagged[299])  # RP's top row <- LP's
    np.testing.assert_array_equal(mirror_left_right(mirrored), tagged)
    image = np.random.default_rng(0).normal(size=(400, 300, 3)).astype(np.float32)
    np.testing.assert_array_equal(mirror_left_right(mirror_left_right(image)), image)
    np.testing.assert_array_equal(mirror_left_right(image)[:100], image[100:200])
    with pytest.raises(ValueError, match=r"got shape \(300, 400\)"):
        mirror_left_right(np.zeros((300, 400)))
    assert not MIRROR_ROWS.flags.writeable


def test_mirroring_the_eeg_image_is_the_image_of_the_eeg_with_left_and_right_swapped():
    recording = recordings()["eeg"]
    recording[::5, EEG_CHANNELS.index("C3")] = np.nan
    recording[:, EEG_CHANNELS.index("T4")] *= 3  # left and right differ
    swap = list(range(20))
    for left, right in LEFT_RIGHT:
        i, j = EEG_CHANNELS.index(left), EEG_CHANNELS.index(right)
        swap[i], swap[j] = j, i
    swapped = recording[:, swap]
    image = eeg.model_input(recording, 5.0)
    assert not np.allclose(mirror_left_right(image), image, atol=0.1)
    # equal up to the order of the sums of the image's mean and deviation
    np.testing.assert_allclose(mirror_left_right(image), eeg.model_input(swapped, 5.0), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(mirror_left_right(eeg.chain_power(eeg.eeg_window(recording, 5.0))),
                                  eeg.chain_power(eeg.eeg_window(swapped, 5.0)))


def awkward_samples() -> list[tuple[dict, dict]]:
    """(arrays, offsets) samples a batch mixes: ordinary recordings, NaN and +-inf, constant and
    near-constant ones, recordings shorter than their window (zero-padded), an offset past the
    end, and a test sample (no offsets)."""
    ordinary = recordings()
    holes = recordings(1)
    holes["spectrogram"][:, ::7] = np.nan
    holes["spectrogram"][5, :40] = np.inf
    holes["eeg"][::3, 4] = np.nan
    holes["eeg"][100:200, :] = np.inf
    near_constant = {"spectrogram": np.full((400, 300), 3.7, dtype=np.float32),
                     "eeg": np.full((10_000, 20), 12.5, dtype=np.float32)}
    near_constant["spectrogram"][17, 3] = np.nextafter(np.float32(3.7), np.float32(4))
    near_constant["eeg"][5000, 0] = 12.500001
    short = {"spectrogram": recordings(2)["spectrogram"][:, :37], "eeg": recordings(2)["eeg"][:3_000]}
    constant = {"spectrogram": np.zeros((400, 0), dtype=np.float32), "eeg": np.zeros((10_000, 20), dtype=np.float32)}
    return [(ordinary, {"spectrogram": 20.0, "eeg": 4.0}), (holes, {"spectrogram": 0.0, "eeg": 0.0}),
            (near_constant, None), (short, {"spectrogram": 10.0, "eeg": 2.0}), (constant, None),
            (ordinary, {"spectrogram": 5000.0, "eeg": 59.0})]


@pytest.mark.parametrize("name", list(VIEWS))
def test_a_batch_of_images_is_each_sample_alone(name):
    """What the training loader computes for a batch (`images`) is, bit for bit, what the
    kernel computes for each of its samples (`image`), whatever the batch mixes."""
    view = get_view(name)
    samples = awkward_samples()
    batch = view.images(samples)
    assert batch.shape == (len(samples), *IMAGE_SHAPE) and batch.dtype == np.float32 and np.isfinite(batch).all()
    for k, (arrays, offsets) in enumerate(samples):
        np.testing.assert_array_equal(batch[k], view.image(arrays, offsets))
    np.testing.assert_array_equal(view.images(samples[::-1]), batch[::-1])
    if name != "kaggle_eeg_stacked":
        np.testing.assert_array_equal(batch[..., 0], batch[..., 2])  # one image, tiled
