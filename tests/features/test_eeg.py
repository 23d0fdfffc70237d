"""hms_offline.features.eeg: the raw EEG's bipolar-montage spectrogram view."""

import json
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from scipy import signal

from hms_offline.constants import BIPOLAR_CHAINS, EEG_CHANNELS, FREQUENCY_LABELS, IMAGE_SHAPE, SPECTROGRAM_REGIONS
from hms_offline.features import eeg

CH = {name: i for i, name in enumerate(EEG_CHANNELS)}
T_AXIS = np.arange(10_000) / 200.0  # seconds


def noise(n_samples: int = 10_000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 30, size=(n_samples, 20)).astype(np.float32)


def test_the_montage_is_the_double_banana_in_the_spectrograms_region_order():
    assert BIPOLAR_CHAINS == (
        (("Fp1", "F7"), ("F7", "T3"), ("T3", "T5"), ("T5", "O1")),
        (("Fp2", "F8"), ("F8", "T4"), ("T4", "T6"), ("T6", "O2")),
        (("Fp1", "F3"), ("F3", "C3"), ("C3", "P3"), ("P3", "O1")),
        (("Fp2", "F4"), ("F4", "C4"), ("C4", "P4"), ("P4", "O2")),
    )
    assert SPECTROGRAM_REGIONS == ("LL", "RL", "LP", "RP")
    assert eeg.VIEW_PARAMS["chains"] == ["LL", "RL", "LP", "RP"]
    assert eeg.VIEW_PARAMS["montage"][0] == [["Fp1", "F7"], ["F7", "T3"], ["T3", "T5"], ["T5", "O1"]]
    assert [EEG_CHANNELS[i] for i in eeg.MONTAGE_CHANNELS] == [
        "Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1", "Fp2", "F4", "C4", "P4", "F8", "T4", "T6", "O2"]


def test_the_params_are_json_native_and_pin_the_framing():
    params = eeg.VIEW_PARAMS
    assert json.loads(json.dumps(params)) == params
    assert {key: params[key] for key in (
        "sample_rate_hz", "window_samples", "band_hz", "filter_order", "filter_padlen", "stft_window",
        "stft_window_samples", "fft_length", "hop_samples", "first_frame_centre", "first_bin", "bins", "columns",
        "log_floor", "epsilon", "channels")} == {
        "sample_rate_hz": 200, "window_samples": 10_000, "band_hz": [0.5, 20.0], "filter_order": 4,
        "filter_padlen": 27, "stft_window": "hann_periodic", "stft_window_samples": 256, "fft_length": 1024,
        "hop_samples": 33, "first_frame_centre": 66, "first_bin": 3, "bins": 100, "columns": 300,
        "log_floor": 1.0, "epsilon": 1e-6, "channels": 3}
    sos = eeg.filter_sos()
    assert sos.shape == (4, 6)
    assert eeg.FILTER_PADLEN == 3 * (2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum()))
    assert eeg.FRAME_CENTRES[0] == 66 and eeg.FRAME_CENTRES[-1] == 9933 == 10_000 - 1 - 66


def test_the_frequency_grid_is_kaggles():
    params = eeg.VIEW_PARAMS
    bins = np.arange(params["first_bin"], params["first_bin"] + params["bins"])
    assert (bins[0], bins[-1]) == (3, 102)
    step = Decimal(params["sample_rate_hz"]) / Decimal(params["fft_length"])
    assert step == Decimal(25) / Decimal(128)
    labels = [format((Decimal(int(k)) * step).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP).normalize(), "f")
              for k in bins]
    assert tuple(labels) == FREQUENCY_LABELS
    reference = signal.ShortTimeFFT(np.ones(256), hop=33, fs=200, mfft=1024)
    np.testing.assert_array_equal(reference.f[bins], bins * 25 / 128)


def test_the_stft_is_scipys_short_time_fft_with_the_documented_framing():
    pairs = eeg.band_pass(eeg.bipolar(eeg.eeg_window(noise())))
    reference = signal.ShortTimeFFT(signal.get_window("hann", 256), hop=33, fs=200, mfft=1024)
    spectrum = reference.stft(pairs, p0=2, p1=302, k_offset=0, padding="zeros", axis=-1)
    expected = np.abs(spectrum[:, 3:103, :]) ** 2
    np.testing.assert_allclose(eeg.stft_power(pairs), expected, rtol=2e-5, atol=2e-5 * expected.max())


@pytest.mark.parametrize("chain, electrode", [(0, "T3"), (1, "T4"), (2, "C3"), (3, "C4")])
def test_a_sinusoid_on_one_chain_peaks_in_that_chains_row_for_its_frequency(chain, electrode):
    """7.03125 Hz is bin 36 of the FFT (36 * 25/128), Kaggle's row 36 - 3 = 33 of a chain.
    Each electrode here is in one chain only (in two of its pairs)."""
    recording = np.zeros((10_000, 20), dtype=np.float32)
    recording[:, CH[electrode]] = 50 * np.sin(2 * np.pi * 7.03125 * T_AXIS)
    assert FREQUENCY_LABELS[33] == "7.03"

    power = eeg.chain_power(eeg.eeg_window(recording))
    peak_row = chain * 100 + 33
    assert np.unravel_index(power.argmax(), power.shape)[0] == peak_row
    assert (power.argmax(axis=0) == peak_row).all()  # in every column
    others = np.delete(power, np.s_[chain * 100 : chain * 100 + 100], axis=0)
    assert others.max() < 1e-9 * power[peak_row].min()
    image = eeg.model_input(recording)
    assert image.mean(axis=(1, 2)).argmax() == peak_row


def test_bipolar_is_a_minus_b_chain_major():
    window = np.tile(np.arange(20, dtype=np.float32) ** 2, (10_000, 1))
    pairs = eeg.bipolar(window)
    assert pairs.shape == (16, 10_000)
    expected = [CH[a] ** 2 - CH[b] ** 2 for chain in BIPOLAR_CHAINS for a, b in chain]
    np.testing.assert_array_equal(pairs[:, 0], expected)
    assert pairs[5, 0] == CH["F8"] ** 2 - CH["T4"] ** 2


def test_the_window_follows_the_offset_and_centres_a_test_file():
    recording = np.arange(30_000 * 20, dtype=np.float32).reshape(30_000, 20)
    np.testing.assert_array_equal(eeg.eeg_window(recording, 10.0), recording[2_000:12_000])
    np.testing.assert_array_equal(eeg.eeg_window(recording, 2.5), recording[500:10_500])
    np.testing.assert_array_equal(eeg.eeg_window(recording), recording[10_000:20_000])
    np.testing.assert_array_equal(eeg.eeg_window(recording[:10_001]), recording[:10_000])  # (10001 - 10000) // 2
    assert eeg.eeg_window(recording).dtype == np.float32


def test_missing_samples_are_the_channels_mean_over_the_window():
    recording = np.full((20_000, 20), 1000.0, dtype=np.float32)  # outside the window: never seen
    recording[5_000:15_000] = 0.0
    recording[5_000:5_004, 0] = [1, np.nan, 2, np.inf]  # the rest of the window is 0
    recording[5_000:15_000, 1] = np.nan  # no finite sample in the window
    recording[5_000:5_002, 2] = [-np.inf, 6.0]
    window = eeg.eeg_window(recording, 25.0)
    mean_0 = 3.0 / 9_998
    np.testing.assert_allclose(window[:4, 0], [1, mean_0, 2, mean_0], rtol=1e-6)
    assert not window[:, 1].any()
    np.testing.assert_allclose(window[:2, 2], [6.0 / 9_999, 6.0], rtol=1e-6)
    recording[5_000:5_010, 3] = 4.0
    tail = eeg.eeg_window(recording[:11_000], 25.0)  # its last 4,000 samples are past the end
    np.testing.assert_allclose(tail[6_000:, 3], 40.0 / 6_000, rtol=1e-6)
    assert (tail[6_000:, 4] == 0).all()


def test_a_training_window_and_a_test_file_of_the_same_samples_give_the_same_image():
    """The NaN fill is inside the window: a long recording cut at an offset, NaN in and
    around the window, gives exactly the image of those samples as a 10,000-row test file."""
    long = noise(40_000, seed=3)
    long[::7, 2] = np.nan
    long[:, 9] = np.nan
    long[12_000:13_000, :5] = np.nan
    long[25_000:, 0] = np.nan  # partly inside the window [16,000, 26,000)
    long[:16_000, 7] = np.inf  # outside the window only
    test_file = long[16_000:26_000].copy()
    np.testing.assert_array_equal(eeg.model_input(long, 80.0), eeg.model_input(test_file))
    assert eeg.signal_fraction(long, 80.0) == eeg.signal_fraction(test_file)


@pytest.mark.parametrize("case", ["all NaN", "all zero", "empty", "short", "constant", "inf", "huge", "one channel"])
def test_any_recording_gives_a_finite_image(case):
    recording = noise()
    if case == "all NaN":
        recording[:] = np.nan
    elif case == "all zero":
        recording[:] = 0
    elif case == "empty":
        recording = recording[:0]
    elif case == "short":
        recording = recording[:1_234]
    elif case == "constant":
        recording[:] = 3.5
    elif case == "inf":
        recording[::3] = np.inf
        recording[1::3] = -np.inf
        recording[:, 4] = np.inf
    elif case == "huge":
        recording[::2] = np.finfo(np.float32).max
        recording[1::2] = -np.finfo(np.float32).max
        recording[:, ::2] *= -1  # neighbours opposite: differences of 2 * max
    elif case == "one channel":
        recording[:, 1:] = np.nan
    image = eeg.model_input(recording)
    assert image.shape == IMAGE_SHAPE and image.dtype == np.float32
    assert np.isfinite(image).all()
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    if case in ("all NaN", "all zero", "empty", "constant"):
        assert not image.any()  # a constant image standardises to 0


def test_signal_fraction_counts_the_montages_finite_samples_in_the_window():
    recording = noise()
    assert eeg.signal_fraction(recording) == 1.0
    assert eeg.signal_fraction(recording[:0]) == 0.0
    assert eeg.signal_fraction(np.full((10_000, 20), np.nan, dtype=np.float32)) == 0.0
    assert eeg.signal_fraction(recording[:5_000]) == 0.5  # the rest of the window is past the end
    assert eeg.signal_fraction(noise(20_000), 75.0) == 0.5  # starts at 15,000
    outside = recording.copy()
    outside[:, [CH["Fz"], CH["Cz"], CH["Pz"], CH["EKG"]]] = np.nan  # not in the montage
    assert eeg.signal_fraction(outside) == 1.0
    one = recording.copy()
    one[:, CH["O1"]] = np.inf
    one[:1_000, CH["Fp2"]] = np.nan
    assert eeg.signal_fraction(one) == (14 + 0.9) / 16
    only_midline = np.full((10_000, 20), np.nan, dtype=np.float32)
    only_midline[:, [CH["Fz"], CH["Cz"], CH["Pz"], CH["EKG"]]] = 1.0
    assert eeg.signal_fraction(only_midline) == 0.0


def test_a_bad_shape_or_offset_is_refused():
    with pytest.raises(ValueError, match=r"expected a \[T, 20\] EEG, got shape \(20, 10000\)"):
        eeg.model_input(np.zeros((20, 10_000), dtype=np.float32))
    with pytest.raises(ValueError, match=r"got shape \(10000,\)"):
        eeg.signal_fraction(np.zeros(10_000, dtype=np.float32))
    for offset in (-2.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="offset_seconds must be a finite number >= 0"):
            eeg.eeg_window(noise(), offset)
