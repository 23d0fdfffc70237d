import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hms_offline.constants import IMAGE_SHAPE
from hms_offline.features.spectrogram import (
    CLIP_MAX,
    CLIP_MIN,
    cut_window,
    log_standardize,
    model_input,
    signal_fraction,
    window_start,
)


def columns_spectrogram(values) -> np.ndarray:
    """A [400, T] spectrogram whose column t holds values[t] in every row."""
    return np.tile(np.asarray(values, dtype=np.float32), (400, 1))


def test_window_start_follows_the_starter_and_centres_without_offset():
    assert window_start(690, 60.0) == 30
    assert window_start(690, 61.0) == 30  # offset // 2, as the starter
    assert window_start(690, 0.0) == 0
    assert window_start(300, None) == 0
    assert window_start(310, None) == 5
    assert window_start(311, None) == 5
    assert window_start(100, None) == 0
    with pytest.raises(ValueError, match="offset_seconds"):
        window_start(690, -2.0)


def test_cut_window_right_pads_with_zeros():
    spec = columns_spectrogram(np.arange(1, 11))  # columns hold 1..10
    window = cut_window(spec, offset_seconds=4.0)  # starts at column 2
    assert window.shape == (400, 300)
    np.testing.assert_array_equal(window[0, :8], [3, 4, 5, 6, 7, 8, 9, 10])
    assert not window[:, 8:].any()


def test_cut_window_centres_a_long_recording_and_keeps_a_300_column_one_whole():
    long = columns_spectrogram(np.arange(320))
    np.testing.assert_array_equal(cut_window(long)[0], np.arange(10, 310))
    exact = columns_spectrogram(np.arange(300))
    np.testing.assert_array_equal(cut_window(exact), exact)


def test_cut_window_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match=r"\[400, T\]"):
        cut_window(np.zeros((300, 400), dtype=np.float32))


def test_model_input_matches_a_hand_computation():
    # Column values 7 (skipped by the offset), 1, e^2, 1e6; offset 2 s -> start at column 1.
    spec = columns_spectrogram([7.0, 1.0, math.exp(2.0), 1e6])
    out = model_input(spec, offset_seconds=2.0)
    # After clip + log the window's columns are 0, 2, 8 (1e6 clipped to e^8), then 297
    # zero-padded columns clipped to e^-4 -> -4.
    logs = [0.0, 2.0, 8.0] + [-4.0] * 297
    mean = sum(logs) / 300  # -1178 / 300
    std = math.sqrt(sum((v - mean) ** 2 for v in logs) / 300)
    expected = [(v - mean) / (std + 1e-6) for v in logs]
    assert out.shape == IMAGE_SHAPE
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0], expected, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(out[123, :, 1], out[0, :, 0])  # every row the same here
    np.testing.assert_array_equal(out[..., 0], out[..., 2])  # three identical channels
    assert math.isclose(mean, -3.9266666, abs_tol=1e-6) and math.isclose(std, 0.8049569, abs_tol=1e-6)


def test_a_constant_window_standardises_to_zero_not_nan():
    out = model_input(np.zeros((400, 300), dtype=np.float32))
    assert np.isfinite(out).all() and not out.any()


def test_an_offset_past_the_end_gives_a_padded_window():
    out = model_input(columns_spectrogram(np.ones(10)), offset_seconds=1000.0)
    assert out.shape == IMAGE_SHAPE and not out.any()


@settings(max_examples=150, deadline=None)
@given(spectrogram=arrays(
    np.float32, st.tuples(st.just(400), st.integers(0, 420)),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
))
def test_any_spectrogram_gives_a_finite_model_input(spectrogram):
    """Any [400, T] array, T >= 0, NaN and +-inf included: a finite [400, 300, 3] image."""
    image = model_input(spectrogram)
    assert image.shape == (400, 300, 3) and image.dtype == np.float32
    assert np.isfinite(image).all()


def test_nan_is_no_power_and_inf_is_clipped_like_any_value():
    spectrogram = np.full((400, 300), 2.0, dtype=np.float32)
    spectrogram[:, :100] = np.linspace(0.5, 5000, 100)
    with_nan, with_inf = spectrogram.copy(), spectrogram.copy()
    with_nan[0, 0], with_inf[0, 1], with_inf[1, 1] = np.nan, np.inf, -np.inf
    zeroed, clipped = spectrogram.copy(), spectrogram.copy()
    zeroed[0, 0], clipped[0, 1], clipped[1, 1] = 0.0, np.exp(8.0), 0.0
    np.testing.assert_array_equal(model_input(with_nan), model_input(zeroed))
    np.testing.assert_array_equal(model_input(with_inf), model_input(clipped))


def test_signal_fraction_counts_the_cells_of_the_window_that_hold_power():
    assert signal_fraction(np.ones((400, 300), dtype=np.float32)) == 1.0
    assert signal_fraction(np.zeros((400, 0), dtype=np.float32)) == 0.0
    assert signal_fraction(np.full((400, 300), np.inf, dtype=np.float32)) == 0.0
    assert signal_fraction(np.ones((400, 30), dtype=np.float32)) == 0.1  # 30 of 300 columns, right-padded
    long = np.zeros((400, 900), dtype=np.float32)
    long[:, 300:450] = 1.0  # the centred window [300, 600) holds half of it
    assert signal_fraction(long) == 0.5


@st.composite
def awkward_windows(draw) -> np.ndarray:
    """`[400, 300]` float32 windows that break naive statistics: constant, near-constant (a few
    cells one float32 step or a hair off a constant), zero-padded short recordings, NaN and
    +-inf cells, huge and tiny values, and plain noise."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    level = np.float32(draw(st.sampled_from([0.0, 1e-3, np.exp(-4.0), 0.5, 1.0, 3.7, 1234.5, np.exp(8.0), 1e30])))
    kind = draw(st.sampled_from(["constant", "one step", "hair", "padded", "holes", "noise"]))
    window = np.full((400, 300), level, dtype=np.float32)
    cells = rng.integers(0, window.size, size=draw(st.integers(1, 50)))
    if kind == "one step":
        window.flat[cells] = np.nextafter(level, np.float32(np.inf))
    elif kind == "hair":
        window.flat[cells] *= np.float32(1 + rng.uniform(-1e-6, 1e-6))
    elif kind == "padded":  # a recording of `columns` columns, cut from an offset
        columns = draw(st.integers(0, 299))
        short = rng.gamma(0.5, 20, size=(400, columns)).astype(np.float32)
        window = cut_window(short, 0.0)
    elif kind == "holes":
        window.flat[cells] = rng.choice(np.array([np.nan, np.inf, -np.inf, 0.0], dtype=np.float32), size=len(cells))
    elif kind == "noise":
        window = (level + rng.gamma(0.5, 20, size=(400, 300))).astype(np.float32)
    return window


@settings(max_examples=120, deadline=None)
@given(window=awkward_windows())
def test_the_statistics_are_float64_exact_for_any_window(window):
    """The mean and standard deviation of the clipped logs are float64's: a near-constant
    window standardises to its true deviations (a constant one to 0), where float32 sums
    would leave rounding noise divided by a tiny standard deviation (errors of order 1)."""
    out = log_standardize(window)
    logged = np.log(np.fmin(np.fmax(window, CLIP_MIN), CLIP_MAX)).astype(np.float64)  # the float32 logs, widened
    expected = (logged - logged.mean()) / (logged.std() + 1e-6)
    assert out.dtype == np.float32 and out.shape == (400, 300)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", ["noise", "padded", "holes"])
def test_log_standardize_is_the_float64_math_of_the_starter(kind):
    """For windows that vary (the clipped logs' standard deviation well above float32's step),
    within 1e-5 of the transform computed in float64 throughout, log included."""
    rng = np.random.default_rng(7)
    window = rng.gamma(0.5, 20, size=(400, 300)).astype(np.float32)
    if kind == "padded":
        window[:, 120:] = 0.0
    if kind == "holes":
        window.flat[rng.integers(0, window.size, 500)] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), 500)
    power = np.nan_to_num(window.astype(np.float64), nan=0.0, posinf=np.inf, neginf=-np.inf)
    logged = np.log(np.clip(power, math.exp(-4.0), math.exp(8.0)))
    np.testing.assert_allclose(log_standardize(window), (logged - logged.mean()) / (logged.std() + 1e-6), rtol=0, atol=1e-5)
