import sys

import numpy as np
import pandas as pd
import pytest

from hms_offline.constants import ID_COLUMN, VOTE_COLUMNS
from hms_offline.convert import read_spectrogram
from hms_offline.inference import Ensemble, load_models, predict_competition, predict_spectrograms
from hms_offline.manifest import Manifest, ManifestError, ModelEntry, load_manifest
from hms_offline.metric import score_files
from hms_offline.preprocess import model_input

from conftest import REPO_ROOT, run_offline

KERNEL = REPO_ROOT / "kernel" / "inference.py"


class ConstantModel:
    def __init__(self, row):
        self.row = np.asarray(row, dtype=np.float32)

    def predict_on_batch(self, images):
        return np.tile(self.row, (len(images), 1))


def entry(name, weight):
    return ModelEntry(name=name, arch="mobilenetv3_large", fold=0, file=f"{name}.weights.h5", sha256="0", ensemble_weight=weight)


def test_ensemble_combines_probabilities_by_ensemble_weight():
    manifest = Manifest(models=[entry("a", 1.0), entry("b", 3.0)])
    ensemble = Ensemble(manifest, [ConstantModel([1, 0, 0, 0, 0, 0]), ConstantModel([0, 1, 0, 0, 0, 0])])
    np.testing.assert_allclose(ensemble.predict(np.zeros((2, 4))), [[0.25, 0.75, 0, 0, 0, 0]] * 2)
    assert set(ensemble.seconds) == {"a", "b"}


def test_an_empty_ensemble_is_refused():
    with pytest.raises(ManifestError, match="lists no models"):
        Ensemble(Manifest(models=[]), [])


def expected_submission(competition, bundle) -> np.ndarray:
    """The fold ensemble computed the long way: model by model, row by row."""
    manifest, root = load_manifest(bundle)
    models = load_models(manifest, root)
    weights = np.array([m.ensemble_weight for m in manifest.models]) / sum(m.ensemble_weight for m in manifest.models)
    test = pd.read_csv(competition / "test.csv")
    rows = []
    for spectrogram_id in test["spectrogram_id"]:
        image = model_input(read_spectrogram(competition / "test_spectrograms" / f"{spectrogram_id}.parquet"))[None]
        rows.append(sum(w * model.predict_on_batch(image)[0] for w, model in zip(weights, models)))
    per_eeg = pd.DataFrame(rows, columns=list(VOTE_COLUMNS)).assign(**{ID_COLUMN: test[ID_COLUMN]})
    per_eeg = per_eeg.groupby(ID_COLUMN)[list(VOTE_COLUMNS)].mean()
    sample = pd.read_csv(competition / "sample_submission.csv")
    return per_eeg.loc[sample[ID_COLUMN]].to_numpy()


def test_predict_matches_the_ensemble_computed_by_hand(synthetic_competition, freshly_initialised_bundle, tmp_path):
    output = tmp_path / "submission.csv"
    summary = predict_competition(synthetic_competition, freshly_initialised_bundle, output, batch_size=5)
    submission = pd.read_csv(output)
    sample = pd.read_csv(synthetic_competition / "sample_submission.csv")
    assert list(submission.columns) == list(sample.columns)
    assert submission[ID_COLUMN].tolist() == sample[ID_COLUMN].tolist()
    values = submission[list(VOTE_COLUMNS)].to_numpy()
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(values, expected_submission(synthetic_competition, freshly_initialised_bundle), atol=1e-5)
    assert summary.rows == len(sample) and len(summary.models) == 3
    assert set(summary.stage_seconds) == {"read csv", "convert", "load models", "predict", "write"}


def run_kernel(data_dir, bundle_dir, output, work_dir):
    return run_offline(
        [sys.executable, str(KERNEL), "--data-dir", str(data_dir), "--bundle-dir", str(bundle_dir),
         "--output", str(output), "--work-dir", str(work_dir)],
        timeout=600,
    )


@pytest.mark.slow
def test_kernel_dry_run_offline_on_synthetic_data(synthetic_competition, freshly_initialised_bundle, tmp_path):
    output = tmp_path / "submission.csv"
    result = run_kernel(synthetic_competition, freshly_initialised_bundle, output, tmp_path / "work")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "submission rows: 12" in result.stdout and "models: 3" in result.stdout
    kl = score_files(synthetic_competition / "test_solution.csv", output)
    assert 0 < kl < 10  # freshly initialised models: any finite KL is a valid, scored submission


@pytest.mark.slow
def test_kernel_dry_run_offline_on_the_real_sample(hms_sample, freshly_initialised_bundle, tmp_path):
    output = tmp_path / "submission.csv"
    result = run_kernel(hms_sample, freshly_initialised_bundle, output, tmp_path / "work")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    submission = pd.read_csv(output)
    sample = pd.read_csv(hms_sample / "sample_submission.csv")
    assert list(submission.columns) == list(sample.columns)
    assert submission[ID_COLUMN].tolist() == sample[ID_COLUMN].tolist() == [3911565283]
    np.testing.assert_allclose(submission[list(VOTE_COLUMNS)].sum(axis=1), 1.0, atol=1e-6)


def test_kernel_refuses_a_bundle_without_models(synthetic_competition, tmp_path):
    from hms_offline.manifest import write_manifest

    write_manifest(Manifest(models=[]), tmp_path / "bundle" / "weights_manifest.json")
    result = run_kernel(synthetic_competition, tmp_path / "bundle", tmp_path / "submission.csv", tmp_path / "work")
    assert result.returncode != 0
    assert "lists no models" in result.stdout + result.stderr
    assert not (tmp_path / "submission.csv").exists()


def test_predict_command_reports_a_bad_bundle_clearly(synthetic_competition, tmp_path):
    import subprocess

    from hms_offline.manifest import write_manifest

    write_manifest(Manifest(models=[]), tmp_path / "weights_manifest.json")
    result = subprocess.run(
        [sys.executable, "-m", "hms_offline", "predict", "--data-dir", str(synthetic_competition),
         "--bundle-dir", str(tmp_path), "--output", str(tmp_path / "submission.csv")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "lists no models" in result.stderr
    assert not (tmp_path / "submission.csv").exists()


def test_an_unreadable_spectrogram_gets_the_uniform_fallback_not_a_failed_run(tmp_path):
    np.save(tmp_path / "1.npy", np.ones((400, 300), dtype=np.float32))
    (tmp_path / "2.npy").write_bytes(b"truncated")
    ensemble = Ensemble(Manifest(models=[entry("a", 1.0)]), [ConstantModel([0.5, 0.5, 0, 0, 0, 0])])
    probabilities, fallbacks = predict_spectrograms(ensemble, tmp_path, [1, 2, 3], batch_size=2)
    assert fallbacks == [2, 3]  # 2 unreadable, 3 missing
    np.testing.assert_allclose(probabilities, [[0.5, 0.5, 0, 0, 0, 0], [1 / 6] * 6, [1 / 6] * 6])


def test_non_finite_outputs_fall_back_and_nothing_predictable_is_an_error(tmp_path):
    np.save(tmp_path / "1.npy", np.ones((400, 300), dtype=np.float32))
    ensemble = Ensemble(Manifest(models=[entry("a", 1.0)]), [ConstantModel([np.nan, 1, 0, 0, 0, 0])])
    with pytest.raises(ValueError, match="no test spectrogram could be predicted"):
        predict_spectrograms(ensemble, tmp_path, [1], batch_size=4)


def test_a_corrupt_test_file_costs_only_its_own_rows(synthetic_competition, freshly_initialised_bundle, tmp_path,
                                                     monkeypatch):
    import shutil

    import hms_offline.inference as inference

    data = tmp_path / "competition"
    shutil.copytree(synthetic_competition, data)
    test = pd.read_csv(data / "test.csv")
    broken = test["spectrogram_id"].iloc[0]
    (data / "test_spectrograms" / f"{broken}.parquet").write_bytes(b"not parquet")
    (data / "test_spectrograms" / "999.parquet").write_bytes(b"not in test.csv, never read")
    monkeypatch.setattr(inference, "load_models", lambda manifest, root: [ConstantModel([1, 0, 0, 0, 0, 0])] * 3)
    summary = predict_competition(data, freshly_initialised_bundle, tmp_path / "submission.csv")
    submission = pd.read_csv(tmp_path / "submission.csv").set_index(ID_COLUMN)
    assert summary.fallbacks == [broken]
    broken_eeg = test.loc[test["spectrogram_id"] == broken, ID_COLUMN].iloc[0]
    np.testing.assert_allclose(submission.loc[broken_eeg].to_numpy(), [1 / 6] * 6)
    others = submission.drop(index=broken_eeg).to_numpy()
    np.testing.assert_allclose(others, np.tile([1, 0, 0, 0, 0, 0], (len(others), 1)))
