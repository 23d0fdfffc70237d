import json
import shutil
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hms_offline.constants import ID_COLUMN, SPECTROGRAM_COLUMNS, VOTE_COLUMNS
from hms_offline.convert import read_spectrogram
from hms_offline.metric import score_files
from hms_offline.models.engines import EngineLoader, KerasEngine
from hms_offline.features.views import view_record
from hms_offline.models.manifest import Manifest, ModelEntry, load_manifest, make_entry, write_manifest
from hms_offline.serving.ensemble import Ensemble, Member, NoModelError, load_members
from hms_offline.serving.inference import StrictModeError, predict_competition, predict_samples
from hms_offline.serving.samples import SourceProblem, batches, find_test_files, prepare

from conftest import REPO_ROOT, run_offline

KERNEL = REPO_ROOT / "kernel" / "inference.py"
PRIOR = [0.4, 0.2, 0.1, 0.1, 0.1, 0.1]


class ConstantModel:
    def __init__(self, row):
        self.row = np.asarray(row, dtype=np.float32)

    def predict_on_batch(self, images):
        return np.tile(self.row, (len(images), 1))


class FailsOnBatchesModel(ConstantModel):
    """Raises on a batch of more than one image (say, out of memory), predicts single images."""

    def predict_on_batch(self, images):
        if len(images) > 1:
            raise MemoryError("batch too large")
        return super().predict_on_batch(images)


def entry(name, weight, prior=None, view="starter_log_standardize"):
    return ModelEntry(name=name, arch="mobilenetv3_large", fold=0, file=f"{name}.weights.h5", sha256="0",
                      ensemble_weight=weight, class_prior=prior, input=view_record(view))


def member(name, weight, model, prior=None, view="starter_log_standardize"):
    return Member(entry(name, weight, prior, view), model, f"{name}.weights.h5")


def kaggle_batch(n):
    """A batch of n images of the Kaggle view, for models that ignore their input."""
    return {"starter_log_standardize": (np.arange(n), np.zeros((n, 4)))}


def test_ensemble_combines_probabilities_by_ensemble_weight():
    ensemble = Ensemble([member("a", 1.0, ConstantModel([1, 0, 0, 0, 0, 0])),
                         member("b", 3.0, ConstantModel([0, 1, 0, 0, 0, 0]))])
    np.testing.assert_allclose(ensemble.predict(kaggle_batch(2), 2), [[0.25, 0.75, 0, 0, 0, 0]] * 2)
    assert set(ensemble.seconds) == {"a", "b"}


def test_a_failing_model_is_dropped_the_rest_renormalised_and_a_raising_batch_retried():
    ensemble = Ensemble([
        member("good", 1.0, ConstantModel([1, 0, 0, 0, 0, 0]), PRIOR),
        member("nan", 5.0, ConstantModel([np.nan, 1, 0, 0, 0, 0]), PRIOR),
        member("negative", 5.0, ConstantModel([-1, 2, 0, 0, 0, 0]), PRIOR),
        member("retried", 3.0, FailsOnBatchesModel([0, 0, 1, 0, 0, 0]), [0, 0, 0, 0, 0, 1]),
    ])
    np.testing.assert_allclose(ensemble.predict(kaggle_batch(3), 3), [[0.25, 0, 0.75, 0, 0, 0]] * 3)
    assert ensemble.names == ["good", "retried"]
    assert [(m.name, m.file) for m in ensemble.dropped] == [("nan", "nan.weights.h5"), ("negative", "negative.weights.h5")]
    assert ensemble.dropped[0].reason == "non-finite output on 3 of 3 images"
    assert "not probabilities" in ensemble.dropped[1].reason
    prior, source = ensemble.class_prior()  # over the models still in the ensemble, by their weights
    np.testing.assert_allclose(prior, 0.25 * np.array(PRIOR) + 0.75 * np.array([0, 0, 0, 0, 0, 1]))
    assert source.startswith("class prior of the training rows")


def test_no_model_left_is_an_error_naming_each_model():
    with pytest.raises(NoModelError, match="no model of the ensemble could be loaded\n  x: corrupt"):
        from hms_offline.serving.inference_report import DroppedModel

        Ensemble([], [DroppedModel("x", "x.h5", "corrupt")])
    ensemble = Ensemble([member("nan", 1.0, ConstantModel([np.nan] * 6))])
    with pytest.raises(NoModelError, match="every model of the ensemble failed\n  nan: non-finite"):
        ensemble.predict(kaggle_batch(1), 1)


def test_without_recorded_priors_the_fallback_is_uniform():
    prior, source = Ensemble([member("a", 1.0, ConstantModel([1, 0, 0, 0, 0, 0]))]).class_prior()
    np.testing.assert_allclose(prior, [1 / 6] * 6)
    assert source.startswith("uniform")


def in_process(samples, views, data_dir, batch_size):
    """The samples' prepared batches, made in this process (what the workers return)."""
    from hms_offline.serving.samples import sources_of

    files, known = find_test_files(data_dir, samples, sources_of(views))
    return (prepare(batch) for batch in batches(samples, views, files, known, batch_size))


def eeg_table(values: np.ndarray) -> pa.Table:
    from hms_offline.constants import EEG_CHANNELS

    return pa.table({name: values[:, i] for i, name in enumerate(EEG_CHANNELS)})


def test_unreadable_and_signal_less_spectrograms_are_named_with_their_stage(tmp_path):
    folder = tmp_path / "test_spectrograms"
    write_parquet(folder / "1.parquet", spectrogram_table(np.ones((300, 400), dtype=np.float32)))
    (folder / "2.parquet").write_bytes(b"truncated")
    write_parquet(folder / "3.parquet", spectrogram_table(np.full((300, 400), np.nan, dtype=np.float32)))
    write_parquet(folder / "4.parquet", spectrogram_table(np.ones((20, 400), dtype=np.float32)))  # 40 s of 10 min
    write_parquet(folder / "5.parquet", eeg_table(np.ones((300, 20), dtype=np.float32)))  # an EEG, not a spectrogram
    (folder / "6.parquet").mkdir()
    ensemble = Ensemble([member("a", 1.0, ConstantModel([0.5, 0.5, 0, 0, 0, 0]))])
    samples = pd.DataFrame({"spectrogram_id": [1, 2, 3, 4, 5, 6, 7], ID_COLUMN: [11, 12, 13, 14, 15, 16, 17]})
    probabilities, failed, partial = predict_samples(ensemble, in_process(samples, ensemble.views, tmp_path, 2), samples)
    assert {row.spectrogram_id: row.stage for row in failed.values()} == {
        2: "convert", 3: "signal", 4: "signal", 5: "convert", 6: "convert", 7: "convert"}
    assert [row.eeg_id for row in failed.values()] == [12, 13, 14, 15, 16, 17] and partial == []
    reasons = {row.spectrogram_id: row.reason for row in failed.values()}
    assert reasons[2].startswith(f"{folder / '2.parquet'}: cannot be read as parquet")
    assert "no usable signal: 0.0% of the cells of its 400x300 window" in reasons[3]
    assert "6.7%" in reasons[4] and "(20 time steps)" in reasons[4]
    assert reasons[5].startswith(f"{folder / '5.parquet'}: not a valid spectrogram parquet: missing columns")
    assert reasons[6] == f"{folder / '6.parquet'}: is a directory, not a parquet file"
    assert reasons[7] == f"no parquet file for it in {folder} (looked for 7.parquet or 7.pq, any case)"
    np.testing.assert_allclose(probabilities[0], [0.5, 0.5, 0, 0, 0, 0])
    assert np.isnan(probabilities[1:]).all()


def test_a_sample_without_one_view_is_predicted_by_the_others(tmp_path):
    """One ensemble of two views: a sample whose EEG is unusable is predicted by the Kaggle-view
    model alone (a partial row), one with neither recording gets NaN (the fallback)."""
    for i in (1, 2):
        write_parquet(tmp_path / "test_spectrograms" / f"{i}.parquet", spectrogram_table(np.ones((300, 400), np.float32)))
    write_parquet(tmp_path / "test_eegs" / "11.parquet",
                  eeg_table(np.random.default_rng(0).normal(size=(10_000, 20)).astype(np.float32)))
    write_parquet(tmp_path / "test_eegs" / "12.parquet", eeg_table(np.full((10_000, 20), np.nan, np.float32)))
    ensemble = Ensemble([member("kaggle", 1.0, ConstantModel([1, 0, 0, 0, 0, 0])),
                         member("eeg", 3.0, ConstantModel([0, 1, 0, 0, 0, 0]), view="eeg_bipolar_stft")])
    samples = pd.DataFrame({"spectrogram_id": [1, 2, 3], ID_COLUMN: [11, 12, 13]})
    probabilities, failed, partial = predict_samples(ensemble, in_process(samples, ensemble.views, tmp_path, 8), samples)
    np.testing.assert_allclose(probabilities[:2], [[0.25, 0.75, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    assert np.isnan(probabilities[2]).all()
    assert [(row.eeg_id, row.stage) for row in partial] == [(12, "signal")]
    assert partial[0].reason.startswith("input view eeg_bipolar_stft: no usable signal: 0.0% of the samples of its 50 s window")
    assert [(row.eeg_id, row.stage) for row in failed.values()] == [(13, "convert")]


def expected_submission(competition, bundle, engine="keras") -> np.ndarray:
    """The fold ensemble computed the long way: model by model, row by row, each model (run by
    `engine`) on its own input view of the row's recordings, made by the features functions."""
    from hms_offline.convert import read_eeg
    from hms_offline.features.views import get_view

    manifest, root = load_manifest(bundle)
    models = [KerasEngine(entry, root) if engine == "keras" else EngineLoader(engine)(entry, root)
              for entry in manifest.models]
    views = [get_view(entry.input["name"]) for entry in manifest.models]
    weights = np.array([m.ensemble_weight for m in manifest.models]) / sum(m.ensemble_weight for m in manifest.models)
    test = pd.read_csv(competition / "test.csv")
    rows = []
    for spectrogram_id, eeg_id in zip(test["spectrogram_id"], test[ID_COLUMN]):
        arrays = {"spectrogram": read_spectrogram(competition / "test_spectrograms" / f"{spectrogram_id}.parquet"),
                  "eeg": read_eeg(competition / "test_eegs" / f"{eeg_id}.parquet")}
        rows.append(sum(w * model.predict_on_batch(view.image(arrays)[None])[0]
                        for w, model, view in zip(weights, models, views)))
    per_eeg = pd.DataFrame(rows, columns=list(VOTE_COLUMNS)).assign(**{ID_COLUMN: test[ID_COLUMN]})
    per_eeg = per_eeg.groupby(ID_COLUMN)[list(VOTE_COLUMNS)].mean()
    sample = pd.read_csv(competition / "sample_submission.csv")
    return per_eeg.loc[sample[ID_COLUMN]].to_numpy()


@pytest.fixture(scope="module")
def exported_expected(synthetic_competition, exported_bundle) -> np.ndarray:
    return expected_submission(synthetic_competition, exported_bundle)


@pytest.fixture(scope="module")
def by_hand_per_engine(synthetic_competition, exported_bundle, exported_expected) -> dict:
    """{engine: the ensemble by hand with that engine}, each computed once for the module."""
    cache = {"keras": exported_expected}

    def expected(engine):
        if engine not in cache:
            cache[engine] = expected_submission(synthetic_competition, exported_bundle, engine)
        return cache[engine]

    return expected


# The same engine on the same image, in the kernel's batches of 5 and by hand one image at a
# time: oneDNN's convolutions (keras, saved_model) round differently by batch shape and thread
# split (measured up to 1.6e-6 in a full suite run, 0 alone); XNNPACK (tflite) does not here.
# The images themselves are checked exactly in
# test_the_streamed_kernel_shows_each_model_exactly_the_images_of_the_features_functions.
SAME_ENGINE_TOLERANCE = {"keras": 5e-6, "saved_model": 5e-6, "tflite": 1e-6}


@pytest.mark.slow
@pytest.mark.parametrize("engine, ran, tolerance", [
    ("keras", "keras", 1e-5), ("saved_model", "saved_model", 1e-5), ("tflite", "tflite", 1e-4), ("auto", "tflite", 1e-4),
])
def test_every_engine_predicts_the_ensemble_computed_by_hand(synthetic_competition, exported_bundle, tmp_path,
                                                             exported_expected, by_hand_per_engine, engine, ran,
                                                             tolerance):
    """The bundle's exports (made under this TensorFlow) against the Keras models, by hand; and
    the streamed kernel against the same engine by hand, on the features functions' images
    (SAME_ENGINE_TOLERANCE)."""
    output = tmp_path / "submission.csv"
    report = predict_competition(synthetic_competition, exported_bundle, output, batch_size=5, strict=True,
                                 engine=engine)
    submission = pd.read_csv(output)
    sample = pd.read_csv(synthetic_competition / "sample_submission.csv")
    assert list(submission.columns) == list(sample.columns)
    assert submission[ID_COLUMN].tolist() == sample[ID_COLUMN].tolist()
    values = submission[list(VOTE_COLUMNS)].to_numpy()
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-6)
    expected = exported_expected
    assert np.ptp(expected, axis=0).max() > 1e-2  # the fixture's models answer each image differently
    np.testing.assert_allclose(values, expected, atol=tolerance)
    np.testing.assert_allclose(values, by_hand_per_engine(ran), rtol=0, atol=SAME_ENGINE_TOLERANCE[ran])
    assert report.rows == len(sample) and report.fallback_rows == []
    assert [model["engine"] for model in report.models] == [ran] * 3
    assert report.views == ["starter_log_standardize", "eeg_bipolar_stft"] and report.eegs == len(sample)
    assert report.partial_rows == []
    assert set(report.stage_seconds) == {"read csv", "load models", "find files", "stream and predict", "write"}
    stream = report.stream_seconds
    assert stream["workers"] >= 1 and stream["read (workers)"] > 0 and stream["preprocess (workers)"] > 0
    assert 0 <= stream["waited for input"] <= report.stage_seconds["stream and predict"]
    written = json.loads((tmp_path / "inference_report.json").read_text())
    assert written["rows"] == len(sample) and written["engine"] == engine and written["fallback_rows"] == []
    assert [m["name"] for m in written["models"]] == ["mobilenetv3_large_fold0", "mobilenetv3_large_fold1",
                                                      "efficientnetv2_b2_fold0"]
    assert written["versions"]["tensorflow"] and written["versions"]["python"]


@pytest.mark.slow
def test_without_exports_auto_falls_back_to_keras(synthetic_competition, freshly_initialised_bundle, tmp_path):
    report = predict_competition(synthetic_competition, freshly_initialised_bundle, tmp_path / "s.csv", strict=True)
    assert [model["engine"] for model in report.models] == ["keras"] * 3
    np.testing.assert_allclose(pd.read_csv(tmp_path / "s.csv")[list(VOTE_COLUMNS)].to_numpy(),
                               expected_submission(synthetic_competition, freshly_initialised_bundle), atol=1e-5)


def write_parquet(path, table: pa.Table):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def spectrogram_table(values: np.ndarray, column_order=None) -> pa.Table:
    """[T, 400] values as a spectrogram parquet table, `time` first (or left out)."""
    names = list(column_order or SPECTROGRAM_COLUMNS)
    columns = {name: values[:, SPECTROGRAM_COLUMNS.index(name)] for name in names}
    return pa.table({"time": np.arange(len(values), dtype=np.int16) * 2, **columns})


@pytest.fixture
def faulty_bundle(tmp_path):
    """Three entries: one the kernel predicts with (prior PRIOR), one with an unknown arch,
    one whose file the loader cannot read."""
    folder = tmp_path / "bundle"
    (folder / "weights").mkdir(parents=True)
    entries = []
    for name in ("good", "corrupt", "strange"):
        weights = folder / "weights" / f"{name}.weights.h5"
        weights.write_bytes(name.encode())
        entries.append(make_entry(weights, folder, arch="mobilenetv3_large", fold=0, name=name, class_prior=PRIOR))
    write_manifest(Manifest(models=entries), folder / "weights_manifest.json")
    raw = json.loads((folder / "weights_manifest.json").read_text())
    raw["models"][2]["arch"] = "resnet50"
    (folder / "weights_manifest.json").write_text(json.dumps(raw))
    return folder


def fake_load(entry, root):
    if entry.name == "corrupt":
        raise OSError(f"Unable to synchronously open file (truncated file: {root / entry.file})")
    return ConstantModel([0, 0, 0, 0, 1, 0])


def break_competition(source, destination) -> dict:
    """A copy of the synthetic competition with one fault per test row; {eeg_id: expected stage}."""
    data = shutil.copytree(source, destination)
    spectrograms = data / "test_spectrograms"
    test = pd.read_csv(data / "test.csv")
    sample = pd.read_csv(data / "sample_submission.csv")
    sid = test["spectrogram_id"].tolist()
    eeg = test[ID_COLUMN].tolist()
    (spectrograms / f"{sid[0]}.parquet").write_bytes(b"not parquet")  # corrupt
    (spectrograms / f"{sid[1]}.parquet").unlink()  # missing
    values = pq.read_table(spectrograms / f"{sid[2]}.parquet").to_pandas().drop(columns="time").to_numpy()
    write_parquet(spectrograms / f"{sid[2]}.parquet", spectrogram_table(np.full_like(values, np.nan)))  # all NaN
    write_parquet(spectrograms / f"{sid[3]}.parquet", spectrogram_table(values[:0]))  # 0 rows
    good = values.copy()
    (spectrograms / f"{sid[4]}.parquet").unlink()
    write_parquet(spectrograms / f"{sid[4]}.PQ", spectrogram_table(good))  # another extension and case: fine
    write_parquet(spectrograms / f"{sid[5]}.parquet",
                  spectrogram_table(good, column_order=SPECTROGRAM_COLUMNS[::-1]).drop(["time"]))  # fine
    (spectrograms / "999.parquet").write_bytes(b"not in test.csv: never read")
    lines = (data / "test.csv").read_text().splitlines()
    lines[1 + 6] = f",{eeg[6]},{test['patient_id'][6]}"  # blank spectrogram_id
    lines[1 + 7] = f"{sid[7]},,{test['patient_id'][7]}"  # blank eeg_id: its sample row has no test row
    (data / "test.csv").write_text("\n".join(lines) + "\n")
    extra = sample.iloc[:1].assign(**{ID_COLUMN: 123456789})  # an eeg_id of the sample with no test row
    pd.concat([sample, extra]).to_csv(data / "sample_submission.csv", index=False)
    expected = {eeg[0]: "convert", eeg[1]: "convert", eeg[2]: "signal", eeg[3]: "signal", eeg[6]: "test.csv",
                eeg[7]: "test.csv", 123456789: "test.csv"}
    return expected, [eeg[4], eeg[5], *eeg[8:]]


def test_each_fault_costs_only_its_own_row_or_model_and_is_reported(synthetic_competition, faulty_bundle, tmp_path):
    expected, predicted = break_competition(synthetic_competition, tmp_path / "competition")
    output = tmp_path / "out"  # an existing folder: the submission goes inside
    output.mkdir()
    report = predict_competition(tmp_path / "competition", faulty_bundle, output, load=fake_load, batch_size=3)
    sid = pd.read_csv(synthetic_competition / "test.csv")["spectrogram_id"].tolist()
    # the test files are read into memory: nothing but the submission and its report is written
    assert sorted(path.name for path in output.iterdir()) == ["inference_report.json", "submission.csv"]
    # an ensemble of Kaggle-spectrogram models never reads test_eegs/
    assert report.eegs == 0 and report.views == ["starter_log_standardize"]
    assert "999.parquet" not in (output / "inference_report.json").read_text()
    submission = pd.read_csv(output / "submission.csv").set_index(ID_COLUMN)
    assert {row.eeg_id: row.stage for row in report.fallback_rows} == expected
    np.testing.assert_allclose(submission.loc[list(expected)].to_numpy(), np.tile(PRIOR, (len(expected), 1)))
    np.testing.assert_allclose(submission.loc[predicted].to_numpy(), np.tile([0, 0, 0, 0, 1, 0], (len(predicted), 1)))
    reasons = {row.eeg_id: row.reason for row in report.fallback_rows}
    assert "not parquet" not in reasons.values()
    spectrograms = tmp_path / "competition" / "test_spectrograms"
    assert reasons[list(expected)[0]].startswith(f"{spectrograms / f'{sid[0]}.parquet'}: cannot be read as parquet")
    assert reasons[list(expected)[1]].startswith(f"no parquet file for it in {spectrograms}")
    assert [m.name for m in report.models_dropped] == ["strange", "corrupt"]
    assert "unknown arch 'resnet50'" in report.models_dropped[0].reason
    assert "corrupt.weights.h5" in report.models_dropped[1].reason and "truncated" in report.models_dropped[1].reason
    assert [m["name"] for m in report.models] == ["good"]
    assert report.fallback == PRIOR and report.fallback_source.startswith("class prior")
    assert [(r.eeg_id, r.stage) for r in report.set_aside_test_rows] == [(list(expected)[4], "test.csv"), (None, "test.csv")]
    written = json.loads((output / "inference_report.json").read_text())
    assert len(written["fallback_rows"]) == len(expected) and written["models_dropped"][1]["name"] == "corrupt"

    (output / "submission.csv").unlink()
    with pytest.raises(StrictModeError, match=r"--strict: 11 problem\(s\), no submission written") as error:
        predict_competition(tmp_path / "competition", faulty_bundle, output, load=fake_load, strict=True)
    assert "model corrupt" in str(error.value) and "test.csv line 8" in str(error.value)
    assert not (output / "submission.csv").exists() and (output / "inference_report.json").exists()


def test_an_ensemble_of_two_views_predicts_a_row_from_the_view_it_can_read(synthetic_competition, tmp_path):
    """A Kaggle-view model (says lrda) and an EEG-view model of weight 3 (says grda): a row
    whose EEG file is broken is predicted by the first alone (a partial row, a --strict
    problem), one whose spectrogram is missing by the second alone, one with neither gets
    the fallback; the rest get the weighted mean of both."""
    data = shutil.copytree(synthetic_competition, tmp_path / "competition")
    test = pd.read_csv(data / "test.csv")
    sid, eeg = test["spectrogram_id"].tolist(), test[ID_COLUMN].tolist()
    (data / "test_eegs" / f"{eeg[0]}.parquet").write_bytes(b"not parquet")
    (data / "test_spectrograms" / f"{sid[1]}.parquet").unlink()
    (data / "test_spectrograms" / f"{sid[2]}.parquet").unlink()
    (data / "test_eegs" / f"{eeg[2]}.parquet").unlink()
    folder = tmp_path / "bundle"
    folder.mkdir()
    entries = []
    for name, view, weight in (("kaggle", "starter_log_standardize", 1.0), ("eeg", "eeg_bipolar_stft", 3.0)):
        (folder / f"{name}.weights.h5").write_bytes(name.encode())
        entries.append(make_entry(folder / f"{name}.weights.h5", folder, arch="mobilenetv3_large", fold=0, name=name,
                                  class_prior=PRIOR, ensemble_weight=weight, input_view=view_record(view)))
    write_manifest(Manifest(models=entries), folder / "weights_manifest.json")
    answers = {"kaggle": [0, 0, 0, 1, 0, 0], "eeg": [0, 0, 0, 0, 1, 0]}
    report = predict_competition(data, folder, tmp_path / "submission.csv", load=lambda e, r: ConstantModel(answers[e.name]))
    submission = pd.read_csv(tmp_path / "submission.csv").set_index(ID_COLUMN)
    np.testing.assert_allclose(submission.loc[eeg[0]], answers["kaggle"])
    np.testing.assert_allclose(submission.loc[eeg[1]], answers["eeg"])
    np.testing.assert_allclose(submission.loc[eeg[2]], PRIOR)
    np.testing.assert_allclose(submission.loc[eeg[3:]].to_numpy(), np.tile([0, 0, 0, 0.25, 0.75, 0], (len(eeg) - 3, 1)))
    assert report.views == ["starter_log_standardize", "eeg_bipolar_stft"] and report.eegs == len(eeg)
    assert [(row.eeg_id, row.stage) for row in report.partial_rows] == [(eeg[0], "convert"), (eeg[1], "convert")]
    assert report.partial_rows[0].reason.startswith("input view eeg_bipolar_stft: ")
    assert report.partial_rows[1].reason.startswith("input view starter_log_standardize: ")
    assert [(row.eeg_id, row.stage) for row in report.fallback_rows] == [(eeg[2], "convert")]
    assert len(report.problems()) == 3
    assert [m["view"] for m in report.models] == ["starter_log_standardize", "eeg_bipolar_stft"]


def test_when_every_row_falls_back_the_default_still_writes_and_warns(synthetic_competition, faulty_bundle, tmp_path):
    data = shutil.copytree(synthetic_competition, tmp_path / "competition")
    for path in (data / "test_spectrograms").iterdir():
        path.write_bytes(b"broken")
    report = predict_competition(data, faulty_bundle, tmp_path / "submission.csv", load=fake_load)
    assert len(report.fallback_rows) == report.rows == 12
    assert report.warnings and "EVERY ONE of the 12 submission rows" in report.warnings[0]
    values = pd.read_csv(tmp_path / "submission.csv")[list(VOTE_COLUMNS)].to_numpy()
    np.testing.assert_allclose(values, np.tile(PRIOR, (12, 1)))


def test_a_tensorflow_older_than_the_training_one_is_a_version_warning_not_a_problem(synthetic_competition, tmp_path,
                                                                                     caplog):
    """Read from each model's manifest `tensorflow` (written by training): said in the log and
    the report, and --strict still writes the submission."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    entries = []
    trained = (("newer", "99.1.0"), ("also_newer", "99.1.0"), ("candidate", "3.0.0rc1"), ("older", "2.0.0"),
               ("unknown", None))
    for name, trained_with in trained:
        (folder / f"{name}.weights.h5").write_bytes(name.encode())
        entries.append(make_entry(folder / f"{name}.weights.h5", folder, arch="mobilenetv3_large", fold=0, name=name,
                                  class_prior=PRIOR))
        entries[-1].tensorflow = trained_with
    write_manifest(Manifest(models=entries), folder / "weights_manifest.json")
    report = predict_competition(synthetic_competition, folder, tmp_path / "submission.csv", strict=True,
                                 load=fake_load)
    runtime = report.versions["tensorflow"]
    why = ": their exports usually run on it (2.21 on 2.20 is checked by --verify); if one fails to load or predict, " \
          "this may be why"
    assert report.version_warnings == [
        f"TensorFlow {runtime} here is older than the 3.0.0rc1 that trained 1 model(s) (candidate){why}",
        f"TensorFlow {runtime} here is older than the 99.1.0 that trained 2 model(s) (newer, also_newer){why}"]
    assert report.problems() == [] and (tmp_path / "submission.csv").is_file()
    assert f"version warning: {report.version_warnings[1]}" in report.lines()
    assert report.version_warnings[1] in caplog.text
    written = json.loads((tmp_path / "inference_report.json").read_text())
    assert written["version_warnings"] == report.version_warnings


def test_no_version_warning_for_an_equal_or_unknown_tensorflow():
    from hms_offline.serving.inference_report import release, tensorflow_warnings

    models = [entry("a", 1.0)]
    models[0].tensorflow = "2.21.0"
    assert tensorflow_warnings(models, "2.21.0") == tensorflow_warnings(models, None) == []
    assert tensorflow_warnings(models, "2.22.0rc0") == [] and len(tensorflow_warnings(models, "2.20.0")) == 1
    assert release("2.21.0rc1") == (2, 21, 0) and release("nightly") == ()


@pytest.mark.parametrize("output, batch_size, message", [
    ("a_file/submission.csv", 16, "is a file, not a folder"),
    ("submission.csv", 0, "batch_size must be an integer >= 1, got 0"),
])
def test_bad_output_or_batch_size_fails_before_any_work(synthetic_competition, faulty_bundle, tmp_path,
                                                        output, batch_size, message):
    (tmp_path / "a_file").write_text("x")

    def never(entry, root):
        raise AssertionError("models loaded before the cheap checks")

    with pytest.raises(ValueError, match=message):
        predict_competition(synthetic_competition, faulty_bundle, tmp_path / output, batch_size=batch_size, load=never)


@pytest.mark.slow
def test_a_corrupt_weights_file_whose_sha256_matches_drops_only_that_model(freshly_initialised_bundle, tmp_path):
    bundle = shutil.copytree(freshly_initialised_bundle, tmp_path / "bundle")
    manifest, root = load_manifest(bundle)
    weights = root / manifest.models[1].file
    weights.write_bytes(weights.read_bytes()[:5000])  # truncated; the manifest's sha256 updated to match
    entries = [make_entry(root / e.file, root, arch=e.arch, fold=e.fold, name=e.name) for e in manifest.models]
    write_manifest(Manifest(models=entries), bundle / "weights_manifest.json")
    manifest, root = load_manifest(bundle)
    members, dropped = load_members(manifest.models, root, EngineLoader("keras"))
    assert [m.entry.name for m in members] == ["mobilenetv3_large_fold0", "efficientnetv2_b2_fold0"]
    ((name, file, reason),) = [(d.name, d.file, d.reason) for d in dropped]
    assert name == "mobilenetv3_large_fold1" and file == str(weights) and f"cannot be loaded from {weights}" in reason


def run_kernel(data_dir, bundle_dir, output, *flags):
    return run_offline(
        [sys.executable, str(KERNEL), "--data-dir", str(data_dir), "--bundle-dir", str(bundle_dir),
         "--output", str(output), *flags],
        timeout=600,
    )


@pytest.mark.slow
def test_kernel_dry_run_offline_on_synthetic_data(synthetic_competition, exported_bundle, exported_expected, tmp_path):
    output = tmp_path / "submission.csv"
    result = run_kernel(synthetic_competition, exported_bundle, output, "--workers", "1", "--strict")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "submission rows: 12" in result.stdout and "models: 3" in result.stdout
    assert "engine: auto (tflite: 3)" in result.stdout and "(the image was left as it was)" in result.stdout
    assert "fallback rows: 0 of 12" in result.stdout
    assert json.loads((tmp_path / "inference_report.json").read_text())["fallback_rows"] == []
    np.testing.assert_allclose(pd.read_csv(output)[list(VOTE_COLUMNS)].to_numpy(),
                               exported_expected, atol=1e-4)
    assert np.isfinite(score_files(synthetic_competition / "test_solution.csv", output))


@pytest.mark.slow
def test_kernel_dry_run_offline_on_the_real_sample(hms_sample, exported_bundle, tmp_path):
    output = tmp_path / "submission.csv"
    result = run_kernel(hms_sample, exported_bundle, output, "--strict")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    submission = pd.read_csv(output)
    sample = pd.read_csv(hms_sample / "sample_submission.csv")
    assert list(submission.columns) == list(sample.columns)
    assert submission[ID_COLUMN].tolist() == sample[ID_COLUMN].tolist() == [3911565283]
    report = json.loads((tmp_path / "inference_report.json").read_text())
    assert report["fallback_rows"] == [] and report["models_dropped"] == []
    values = submission[list(VOTE_COLUMNS)].to_numpy()
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-6)
    assert np.abs(values - np.array(report["fallback"])).max() > 1e-3  # predicted, not the fallback


def test_kernel_refuses_a_bundle_without_models(synthetic_competition, tmp_path):
    write_manifest(Manifest(models=[]), tmp_path / "bundle" / "weights_manifest.json")
    result = run_kernel(synthetic_competition, tmp_path / "bundle", tmp_path / "submission.csv")
    assert result.returncode != 0
    assert "lists no models" in result.stdout + result.stderr
    assert not (tmp_path / "submission.csv").exists()


def test_predict_command_reports_a_bad_bundle_clearly(synthetic_competition, tmp_path):
    import subprocess

    write_manifest(Manifest(models=[]), tmp_path / "weights_manifest.json")
    result = subprocess.run(
        [sys.executable, "-m", "hms_offline", "predict", "--data-dir", str(synthetic_competition),
         "--bundle-dir", str(tmp_path), "--output", str(tmp_path / "submission.csv")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "lists no models" in result.stderr
    assert not (tmp_path / "submission.csv").exists()


class ProjectionModel:
    """A model whose answer depends on every pixel: softmax of a fixed random projection of the image."""

    def __init__(self, seed):
        from hms_offline.constants import IMAGE_CHANNELS, IMAGE_HEIGHT, WINDOW_COLUMNS

        size = IMAGE_HEIGHT * WINDOW_COLUMNS * IMAGE_CHANNELS
        self.projection = np.random.default_rng(seed).normal(0, 1 / np.sqrt(size), (size, len(VOTE_COLUMNS)))

    def predict_on_batch(self, images):
        logits = np.asarray(images, dtype=np.float64).reshape(len(images), -1) @ self.projection
        odds = np.exp(logits - logits.max(axis=1, keepdims=True))
        return odds / odds.sum(axis=1, keepdims=True)


def test_the_streamed_kernel_shows_each_model_exactly_the_images_of_the_features_functions(synthetic_competition,
                                                                                           tmp_path):
    """The three views in one ensemble, a model each: the submission equals the ensemble computed
    by hand from images made by the features functions on each row's parquet files (1e-6)."""
    from hms_offline.convert import read_eeg
    from hms_offline.features.views import VIEWS

    folder = tmp_path / "bundle"
    folder.mkdir()
    entries = []
    for seed, view in enumerate(VIEWS):
        (folder / f"{view}.weights.h5").write_bytes(view.encode())
        entries.append(make_entry(folder / f"{view}.weights.h5", folder, arch="mobilenetv3_large", fold=0, name=view,
                                  class_prior=PRIOR, ensemble_weight=1.0 + seed, input_view=view_record(view)))
    write_manifest(Manifest(models=entries), folder / "weights_manifest.json")
    models = {view: ProjectionModel(seed) for seed, view in enumerate(VIEWS)}
    report = predict_competition(synthetic_competition, folder, tmp_path / "submission.csv", batch_size=5,
                                 workers=2, strict=True, load=lambda entry, root: models[entry.name])
    test = pd.read_csv(synthetic_competition / "test.csv")
    weights = np.array([1.0, 2.0, 3.0]) / 6.0
    rows = []
    for spectrogram_id, eeg_id in zip(test["spectrogram_id"], test[ID_COLUMN]):
        arrays = {"spectrogram": read_spectrogram(synthetic_competition / "test_spectrograms" / f"{spectrogram_id}.parquet"),
                  "eeg": read_eeg(synthetic_competition / "test_eegs" / f"{eeg_id}.parquet")}
        rows.append(sum(w * models[name].predict_on_batch(view.image(arrays)[None])[0]
                        for w, (name, view) in zip(weights, VIEWS.items())))
    expected = pd.DataFrame(rows, columns=list(VOTE_COLUMNS)).assign(**{ID_COLUMN: test[ID_COLUMN]})
    expected = expected.groupby(ID_COLUMN)[list(VOTE_COLUMNS)].mean()
    submission = pd.read_csv(tmp_path / "submission.csv").set_index(ID_COLUMN)
    assert np.ptp(expected.to_numpy(), axis=0).max() > 1e-3  # the models answer each image differently
    np.testing.assert_allclose(submission.loc[expected.index].to_numpy(), expected.to_numpy(), rtol=0, atol=1e-6)
    assert report.views == list(VIEWS) and report.stream_seconds["workers"] == 2


DEADLY_ID = "666"


def read_or_die(path, name):
    """The kernel's reader, except that the process dies on DEADLY_ID's file, as if a corrupt
    file crashed pyarrow (or the OOM killer took the worker)."""
    import os
    from pathlib import Path

    from hms_offline.serving.samples import read_recording

    if Path(path).stem == DEADLY_ID:
        os._exit(1)
    return read_recording(path, name)


@pytest.mark.slow  # kills worker processes
def test_a_file_that_kills_its_reading_worker_costs_only_its_samples(synthetic_competition, tmp_path):
    """Among 12 samples in batches of 3 over 2 workers: the spectrogram whose read kills the worker
    gets the fallback (stage convert, the worker's death and the file named); every other
    sample, those of its batch and of the other batches in flight included, is predicted as
    by hand, and this process survives."""
    from hms_offline.serving.samples import sources_of
    from hms_offline.serving.stream import WORKER_DIED, StreamStats, read_ahead

    data = shutil.copytree(synthetic_competition, tmp_path / "competition")
    test = pd.read_csv(data / "test.csv")
    spectrograms = data / "test_spectrograms"
    sid = test["spectrogram_id"].tolist()
    (spectrograms / f"{sid[4]}.parquet").rename(spectrograms / f"{DEADLY_ID}.parquet")
    test.loc[4, "spectrogram_id"] = int(DEADLY_ID)
    samples = test[["spectrogram_id", ID_COLUMN]]
    ensemble = Ensemble([member("a", 1.0, ProjectionModel(0))])
    files, known = find_test_files(data, samples, sources_of(ensemble.views))
    stats = StreamStats(workers=2)
    work = batches(samples, ensemble.views, files, known, batch_size=3)
    probabilities, failed, partial = predict_samples(ensemble, read_ahead(work, 2, stats, read=read_or_die), samples)
    ((position, row),) = failed.items()
    assert position == 4 and row.stage == "convert" and partial == []
    assert row.reason == f"{spectrograms / f'{DEADLY_ID}.parquet'}: {WORKER_DIED} while reading it"
    assert stats.restarts == 1
    by_hand = prepare(batches(samples, ensemble.views, files, known, batch_size=len(samples))[0])
    indexes, images = by_hand.images["starter_log_standardize"]
    positions = np.array([by_hand.positions[i] for i in indexes])  # read here by the plain reader: 4 too
    assert sorted(positions) == list(range(len(samples)))
    np.testing.assert_allclose(probabilities[positions[positions != 4]], ProjectionModel(0).predict_on_batch(images)[positions != 4],
                               rtol=0, atol=1e-12)
