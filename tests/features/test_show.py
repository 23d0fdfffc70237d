"""`python -m hms_offline show`: a PNG of the expected size for a train and a test sample of
synthetic data, for the real sample's test EEG, and with a bundle's prediction."""

import struct

import numpy as np
import pandas as pd
import pytest

from hms_offline.cli import main
from hms_offline.features.show import FIGURE_DPI, FIGURE_INCHES, bipolar_traces, find_sample

EXPECTED_PIXELS = (FIGURE_INCHES[0] * FIGURE_DPI, FIGURE_INCHES[1] * FIGURE_DPI)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_a_train_sample_is_cut_at_its_first_labelled_row(synthetic_competition, tmp_path):
    train = pd.read_csv(synthetic_competition / "train.csv")
    row = train.iloc[0]
    sample = find_sample(synthetic_competition, int(row["eeg_id"]))
    assert sample.offsets == {"spectrogram": row["spectrogram_label_offset_seconds"],
                              "eeg": row["eeg_label_offset_seconds"]}
    votes = row.filter(like="_vote").to_numpy(dtype=float)
    np.testing.assert_allclose(sample.truth, votes / votes.sum())
    assert bipolar_traces(sample).shape == (16, 10_000)
    output = tmp_path / "train.png"
    assert main(["show", "--data-dir", str(synthetic_competition), "--eeg-id", str(row["eeg_id"]),
                 "--output", str(output)]) == 0
    assert png_size(output) == EXPECTED_PIXELS


def test_a_test_sample_is_its_files_whole_and_an_unknown_id_is_named(synthetic_competition, tmp_path):
    eeg_id = int(pd.read_csv(synthetic_competition / "test.csv")["eeg_id"].iloc[0])
    sample = find_sample(synthetic_competition, eeg_id)
    assert sample.origin == "test.csv" and sample.truth is None and sample.offsets == {"spectrogram": None, "eeg": None}
    output = tmp_path / "test.png"
    assert main(["show", "--data-dir", str(synthetic_competition), "--eeg-id", str(eeg_id), "--output", str(output)]) == 0
    assert png_size(output) == EXPECTED_PIXELS
    with pytest.raises(ValueError, match="eeg_id 1 is in neither .*train.csv and .*test.csv"):
        find_sample(synthetic_competition, 1)


def test_the_real_sample_test_eeg(hms_sample, tmp_path):
    eeg_id = int(pd.read_csv(hms_sample / "test.csv")["eeg_id"].iloc[0])
    output = tmp_path / "real.png"
    assert main(["show", "--data-dir", str(hms_sample), "--eeg-id", str(eeg_id), "--output", str(output)]) == 0
    assert png_size(output) == EXPECTED_PIXELS


@pytest.mark.slow
def test_with_a_bundle_the_ensembles_prediction_is_drawn(synthetic_competition, exported_bundle, tmp_path, capsys):
    """The prediction `show` prints is the one `predict` writes for that eeg_id (a test sample)."""
    from hms_offline.constants import VOTE_COLUMNS
    from hms_offline.serving.inference import predict_competition

    eeg_id = int(pd.read_csv(synthetic_competition / "test.csv")["eeg_id"].iloc[0])
    output = tmp_path / "bundle.png"
    assert main(["show", "--data-dir", str(synthetic_competition), "--eeg-id", str(eeg_id), "--bundle-dir",
                 str(exported_bundle), "--engine", "tflite", "--output", str(output)]) == 0
    assert png_size(output) == EXPECTED_PIXELS
    printed = capsys.readouterr().out.splitlines()[0]
    shown = np.array([float(part.split()[-1]) for part in printed.removeprefix("predicted: ").split(",")])
    predict_competition(synthetic_competition, exported_bundle, tmp_path / "submission.csv", engine="tflite")
    submission = pd.read_csv(tmp_path / "submission.csv").set_index("eeg_id")
    np.testing.assert_allclose(shown, submission.loc[eeg_id, list(VOTE_COLUMNS)].to_numpy(dtype=float), atol=1e-3)
