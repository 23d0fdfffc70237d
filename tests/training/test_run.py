"""Training end to end on synthetic competition data (`hms_offline.synthetic`).

Budget, 2 CPU cores: about 5 minutes. MobileNetV3 Large trains ~6 images/s here and spends
~30 s tracing its first step, so two module-scoped runs of one small recipe do most of the
work, fold 0 of 2, 4 epochs x 8 steps x batch 8, on the same folds: on the Kaggle spectrogram
(in-process), and on the EEG view in two stages, started by the command line in a subprocess
(network blocked), killed once its second stage has committed an epoch, then resumed
in-process. (EfficientNetV2 B2 trains in tests/training/test_study.py; the stacked view's
training input is checked against the kernel's below, and both views' images in
tests/features.)
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import OFFLINE_GUARD, perturb_head
from hms_offline.cli import build_parser, main
from hms_offline.constants import IMAGE_SHAPE
from hms_offline.models.manifest import read_manifest, verify_files
from hms_offline.training.config import TrainConfig, read_config

pytestmark = pytest.mark.slow

SYNTHETIC = dict(n_train=240, n_test=24, seed=3)  # ~110 EEGs of ~45 patients; 24 for the kernel
MOBILENET_FLAGS = [
    "--n-splits", "2", "--folds", "0", "--epochs", "4", "--steps-per-epoch", "8", "--batch-size", "8",
    "--warmup-epochs", "1", "--peak-learning-rate", "2e-3", "--progress", "epoch",
    # MobileNetV3's BatchNormalization momentum 0.999 leaves its moving statistics at their
    # initial values for thousands of steps; 32 steps need a short memory.
    "--bn-momentum", "0.5",
]
RUN_FILES = {"config.json", "folds.csv", "train.log", "oof.csv", "cv.json", "loss_curves.png", "weights_manifest.json"}


def fold_files(arch: str, fold: int) -> set[str]:
    return {f"{arch}_fold{fold}.weights.h5", "config.json", "history.csv", "oof.csv", "summary.json"}


def train_flags(competition: Path, out: Path, work: Path, flags: list[str]) -> list[str]:
    return ["train", "--data-dir", str(competition), "--out", str(out), "--work-dir", str(work), *flags]


def config_of(flags: list[str]) -> TrainConfig:
    return TrainConfig.from_arguments(build_parser().parse_args(flags))


def train_until_killed(flags: list[str], state_path: Path, log_path: Path, timeout: float = 300) -> dict:
    """Run `python -m hms_offline train` with the network blocked; SIGKILL it once its
    checkpoint has committed an epoch. Returns the checkpoint state it was killed with."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(OFFLINE_GUARD), os.environ.get("PYTHONPATH")])))
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "hms_offline", *flags], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        try:
            while process.poll() is None and time.monotonic() < deadline:
                if state_path.is_file() and json.loads(state_path.read_text())["epoch"] >= 1:
                    process.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.2)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, log_path.read_text()[-12000:]
    return json.loads(state_path.read_text())


@pytest.fixture(scope="module")
def competition(tmp_path_factory) -> Path:
    from hms_offline.synthetic.write import write_competition

    return write_competition(tmp_path_factory.mktemp("train_data") / "competition", **SYNTHETIC)


@pytest.fixture(scope="module")
def mobilenet_run(competition, tmp_path_factory):
    from hms_offline.training.run import train

    root = tmp_path_factory.mktemp("runs")
    out, work = root / "mnv3", root / "work"
    flags = train_flags(competition, out, work, MOBILENET_FLAGS)
    return SimpleNamespace(dir=out, work=work, flags=flags, summary=train(config_of(flags)))


@pytest.fixture(scope="module")
def eeg_run(competition, mobilenet_run):
    """The MobileNetV3 run's recipe and folds on the EEG view, in two stages (its first is the
    same recipe): started by the command line, killed once the second stage has committed
    an epoch, resumed in-process."""
    from hms_offline.training.run import train

    out = mobilenet_run.dir.parent / "mnv3_eeg"
    flags = [*train_flags(competition, out, mobilenet_run.work, MOBILENET_FLAGS), "--input", "eeg",
             "--stage2-min-votes", "10", "--stage2-epochs", "2", "--stage2-learning-rate", "5e-4",
             "--folds-file", str(mobilenet_run.dir / "folds.csv")]
    killed_state = train_until_killed(flags, out / "fold0" / "checkpoint" / "state.json", out.parent / "eeg.log",
                                      timeout=600)
    return SimpleNamespace(dir=out, flags=flags, summary=train(config_of(flags)), killed_state=killed_state)


def assert_run_complete(run_dir: Path, arch: str, folds: list[int], two_stages: bool = False) -> None:
    assert RUN_FILES <= {path.name for path in run_dir.iterdir()}
    for fold in folds:
        expected = fold_files(arch, fold) | ({"stage1"} if two_stages else set())
        assert {path.name for path in (run_dir / f"fold{fold}").iterdir()} == expected
    manifest = read_manifest(run_dir / "weights_manifest.json")
    verify_files(manifest, run_dir)  # every sha256 matches
    assert [(m.arch, m.fold, m.file, m.ensemble_weight) for m in manifest.models] == [
        (arch, fold, f"fold{fold}/{arch}_fold{fold}.weights.h5", 1.0) for fold in folds
    ]
    cv = json.loads((run_dir / "cv.json").read_text())
    assert [m.cv_kl for m in manifest.models] == [scores["kl"] for scores in cv["per_fold"]]
    assert (run_dir / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mobilenet_run_writes_every_output(mobilenet_run):
    run_dir = mobilenet_run.dir
    assert_run_complete(run_dir, "mobilenetv3_large", [0])
    fold_config = read_config(run_dir / "fold0" / "config.json")
    assert (fold_config.folds, fold_config.steps_per_epoch, fold_config.peak_learning_rate) == ([0], 8, 2e-3)
    assert fold_config.arch == "mobilenetv3_large" and fold_config.include_rescaling
    history = pd.read_csv(run_dir / "fold0" / "history.csv")
    assert list(history.columns) == ["epoch", "loss", "val_loss", "learning_rate", "learning_rate_end", "seconds",
                                     "train_samples_per_second"]
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    assert history["learning_rate_end"].iloc[-1] == pytest.approx(1e-5)  # the schedule's floor, at the last step
    oof = pd.read_csv(run_dir / "oof.csv")
    summary = json.loads((run_dir / "fold0" / "summary.json").read_text())
    assert len(oof) == summary["validation_rows"] == oof["eeg_id"].nunique()  # one window per EEG
    assert {"eeg_id", "label_id", "fold", "true_seizure_vote", "pred_other_vote"} <= set(oof.columns)
    np.testing.assert_allclose(oof.filter(like="pred_").sum(axis=1), 1, atol=1e-9)
    assert summary["best_val_loss"] == history["val_loss"].min()
    assert summary["parameters"] == 3_002_118 and summary["trainable_parameters"] == 2_977_718


def test_short_run_learns_well_below_the_class_prior(mobilenet_run):
    # 32 steps on ~55 training EEGs, ~60 validation EEGs. Since the synthetic GPD and GRDA
    # share their spectrogram signature (GENERATOR_VERSION 2), the Kaggle view cannot tell
    # them apart, and this run has reached 0.75, 0.77 and 0.83 of the prior's KL (the last two
    # on one commit: 32 steps of batch 8 from random weights are chaotic, and images equal
    # within 1e-6 take another path). A model that learned nothing sits at 1.0 or above
    # (MobileNetV3 with its own BatchNormalization momentum, 0.999, lands exactly on the prior
    # after 24 steps).
    cv = mobilenet_run.summary
    assert cv["prior_kl"] > 1.0
    assert cv["cv_kl"] < 0.9 * cv["prior_kl"], cv


def pair_separation(oof: pd.DataFrame, pair=("gpd", "grda")) -> float:
    """On the out-of-fold rows whose votes are mostly one class of `pair`: the mean share of
    the pair's predicted probability the model gives that class (0.5: it cannot tell them apart)."""
    true = oof[[f"true_{name}_vote" for name in pair]].to_numpy()
    predicted = oof[[f"pred_{name}_vote" for name in pair]].to_numpy()
    rows = true.max(axis=1) >= 0.5
    right = predicted[rows, true[rows].argmax(axis=1)]
    return float(np.mean(right / predicted[rows].sum(axis=1)))


def test_the_eeg_view_learns_what_the_kaggle_view_cannot(mobilenet_run, eeg_run):
    """Synthetic GPD and GRDA differ only in the raw EEG's sub-second structure
    (hms_offline.synthetic.signatures.EEG_ONLY_PAIR): on their out-of-fold rows the EEG view
    (its first stage: the same recipe as the Kaggle run) gives the right one of the two a
    clearly larger share than the Kaggle view, which cannot do better than chance."""
    from hms_offline.synthetic.signatures import EEG_ONLY_PAIR

    oof = {"kaggle": pd.read_csv(mobilenet_run.dir / "oof.csv"),
           "eeg": pd.read_csv(eeg_run.dir / "fold0" / "stage1" / "oof.csv")}
    separation = {name: pair_separation(frame, EEG_ONLY_PAIR) for name, frame in oof.items()}
    cv = {"kaggle": mobilenet_run.summary["cv_kl"], "eeg stage 1": eeg_run.summary["stages"][0]["cv_kl"],
          "eeg stage 2": eeg_run.summary["cv_kl"]}
    print("pair separation", separation, "CV KL", cv)
    assert separation["kaggle"] < 0.6, separation
    assert separation["eeg"] > separation["kaggle"] + 0.1, separation


def test_the_two_stage_run_resumed_its_second_stage_and_scores_both(eeg_run):
    run_dir = eeg_run.dir
    assert_run_complete(run_dir, "mobilenetv3_large", [0], two_stages=True)
    first = run_dir / "fold0" / "stage1"
    assert {path.name for path in first.iterdir()} == fold_files("mobilenetv3_large", 0)
    first_summary = json.loads((first / "summary.json").read_text())
    second_summary = json.loads((run_dir / "fold0" / "summary.json").read_text())
    assert (first_summary["stage"], second_summary["stage"], second_summary["min_votes"]) == (1, 2, 10)
    assert 0 < second_summary["train_rows"] < first_summary["train_rows"]
    # both stages scored on the same validation rows
    first_oof, second_oof = pd.read_csv(first / "oof.csv"), pd.read_csv(run_dir / "fold0" / "oof.csv")
    pd.testing.assert_frame_equal(first_oof.filter(regex="^(eeg_id|label_id|true_)"),
                                  second_oof.filter(regex="^(eeg_id|label_id|true_)"))
    cv = eeg_run.summary
    assert [stage["stage"] for stage in cv["stages"]] == [1, 2] and cv["input"] == "eeg"
    assert cv["stages"][1]["cv_kl"] == cv["cv_kl"] != cv["stages"][0]["cv_kl"]
    assert pd.read_csv(first / "history.csv")["epoch"].tolist() == [1, 2, 3, 4]
    second = pd.read_csv(run_dir / "fold0" / "history.csv")
    assert second["epoch"].tolist() == [1, 2]
    assert second["learning_rate"].iloc[0] == pytest.approx(5e-4)  # stage 2's own schedule, no warm-up
    assert second["learning_rate_end"].iloc[-1] == pytest.approx(1e-5)  # cosine from 5e-4 to the floor
    assert "fold 0 stage 2 starts from" in (run_dir / "train.log").read_text()
    manifest = read_manifest(run_dir / "weights_manifest.json")
    assert manifest.models[0].input["name"] == "eeg_bipolar_stft"
    assert manifest.models[0].file == "fold0/mobilenetv3_large_fold0.weights.h5"  # the second stage's


def test_ensemble_fits_weights_over_the_two_views_and_the_kernel_predicts_with_it(
        mobilenet_run, eeg_run, competition, tmp_path):
    """`ensemble` over the Kaggle-view and EEG-view runs (same folds), then the kernel's
    inference (`predict --strict`) on the fitted manifest as `ensemble` wrote it: every view
    computed from the test files, every row predicted (none on the fallback), the submission's
    KL well below the prior's. (The kernel script on a built bundle holding an EEG-view model,
    offline on the Kaggle-shaped base: tests/bundle/test_verify.py.)"""
    from hms_offline.constants import VOTE_COLUMNS
    from hms_offline.metric import score_files

    fitted = tmp_path / "ensemble"
    assert main(["ensemble", str(mobilenet_run.dir), str(eeg_run.dir), "--out", str(fitted)]) == 0
    summary = json.loads((fitted / "ensemble.json").read_text())
    manifest = read_manifest(fitted / "weights_manifest.json")
    assert sum(entry.ensemble_weight for entry in manifest.models) == pytest.approx(1.0, abs=1e-12)
    assert len({entry.name for entry in manifest.models}) == 2
    assert [entry.input["name"] for entry in manifest.models] == ["starter_log_standardize", "eeg_bipolar_stft"]
    assert summary["fitted_kl"] <= summary["equal_weights_kl"] + 1e-12

    output = tmp_path / "kernel" / "submission.csv"
    output.parent.mkdir()
    assert main(["predict", "--data-dir", str(competition), "--bundle-dir", str(fitted), "--output", str(output),
                 "--strict"]) == 0
    report = json.loads((output.parent / "inference_report.json").read_text())
    assert report["views"] == ["starter_log_standardize", "eeg_bipolar_stft"]
    assert report["eegs"] == report["spectrograms"] == 24 and report["partial_rows"] == []
    weights = np.array([entry.ensemble_weight for entry in manifest.models])
    priors = np.array([json.loads((run.dir / "fold0" / "summary.json").read_text())["prior"]
                       for run in (mobilenet_run, eeg_run)])
    fold_prior = (weights[:, None] * priors).sum(axis=0) / weights.sum()
    assert report["fallback_rows"] == [] and report["fallback"] == pytest.approx(fold_prior / fold_prior.sum())
    prior_submission = pd.read_csv(output).assign(**dict(zip(VOTE_COLUMNS, fold_prior)))
    prior_submission.to_csv(tmp_path / "prior.csv", index=False)
    kernel_kl = score_files(competition / "test_solution.csv", output)
    prior_kl = score_files(competition / "test_solution.csv", tmp_path / "prior.csv")
    assert kernel_kl < 0.8 * prior_kl, (kernel_kl, prior_kl)


def test_saved_weights_reproduce_the_out_of_fold_predictions(mobilenet_run):
    import h5py

    from hms_offline.models.registry import build_model
    from hms_offline.training.data import WindowTable

    weights = mobilenet_run.dir / "fold0" / "mobilenetv3_large_fold0.weights.h5"
    with h5py.File(weights) as handle:
        assert "optimizer" not in handle  # shipped weights carry no optimizer state
    oof = pd.read_csv(mobilenet_run.dir / "oof.csv").head(6)
    labels = pd.read_csv(read_config(mobilenet_run.dir / "config.json").data_dir / "train.csv").set_index("label_id")
    rows = labels.loc[oof["label_id"]].reset_index()
    table = WindowTable({"spectrogram": mobilenet_run.work / "train_spectrograms"}, rows, np.zeros((len(rows), 6)),
                        "starter_log_standardize")
    images = np.stack([table.image(i) for i in range(len(rows))])
    model = build_model("mobilenetv3_large")
    model.load_weights(str(weights))
    np.testing.assert_allclose(model.predict_on_batch(images), oof.filter(like="pred_"), atol=1e-5)


def test_interrupted_run_resumes_from_its_last_epoch(eeg_run):
    """Killed after the first of its second stage's 2 epochs: that epoch is kept as it was, the
    optimizer step restored, the first stage not trained again."""
    killed = eeg_run.killed_state
    completed = killed["epoch"]
    assert completed == 1
    history = pd.read_csv(eeg_run.dir / "fold0" / "history.csv")
    before = pd.DataFrame(killed["history"])
    pd.testing.assert_frame_equal(history.iloc[:completed], before, check_dtype=False)
    log = (eeg_run.dir / "train.log").read_text()
    assert f"fold 0: resuming after epoch {completed} of 2 (optimizer step {8 * completed})" in log
    assert log.count("fold 0 epoch 1/2") == 1 and log.count("fold 0 stage 1 finished") == 1
    assert "fold 0 stage 1 is already finished" in log
    assert not (eeg_run.dir / "fold0" / "checkpoint").exists()
    assert not (eeg_run.dir / "fold0" / "stage1" / "checkpoint").exists()


def test_finished_folds_are_not_trained_again(mobilenet_run):
    from hms_offline.training.run import train

    weights = mobilenet_run.dir / "fold0" / "mobilenetv3_large_fold0.weights.h5"
    stamp = weights.stat().st_mtime_ns
    summary = train(config_of(mobilenet_run.flags))
    assert weights.stat().st_mtime_ns == stamp
    assert summary["cv_kl"] == pytest.approx(mobilenet_run.summary["cv_kl"])
    assert "fold 0 is already finished" in (mobilenet_run.dir / "train.log").read_text()


def test_a_run_folder_refuses_other_settings(mobilenet_run):
    from hms_offline.training.run import train

    flags = [*mobilenet_run.flags, "--epochs", "5", "--folds", "1"]
    with pytest.raises(ValueError, match="holds a run with other settings \\(epochs: 4 there, 5 now\\)"):
        train(config_of(flags))


def test_no_patient_is_in_two_folds(mobilenet_run, competition):
    folds = pd.read_csv(mobilenet_run.dir / "folds.csv")
    assert folds.groupby("patient_id")["fold"].nunique().max() == 1
    labels = pd.read_csv(competition / "train.csv").merge(folds[["eeg_id", "fold"]], on="eeg_id")
    oof = pd.read_csv(mobilenet_run.dir / "oof.csv")
    training_patients = set(labels.loc[labels["fold"] != 0, "patient_id"])
    assert oof["patient_id"].nunique() > 10
    assert not training_patients & set(oof["patient_id"])


def test_report_compares_runs_side_by_side(mobilenet_run, eeg_run, tmp_path):
    """(Both architectures side by side: tests/training/test_study.py, which trains EfficientNetV2 B2.)"""
    out = tmp_path / "report"
    runs = [str(mobilenet_run.dir), str(eeg_run.dir)]
    assert main(["report", *runs, "--out", str(out), "--speed-images", "4", "--speed-batch-size", "2"]) == 0
    table = pd.read_csv(out / "comparison.csv")
    assert table["input"].tolist() == ["kaggle", "eeg"]
    assert table["parameters"].tolist() == [3_002_118] * 2 and table["trainable_parameters"].tolist() == [2_977_718] * 2
    assert table["cv_kl"].tolist() == pytest.approx([run.summary["cv_kl"] for run in (mobilenet_run, eeg_run)])
    assert table["stage1_cv_kl"].isna().tolist() == [True, False]
    assert table["stage1_cv_kl"].iloc[1] == pytest.approx(eeg_run.summary["stages"][0]["cv_kl"])
    assert (table["inference_images_per_s"] > 0).all() and (table["train_samples_per_s"] > 0).all()
    markdown = (out / "comparison.md").read_text()
    assert markdown.startswith("| run | arch | input | parameters |") and "3,002,118" in markdown
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("choice", ["kaggle", "eeg", "both"])
def test_training_input_equals_what_inference_computes(competition, tmp_path, choice):
    """A labelled window cut by the loader == the same recordings given to the kernel as a test
    sample, read from parquet by the kernel's `prepare` (what its reading workers run): the 10
    minutes of spectrogram as a test spectrogram (Kaggle's format: 300 rows, int16 `time`), the
    50 s of EEG as a test EEG file (10,000 rows), for every input view."""
    import pyarrow.parquet as pq

    from hms_offline.constants import EEG_SAMPLE_RATE_HZ
    from hms_offline.features.sources import SOURCES
    from hms_offline.features.spectrogram import window_start
    from hms_offline.features.views import INPUT_CHOICES
    from hms_offline.serving.samples import batches, find_test_files, prepare, sources_of
    from hms_offline.training.data import prepare_recordings
    from hms_offline.training.fold import validation_dataset
    from hms_offline.training.labels import read_train_labels, vote_fractions

    labels = read_train_labels(competition / "train.csv")
    rows = labels[(labels["spectrogram_label_offset_seconds"] > 0) & (labels["eeg_label_offset_seconds"] > 0)]
    rows = rows.head(3).reset_index(drop=True)
    sources = ("spectrogram", "eeg")
    folders = prepare_recordings(competition, rows, sources, work_dir=tmp_path / "work")
    config = TrainConfig(data_dir=competition, out=tmp_path, batch_size=3, input=choice).resolved()
    images, targets = next(iter(validation_dataset(config, folders, rows)))
    np.testing.assert_array_equal(targets.numpy(), vote_fractions(rows))

    test = {name: tmp_path / "competition" / SOURCES[name].test_folder for name in sources}
    for folder in test.values():
        folder.mkdir(parents=True)
    for row in rows.itertuples():
        table = pq.read_table(competition / "train_spectrograms" / f"{row.spectrogram_id}.parquet").to_pandas()
        start = window_start(len(table), row.spectrogram_label_offset_seconds)
        window = table.iloc[start:start + 300].astype({"time": "int16"})
        window.to_parquet(test["spectrogram"] / f"{row.label_id}.parquet", index=False)
        eeg = pq.read_table(competition / "train_eegs" / f"{row.eeg_id}.parquet").to_pandas()
        start = int(round(row.eeg_label_offset_seconds * EEG_SAMPLE_RATE_HZ))
        eeg.iloc[start:start + 10_000].to_parquet(test["eeg"] / f"{row.label_id}.parquet", index=False)
    views = [INPUT_CHOICES[choice]]
    samples = pd.DataFrame({"spectrogram_id": rows["label_id"], "eeg_id": rows["label_id"]})
    files, known = find_test_files(tmp_path / "competition", samples, sources_of(views))
    (batch,) = batches(samples, views, files, known, batch_size=len(rows))
    shown = prepare(batch)  # what the kernel's reading workers return
    assert shown.missing == {} and shown.problems == {}
    indexes, kernel_images = shown.images[views[0]]
    kernel_images = kernel_images[np.argsort([shown.positions[i] for i in indexes])]
    assert kernel_images.shape == (3, *IMAGE_SHAPE)
    np.testing.assert_array_equal(images.numpy(), kernel_images)


def test_training_batches_are_the_sampled_windows(competition, tmp_path):
    from hms_offline.training.data import WindowTable, prepare_recordings
    from hms_offline.training.fold import split_fold, training_dataset
    from hms_offline.training.labels import read_train_labels

    labels = read_train_labels(competition / "train.csv").head(40).assign(fold=lambda f: f.index % 2)
    folder = prepare_recordings(competition, labels, ["spectrogram"], work_dir=tmp_path / "work")
    config = TrainConfig(data_dir=competition, out=tmp_path, n_splits=2, batch_size=4, steps_per_epoch=1,
                         epochs=2, warmup_epochs=0, mixup_p=0, time_mask_p=0, freq_mask_p=0).resolved()
    data = split_fold(config, labels, fold=0)
    positions = data.sampler.epoch_rows(1)[:4]
    images, _ = next(iter(training_dataset(config, folder, data, first_epoch=1)))
    table = WindowTable(folder, data.train_rows, np.zeros((len(data.train_rows), 6)), config.view)
    expected = [table.image(i) for i in positions]
    np.testing.assert_array_equal(images.numpy(), np.stack(expected))


def test_augmentations_change_training_batches_only(competition, tmp_path):
    from hms_offline.training.data import prepare_recordings
    from hms_offline.training.fold import split_fold, training_dataset
    from hms_offline.training.labels import read_train_labels

    labels = read_train_labels(competition / "train.csv").head(40).assign(fold=lambda f: f.index % 2)
    folder = prepare_recordings(competition, labels, ["spectrogram"], work_dir=tmp_path / "work")
    plain = dict(data_dir=competition, out=tmp_path, n_splits=2, batch_size=4, steps_per_epoch=1, epochs=2, warmup_epochs=0)
    augmented = TrainConfig(**plain, mixup_p=1, time_mask_p=1, freq_mask_p=1).resolved()
    untouched = TrainConfig(**plain, mixup_p=0, time_mask_p=0, freq_mask_p=0).resolved()
    data = split_fold(augmented, labels, fold=0)
    images, targets = next(iter(training_dataset(augmented, folder, data, first_epoch=0)))
    clean_images, clean_targets = next(iter(training_dataset(untouched, folder, data, first_epoch=0)))
    assert (images.numpy() == 0).mean() > (clean_images.numpy() == 0).mean() + 0.02  # cutouts
    assert not np.allclose(targets.numpy(), clean_targets.numpy())  # mixed labels
    np.testing.assert_allclose(targets.numpy().sum(axis=1), 1, rtol=1e-5)

    from hms_offline.features.views import mirror_left_right

    mirrored = TrainConfig(**plain, mixup_p=0, time_mask_p=0, freq_mask_p=0, mirror_p=1).resolved()
    mirror_images, mirror_targets = next(iter(training_dataset(mirrored, folder, data, first_epoch=0)))
    np.testing.assert_array_equal(mirror_images.numpy(), np.stack([mirror_left_right(i) for i in clean_images.numpy()]))
    np.testing.assert_array_equal(mirror_targets.numpy(), clean_targets.numpy())  # no class says which side


def copy_competition(competition: Path, destination: Path) -> Path:
    destination.mkdir()
    shutil.copy(competition / "train.csv", destination / "train.csv")
    (destination / "train_spectrograms").symlink_to(competition / "train_spectrograms")
    return destination


def test_a_missing_train_csv_column_is_named(competition, tmp_path, caplog):
    data = copy_competition(competition, tmp_path / "comp")
    pd.read_csv(data / "train.csv").drop(columns="spectrogram_label_offset_seconds").to_csv(data / "train.csv", index=False)
    code = main(["train", "--data-dir", str(data), "--out", str(tmp_path / "run"), "--work-dir", str(tmp_path / "w")])
    assert code == 2
    assert "missing column(s) 'spectrogram_label_offset_seconds'" in caplog.text


def test_a_missing_spectrogram_file_is_named(competition, tmp_path):
    from hms_offline.training.run import train

    data = tmp_path / "comp"
    data.mkdir()
    shutil.copy(competition / "train.csv", data / "train.csv")
    shutil.copytree(competition / "train_spectrograms", data / "train_spectrograms")
    missing = pd.read_csv(data / "train.csv")["spectrogram_id"].iloc[0]
    (data / "train_spectrograms" / f"{missing}.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=f"1 of .* spectrogram files missing: .*{missing}.parquet"):
        train(TrainConfig(data_dir=data, out=tmp_path / "run", work_dir=tmp_path / "w"))
    assert not (tmp_path / "run" / "folds.csv").exists() and not (tmp_path / "run" / "config.json").exists()


def test_pretrained_backbone_comes_from_a_local_folder_without_network(tmp_path, monkeypatch):
    import socket

    from keras_cv.src.utils.preset_utils import save_to_preset

    from hms_offline.models.registry import build_backbone, build_model

    preset = tmp_path / "efficientnet-like-kaggle-model"
    source = build_backbone("mobilenetv3_large", input_shape=(224, 224, 3))
    perturb_head(source, seed=1)  # any weights other than a fresh initialisation
    save_to_preset(source, str(preset))

    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    model = build_model("mobilenetv3_large", pretrained=preset)
    assert tuple(model.input_shape[1:]) == IMAGE_SHAPE
    for loaded, saved in zip(model.backbone.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(loaded, saved)
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_model("mobilenetv3_large", pretrained=tmp_path / "nowhere")


def test_a_pretrained_backbone_of_another_shape_is_refused(tmp_path):
    import keras_cv
    from keras_cv.src.utils.preset_utils import save_to_preset

    from hms_offline.models.registry import build_model

    small = keras_cv.models.MobileNetV3Backbone(
        stackwise_expansion=[1], stackwise_filters=[16], stackwise_kernel_size=[3], stackwise_stride=[2],
        stackwise_se_ratio=[None], stackwise_activation=["relu"], input_shape=(32, 32, 3), include_rescaling=True,
    )
    save_to_preset(small, str(tmp_path / "small"))
    with pytest.raises(ValueError, match="is not mobilenetv3_large: its stackwise_expansion, stackwise_filters"):
        build_model("mobilenetv3_large", pretrained=tmp_path / "small")


def test_strategy_and_precision_on_this_machine():
    from hms_offline.training.strategy import precision_policy, select_strategy

    import tensorflow as tf

    strategy, device = select_strategy()
    gpus = len(tf.config.list_logical_devices("GPU"))
    expected = {0: "CPU", 1: "GPU"}.get(gpus, f"{gpus} GPUs")  # what this machine has, not what CI has
    assert device == expected and strategy.num_replicas_in_sync == max(1, gpus)
    assert precision_policy("auto", "CPU") == "float32"
    assert precision_policy("auto", "2 GPUs") == "mixed_float16"
    assert precision_policy("auto", "TPU") == "mixed_bfloat16"
    assert precision_policy("off", "GPU") == "float32"


@pytest.mark.parametrize("arch, expected_max", [("mobilenetv3_large", 0.99), ("efficientnetv2_b2", 0.9)])
def test_from_random_weights_batch_norm_momentum_is_capped_not_raised(arch, expected_max):
    from hms_offline.training.fold import batch_normalization_layers, training_model

    config = TrainConfig(data_dir=Path("comp"), out=Path("run"), arch=arch, steps_per_epoch=4).resolved()
    momenta = {layer.momentum for layer in batch_normalization_layers(training_model(config))}
    assert max(momenta) == pytest.approx(expected_max)  # MobileNetV3's 0.999 capped; EfficientNetV2's 0.9 kept
