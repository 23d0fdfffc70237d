"""The distributed path on this CPU: `train --cpu-replicas N` takes the several-GPUs code path
(MirroredStrategy) over N logical CPU devices, and `--mixed-precision on` runs mixed_float16.

Logical devices can only be configured before TensorFlow initialises, so the multi-replica
runs are `python -m hms_offline train` subprocesses (network blocked). Three runs of one tiny
recipe (MobileNetV3 Large, fold 0 of 2, 2 epochs x 2 steps x global batch 4, augmentation
off, on the same converted spectrograms), shared by every test here:

- `one`: 1 replica (the default strategy), float32, in-process: the reference;
- `two`: `--cpu-replicas 2`, float32;
- `mixed`: `--cpu-replicas 2 --mixed-precision on`, SIGKILLed once its checkpoint committed
  epoch 1, then resumed in-process with `--cpu-replicas 1` (another replica count: allowed).

The two subprocesses start together and the reference trains meanwhile: on 2 cores their
~30 s first-step tracings overlap. Cost: the runs ~295 CPU seconds, the export ~40 more
(11 to 12.5 min wall on this shared machine at a load of 9 to 11; estimated 3 to 3.5 min on 2
idle cores, not measured: the machine was never idle). What this does not reach: real GPUs
(NCCL all-reduce, float16 kernels), TPUStrategy and bfloat16.
"""

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import OFFLINE_GUARD
from hms_offline.cli import build_parser
from hms_offline.models.manifest import read_manifest, verify_files
from hms_offline.training.config import TrainConfig, read_config

pytestmark = pytest.mark.slow

SYNTHETIC = dict(n_train=60, n_test=4, seed=3)  # 30 EEGs: 27 training rows, 14 validation rows in fold 0
ARCH = "mobilenetv3_large"
FLAGS = [
    "--arch", ARCH, "--n-splits", "2", "--folds", "0", "--epochs", "2", "--steps-per-epoch", "2",
    "--batch-size", "4", "--warmup-epochs", "1", "--peak-learning-rate", "1e-3", "--bn-momentum", "0.5",
    "--mixup-p", "0", "--time-mask-p", "0", "--freq-mask-p", "0", "--progress", "epoch",
]
STEPS_PER_EPOCH = 2
TIMEOUT = 1200  # s, a safety net only: the runs take ~9 min on this machine at a load of ~9
RUN_FILES = {"config.json", "folds.csv", "train.log", "oof.csv", "cv.json", "loss_curves.png", "weights_manifest.json"}
FOLD_FILES = {f"{ARCH}_fold0.weights.h5", "config.json", "history.csv", "oof.csv", "summary.json"}
# Fields of a fold's summary.json that depend on the data and the recipe, not on the training.
PLAN_FIELDS = ("fold", "stage", "train_rows", "windows_per_epoch", "validation_rows", "steps_per_epoch", "prior",
               "parameters", "trainable_parameters")


def flags_of(competition: Path, out: Path, spectrograms: Path, *extra: str) -> list[str]:
    return ["train", "--data-dir", str(competition), "--out", str(out), "--spectrogram-dir", str(spectrograms),
            *FLAGS, *extra]


def config_of(flags: list[str]) -> TrainConfig:
    return TrainConfig.from_arguments(build_parser().parse_args(flags))


def start_training(flags: list[str], log_path: Path) -> subprocess.Popen:
    """`python -m hms_offline train ...` in a fresh process, the network blocked."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(OFFLINE_GUARD), os.environ.get("PYTHONPATH")])))
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "hms_offline", *flags], stdout=log, stderr=subprocess.STDOUT,
                                env=env)


def kill_after_first_epoch(process: subprocess.Popen, state_path: Path, timeout: float, killed: dict) -> None:
    """SIGKILL `process` once its checkpoint has committed an epoch; that state into `killed`."""
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if state_path.is_file() and json.loads(state_path.read_text())["epoch"] >= 1:
                process.kill()
                killed.update(json.loads(state_path.read_text()))
                break
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def finished(process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    try:
        process.wait(timeout)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, log_path.read_text()[-12000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from hms_offline.convert import convert_tree
    from hms_offline.synthetic.write import write_competition
    from hms_offline.training.run import train

    root = tmp_path_factory.mktemp("distributed")
    competition = write_competition(root / "competition", **SYNTHETIC)
    spectrograms = root / "spectrograms"
    convert_tree(competition / "train_spectrograms", spectrograms, progress=False)
    one, two, mixed = root / "one", root / "two", root / "mixed"
    mixed_flags = flags_of(competition, mixed, spectrograms, "--cpu-replicas", "2", "--mixed-precision", "on")
    started = time.monotonic()
    two_process = start_training(flags_of(competition, two, spectrograms, "--cpu-replicas", "2"), root / "two.log")
    mixed_process = start_training(mixed_flags, root / "mixed.log")
    killed = {}
    watcher = threading.Thread(target=kill_after_first_epoch,
                               args=(mixed_process, mixed / "fold0" / "checkpoint" / "state.json", TIMEOUT, killed))
    watcher.start()
    try:
        train(config_of(flags_of(competition, one, spectrograms)))
    finally:
        watcher.join()
        finished(two_process, root / "two.log", TIMEOUT)
    assert mixed_process.returncode == -9 and killed.get("epoch") == 1, (root / "mixed.log").read_text()[-12000:]
    resumed_flags = flags_of(competition, mixed, spectrograms, "--cpu-replicas", "1", "--mixed-precision", "on")
    train(config_of(resumed_flags))
    cpu = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"three runs and a resume: {time.monotonic() - started:.0f} s wall; CPU s: this process (all its tests "
          f"so far) {cpu[0].ru_utime + cpu[0].ru_stime:.0f}, subprocesses {cpu[1].ru_utime + cpu[1].ru_stime:.0f}")
    return SimpleNamespace(one=one, two=two, mixed=mixed, killed=killed, competition=competition,
                           spectrograms=spectrograms)


def history(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "fold0" / "history.csv")


def oof_images(run_dir: Path, spectrograms: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The run's out-of-fold rows and their model inputs, computed again here."""
    from hms_offline.training.data import WindowTable

    oof = pd.read_csv(run_dir / "oof.csv")
    config = read_config(run_dir / "config.json")
    labels = pd.read_csv(config.data_dir / "train.csv").set_index("label_id")
    rows = labels.loc[oof["label_id"]].reset_index()
    table = WindowTable({"spectrogram": spectrograms}, rows, np.zeros((len(rows), 6)), config.view)
    return oof, np.stack([table.image(i) for i in range(len(rows))])


def kernel_engine(run_dir: Path):
    """The kernel's Keras engine on the run's manifest entry: the shipped weights rebuilt in float32."""
    from hms_offline.models.engines import KerasEngine

    manifest = read_manifest(run_dir / "weights_manifest.json")
    verify_files(manifest, run_dir)
    return KerasEngine(manifest.models[0], run_dir)


def test_two_replicas_write_the_outputs_of_one(runs):
    """Same files, the same folds, rows and plan; the same learning rates at the same epochs,
    so the schedule counted global optimizer steps, not replica steps."""
    for run_dir in (runs.one, runs.two, runs.mixed):
        assert {path.name for path in run_dir.iterdir()} == RUN_FILES | {"fold0"}, run_dir
        assert {path.name for path in (run_dir / "fold0").iterdir()} == FOLD_FILES, run_dir
        assert pd.read_csv(run_dir / "folds.csv").equals(pd.read_csv(runs.one / "folds.csv"))
    assert "MirroredStrategy with 2 replica(s), dtype policy float32" in (runs.two / "train.log").read_text()
    assert "device CPU, _DefaultDistributionStrategy with 1 replica(s), dtype policy float32" in (
        runs.one / "train.log").read_text()
    reference = history(runs.one)
    summaries = {name: json.loads((getattr(runs, name) / "fold0" / "summary.json").read_text())
                 for name in ("one", "two", "mixed")}
    for name in ("two", "mixed"):
        assert {f: summaries[name][f] for f in PLAN_FIELDS} == {f: summaries["one"][f] for f in PLAN_FIELDS}, name
        other = history(getattr(runs, name))
        assert other["epoch"].tolist() == [1, 2]
        np.testing.assert_allclose(other[["learning_rate", "learning_rate_end"]],
                                   reference[["learning_rate", "learning_rate_end"]], rtol=1e-6)
        rows = "^(eeg_id|label_id|spectrogram_id|patient_id|fold|true_)"
        pd.testing.assert_frame_equal(pd.read_csv(getattr(runs, name) / "oof.csv").filter(regex=rows),
                                      pd.read_csv(runs.one / "oof.csv").filter(regex=rows))
    assert summaries["one"]["steps_per_epoch"] == STEPS_PER_EPOCH
    two_config = read_config(runs.two / "fold0" / "config.json")
    assert read_config(runs.one / "fold0" / "config.json").differences(two_config) == {}
    assert two_config.cpu_replicas == 2 and two_config.batch_size == 4


def test_two_replicas_first_epoch_loss_matches_one(runs):
    """Same seed, same initial weights, same global batches, no augmentation: the replicas'
    gradients are summed into one step of the global batch, so the 2-replica loss follows the
    1-replica one. Not exactly: BatchNormalization takes its batch statistics per replica (2
    images each instead of 4), so the training-mode forward pass differs, and with it the loss
    and every later step; plus float summation order. Measured: 1.7532 (1 replica) vs 1.7607
    (2 replicas), 0.4 % apart; the tolerance is 2 %. (Epoch 1's two steps run at the warm-up's
    smallest rates, so this compares the forward passes above all; by epoch 2, at the peak
    rate, the runs have drifted apart: 1.13 vs 1.46.)"""
    one, two = history(runs.one), history(runs.two)
    print("first-epoch loss: 1 replica", one["loss"].iloc[0], "2 replicas", two["loss"].iloc[0])
    assert two["loss"].iloc[0] == pytest.approx(one["loss"].iloc[0], rel=0.02)


def test_out_of_fold_predictions_under_the_strategy_equal_one_replica_reloading_the_weights(runs):
    """The OOF rows were predicted under MirroredStrategy (each batch split in two, the last
    partial one of 14 % 4 = 2 rows one per replica); the kernel's Keras engine, one replica,
    reloading the shipped weights gives the same probabilities."""
    oof, images = oof_images(runs.two, runs.spectrograms)
    assert len(oof) == 14
    with h5py.File(runs.two / "fold0" / f"{ARCH}_fold0.weights.h5") as handle:
        assert "optimizer" not in handle
    predicted = kernel_engine(runs.two).predict_on_batch(images)
    np.testing.assert_allclose(predicted, oof.filter(like="pred_"), atol=1e-5)


def test_mixed_precision_run_resumed_on_another_replica_count(runs):
    """Killed after epoch 1 of 2 under 2 replicas, resumed under 1: the epoch kept as it was,
    the optimizer's step restored (global steps: one per global batch)."""
    log = (runs.mixed / "train.log").read_text()
    assert "MirroredStrategy with 2 replica(s), dtype policy mixed_float16" in log
    assert "MirroredStrategy with 1 replica(s), dtype policy mixed_float16" in log
    assert f"fold 0: resuming after epoch 1 of 2 (optimizer step {STEPS_PER_EPOCH})" in log
    assert log.count("fold 0 epoch 1/2") == 1
    pd.testing.assert_frame_equal(history(runs.mixed).iloc[:1], pd.DataFrame(runs.killed["history"]),
                                  check_dtype=False)
    assert read_config(runs.mixed / "config.json").cpu_replicas == 1


def test_mixed_precision_weights_load_in_float32_and_its_rows_sum_to_one(runs):
    """Variables stay float32 under mixed_float16 (only the computation is float16), so the
    shipped weights are float32 and load into a float32 model; the float16 softmax's rows are
    renormalised in float64 (`predict_probabilities`). The float32 reload's probabilities
    differ from the float16 ones by float16 rounding: measured at most 5.2e-5; tolerance 5e-4."""
    with h5py.File(runs.mixed / "fold0" / f"{ARCH}_fold0.weights.h5") as handle:
        dtypes = set()
        handle.visititems(lambda name, item: dtypes.add(item.dtype) if isinstance(item, h5py.Dataset) else None)
    assert dtypes == {np.dtype("float32")}
    oof, images = oof_images(runs.mixed, runs.spectrograms)
    np.testing.assert_allclose(oof.filter(like="pred_").sum(axis=1), 1, atol=1e-9)
    engine = kernel_engine(runs.mixed)
    assert {weight.dtype for weight in engine.model.weights} == {"float32"}
    predicted = engine.predict_on_batch(images)
    print("mixed precision OOF vs float32 reload: max |difference|",
          np.abs(predicted - oof.filter(like="pred_").to_numpy()).max())
    np.testing.assert_allclose(predicted, oof.filter(like="pred_"), atol=5e-4)


def test_exported_engines_of_strategy_and_mixed_precision_weights_equal_keras(runs, tmp_path):
    """The kernel's SavedModel and TFLite engines, exported from the weights the mixed-precision
    run trained under 2 replicas then 1, predict the OOF inputs as the Keras model does, within
    the export's own tolerances (models/export.py TOLERANCES)."""
    from hms_offline.models.engines import SavedModelEngine, TFLiteEngine
    from hms_offline.models.export import TOLERANCES, write_exports

    _, images = oof_images(runs.mixed, runs.spectrograms)
    keras_engine = kernel_engine(runs.mixed)
    expected = keras_engine.predict_on_batch(images)
    saved_model, tflite = write_exports(keras_engine.model, tmp_path)
    engines = {"saved_model": SavedModelEngine.from_path(saved_model), "tflite": TFLiteEngine.from_path(tflite, 2)}
    for kind, engine in engines.items():
        np.testing.assert_allclose(engine.predict_on_batch(images), expected, atol=TOLERANCES[kind], err_msg=kind)


def test_cpu_replicas_in_a_process_whose_tensorflow_started_is_refused_with_the_reason(runs):
    """This process trained (its runtime holds one logical CPU): 2 cannot be configured now."""
    from hms_offline.training.strategy import logical_cpus

    assert logical_cpus(1) == ["/device:CPU:0"]
    with pytest.raises(RuntimeError, match=r"--cpu-replicas 2: TensorFlow already initialised this process with 1 "
                                           r"logical CPU device\(s\).*in a fresh process"):
        logical_cpus(2)
