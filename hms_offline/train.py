"""`python -m hms_offline train`: the fold models of one architecture, resumable.

A run folder holds one architecture's folds and travels as a unit:

    config.json  folds.csv  train.log  oof.csv  cv.json  loss_curves.png  weights_manifest.json
    fold<k>/  <arch>_fold<k>.weights.h5  config.json  history.csv  oof.csv  summary.json
              checkpoint/   (only while the fold is in progress)

After every epoch the fold's checkpoint gets the weights with the optimizer state and a
`state.json` naming the last and the best epoch; a run killed at any moment restarts from
the last completed epoch of the fold it was in. A fold is finished once its `summary.json`
exists (written last) and is never trained again.
"""

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from hms_offline.atomic import write_text_atomically
from hms_offline.augmentations import build_augmenter
from hms_offline.config import PROGRESS_MODES, TrainConfig, read_config
from hms_offline.data import WindowTable, prepare_spectrograms, window_dataset
from hms_offline.folds import FOLDS_NAME, fold_of_rows, make_folds, read_folds, write_folds
from hms_offline.labels import (
    epoch_stream,
    first_row_per_eeg,
    make_sampler,
    prior,
    read_train_labels,
    training_targets,
    vote_fractions,
)
from hms_offline.manifest import MANIFEST_NAME, Manifest, make_entry, write_manifest
from hms_offline.model import build_model
from hms_offline.report import (
    CONFIG_NAME,
    FOLD_SUMMARY_NAME,
    HISTORY_NAME,
    OOF_ID_COLUMNS,
    OOF_NAME,
    PREDICTED_COLUMNS,
    TRUE_COLUMNS,
    finished_folds,
    fold_dir,
    read_json,
    summarize_run,
    write_csv,
    write_json,
)
from hms_offline.schedule import schedule_for

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "state.json"
LOG_NAME = "train.log"


def weights_name(arch: str, fold: int) -> str:
    return f"{arch}_fold{fold}.weights.h5"


# ----------------------------------------------------------------------------- the run


def train(config: TrainConfig) -> dict:
    """Train the configured folds (finished ones are skipped, an interrupted one resumes);
    returns the run's cv.json data."""
    config = config.resolved()
    run_dir = config.out
    run_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(run_dir / LOG_NAME):
        check_same_run(config, run_dir)
        labels = read_train_labels(config.data_dir / "train.csv")
        folds = load_or_make_folds(config, labels, run_dir)
        labels = labels.assign(fold=fold_of_rows(labels, folds, run_dir / FOLDS_NAME))
        labels = limit_rows(labels, config.max_samples, config.seed)
        folder = prepare_spectrograms(config.data_dir, labels, config.work_dir, config.spectrogram_dir)
        # Written once the inputs are known to be good: they define the run folder.
        write_folds(folds, run_dir / FOLDS_NAME)
        write_text_atomically(run_dir / CONFIG_NAME, config.to_json())
        summary = None
        with training_strategy(config.mixed_precision) as strategy:
            for fold in config.fold_list():
                if (fold_dir(run_dir, fold) / FOLD_SUMMARY_NAME).is_file():
                    log.info("fold %d is already finished in %s: skipped", fold, run_dir)
                    continue
                train_fold(config, labels, folder, fold, strategy)
                summary = finish_run(config, run_dir)
        return summary or finish_run(config, run_dir)


@contextlib.contextmanager
def log_to_file(path: Path):
    """Also write the package's log records to `path` (appended: a resumed run continues it)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("hms_offline")
    level = package.level
    package.setLevel(min(package.getEffectiveLevel(), logging.INFO))  # fold / epoch summaries
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
        handler.close()


def check_same_run(config: TrainConfig, run_dir: Path) -> None:
    """A run folder resumes only with the settings it was started with (the data location,
    the folds to train and the progress display may change)."""
    if not (run_dir / CONFIG_NAME).is_file():
        return
    differences = read_config(run_dir / CONFIG_NAME).differences(config)
    if differences:
        listed = "; ".join(f"{name}: {before!r} there, {now!r} now" for name, (before, now) in differences.items())
        raise ValueError(f"{run_dir} holds a run with other settings ({listed}); use another --out")


def load_or_make_folds(config: TrainConfig, labels: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """The run's folds: from --folds-file, from its own folds.csv of an earlier start, or made now."""
    own = run_dir / FOLDS_NAME
    if config.folds_file is not None:
        folds = read_folds(config.folds_file)
        if own.is_file() and not read_folds(own).equals(folds):
            raise ValueError(f"{own} differs from --folds-file {config.folds_file}; use another --out")
        log.info("folds from %s", config.folds_file)
    elif own.is_file():
        folds = read_folds(own)
    else:
        folds = make_folds(labels, config.n_splits, config.fold_seed)
        log.info("folds: StratifiedGroupKFold(n_splits=%d, random_state=%d) by patient_id",
                 config.n_splits, config.fold_seed)
    n_splits = int(folds["fold"].max()) + 1
    if n_splits != config.n_splits:
        raise ValueError(f"the folds file has {n_splits} folds, but n_splits is {config.n_splits}")
    return folds


def limit_rows(labels: pd.DataFrame, max_samples: int | None, seed: int) -> pd.DataFrame:
    if max_samples is None or max_samples >= len(labels):
        return labels
    log.info("--max-samples: %d of %d train.csv rows", max_samples, len(labels))
    return labels.sample(n=max_samples, random_state=seed).sort_index().reset_index(drop=True)


def finish_run(config: TrainConfig, run_dir: Path) -> dict:
    """cv.json, oof.csv, loss_curves.png and weights_manifest.json from the finished folds."""
    summary = summarize_run(run_dir)
    kl_by_fold = {scores["fold"]: scores["kl"] for scores in summary["per_fold"]}
    entries = [
        make_entry(
            fold_dir(run_dir, fold["fold"]) / fold["weights"],
            run_dir,
            arch=config.arch,
            fold=fold["fold"],
            include_rescaling=config.include_rescaling,
            ensemble_weight=1.0,
            cv_kl=kl_by_fold[fold["fold"]],
            class_prior=fold["prior"],
        )
        for fold in finished_folds(run_dir)
    ]
    write_manifest(Manifest(models=entries), run_dir / MANIFEST_NAME)
    return summary


# ----------------------------------------------------------------------------- hardware


@contextlib.contextmanager
def training_strategy(mixed_precision: str):
    """A TPU strategy when a TPU is attached, MirroredStrategy over several GPUs, else the
    default; mixed precision on GPU / TPU (`auto`). The global dtype policy is restored after."""
    strategy, device = select_strategy()
    policy = precision_policy(mixed_precision, device)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    log.info("device %s, %s with %d replica(s), dtype policy %s",
             device, type(strategy).__name__, strategy.num_replicas_in_sync, policy)
    try:
        yield strategy
    finally:
        keras.mixed_precision.set_global_policy(previous)


def tpu_attached() -> bool:
    return "TPU_NAME" in os.environ or any(Path("/dev").glob("accel*"))


def select_strategy():
    if tpu_attached():
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", "local"))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver), "TPU"
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy(), f"{len(gpus)} GPUs"
    return tf.distribute.get_strategy(), "GPU" if gpus else "CPU"


def precision_policy(mode: str, device: str) -> str:
    accelerated = device != "CPU"
    if mode == "off" or (mode == "auto" and not accelerated):
        return "float32"
    return "mixed_bfloat16" if device == "TPU" else "mixed_float16"


# ----------------------------------------------------------------------------- one fold


@dataclasses.dataclass
class FoldData:
    train_rows: pd.DataFrame
    validation_rows: pd.DataFrame  # one window per eeg_id
    sampler: object
    steps_per_epoch: int


def split_fold(config: TrainConfig, labels: pd.DataFrame, fold: int) -> FoldData:
    train_rows = labels[labels["fold"] != fold].reset_index(drop=True)
    held_out = labels[labels["fold"] == fold].reset_index(drop=True)
    validation_rows = held_out.iloc[first_row_per_eeg(held_out)].reset_index(drop=True)
    if train_rows.empty or validation_rows.empty:
        raise ValueError(
            f"fold {fold}: {len(train_rows)} training and {len(validation_rows)} validation rows; "
            "too few train.csv rows for the folds (see --max-samples)"
        )
    sampler = make_sampler(config.sampling, train_rows, config.seed + fold)
    steps = config.steps_per_epoch or max(1, sampler.rows_per_epoch // config.batch_size)
    return FoldData(train_rows, validation_rows, sampler, steps)


def train_fold(config: TrainConfig, labels: pd.DataFrame, folder: Path, fold: int, strategy) -> None:
    directory = fold_dir(config.out, fold)
    data = split_fold(config, labels, fold)
    fold_config = dataclasses.replace(config, folds=[fold], steps_per_epoch=data.steps_per_epoch)
    checkpoint = FoldCheckpoint(directory / CHECKPOINT_DIR, fold, fold_config)
    keras.utils.set_random_seed(config.seed + fold)
    with strategy.scope():
        model = training_model(fold_config)
        checkpoint.restore(model)
    warn_if_batch_statistics_lag(model, fold_config)
    log.info(
        "fold %d: %d training rows (%d windows per epoch, %s), %d validation EEGs; "
        "%d steps x batch %d for epochs %d..%d of %d",
        fold, len(data.train_rows), data.sampler.rows_per_epoch, config.sampling, len(data.validation_rows),
        data.steps_per_epoch, config.batch_size, checkpoint.completed_epochs + 1, config.epochs, config.epochs,
    )
    validation = validation_dataset(config, folder, data.validation_rows)
    if checkpoint.completed_epochs < config.epochs:
        model.fit(
            training_dataset(config, folder, data, checkpoint.completed_epochs),
            validation_data=validation,
            epochs=config.epochs,
            initial_epoch=checkpoint.completed_epochs,
            steps_per_epoch=data.steps_per_epoch,
            callbacks=[checkpoint],
            shuffle=False,  # the sampler already shuffled each epoch
            verbose=PROGRESS_MODES[config.progress],
        )
    finish_fold(fold_config, data, validation, checkpoint, model)


def training_model(config: TrainConfig):
    """The compiled classifier: Adam on the warm-up + cosine schedule, KLDivergence loss."""
    model = build_model(config.arch, include_rescaling=config.include_rescaling, pretrained=config.pretrained)
    if config.bn_momentum is not None:
        for layer in batch_normalization_layers(model):
            layer.momentum = min(layer.momentum, config.bn_momentum)
    optimizer = keras.optimizers.Adam(learning_rate=schedule_for(config, config.steps_per_epoch))
    model.compile(optimizer=optimizer, loss=keras.losses.KLDivergence())
    return model


def batch_normalization_layers(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
        yield layer
    for child in getattr(layer, "layers", ()):
        yield from batch_normalization_layers(child)


def warn_if_batch_statistics_lag(model, config: TrainConfig) -> None:
    """From random weights, BatchNormalization moving statistics start at mean 0, variance 1
    while the true input variance of the first layer is ~4e-6 (standardised input / 255):
    until momentum ** steps is tiny, inference-mode predictions (validation, OOF, the kernel)
    lag far behind training."""
    if config.pretrained is not None:
        return
    momentum = max((layer.momentum for layer in batch_normalization_layers(model)), default=0.0)
    remaining = momentum ** (config.epochs * config.steps_per_epoch)
    if remaining > 0.01:
        log.warning(
            "BatchNormalization momentum %g over %d steps keeps %.0f%% of the initial moving statistics: "
            "from random weights, validation predictions will lag training; consider a lower --bn-momentum",
            momentum, config.epochs * config.steps_per_epoch, 100 * remaining,
        )


def training_dataset(config: TrainConfig, folder: Path, data: FoldData, first_epoch: int):
    table = WindowTable(folder, data.train_rows, training_targets(data.train_rows, config.labels))
    positions = epoch_stream(data.sampler, first_epoch, config.epochs, data.steps_per_epoch * config.batch_size)
    augment = build_augmenter(config.mixup_p, config.mixup_alpha, config.time_mask_p, config.freq_mask_p, config.seed)
    return window_dataset(table, positions, config.batch_size, drop_remainder=True, augment=augment)


def validation_dataset(config: TrainConfig, folder: Path, rows: pd.DataFrame):
    """Validation always scores vote fractions, the metric's target, whatever --labels says."""
    table = WindowTable(folder, rows, vote_fractions(rows))
    return window_dataset(table, np.arange(len(rows)), config.batch_size, drop_remainder=False)


def finish_fold(config: TrainConfig, data: FoldData, validation, checkpoint: "FoldCheckpoint", model) -> None:
    """Best weights (without optimizer state), out-of-fold predictions, history, config and,
    last, summary.json; then the checkpoint is removed."""
    fold = config.folds[0]
    directory = fold_dir(config.out, fold)
    state = checkpoint.state
    if state["best"] is None:
        raise RuntimeError(f"fold {fold}: no epoch reached a finite val_loss; nothing to keep")
    inference_model = build_model(config.arch, include_rescaling=config.include_rescaling)
    inference_model.load_weights(checkpoint.directory / state["best"])
    weights = directory / weights_name(config.arch, fold)
    save_weights_atomically(inference_model, weights)
    probabilities = predict_probabilities(inference_model, validation)
    write_csv(oof_frame(data.validation_rows, fold, probabilities), directory / OOF_NAME)
    write_csv(pd.DataFrame(state["history"]), directory / HISTORY_NAME)
    write_text_atomically(directory / CONFIG_NAME, config.to_json())
    summary = {
        "fold": fold,
        "arch": config.arch,
        "weights": weights.name,
        "best_epoch": state["best_epoch"],
        "best_val_loss": state["best_val_loss"],
        "epochs": state["epoch"],
        "train_rows": len(data.train_rows),
        "windows_per_epoch": data.sampler.rows_per_epoch,
        "validation_rows": len(data.validation_rows),
        "steps_per_epoch": data.steps_per_epoch,
        "prior": prior(vote_fractions(data.train_rows), data.sampler.expected_weights()).tolist(),
        "parameters": int(model.count_params()),
        "trainable_parameters": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
    }
    write_json(summary, directory / FOLD_SUMMARY_NAME)
    shutil.rmtree(checkpoint.directory)
    log.info("fold %d finished: best val_loss %.4f at epoch %d -> %s",
             fold, summary["best_val_loss"], summary["best_epoch"], weights)


def predict_probabilities(model, dataset) -> np.ndarray:
    """Rows renormalised in float64 (a float16 softmax under mixed precision is off by ~1e-3)."""
    probabilities = np.asarray(model.predict(dataset.map(_images_only), verbose=0), dtype=np.float64)
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def _images_only(images, targets):
    return images


def oof_frame(rows: pd.DataFrame, fold: int, probabilities: np.ndarray) -> pd.DataFrame:
    frame = rows.assign(fold=fold).loc[:, list(OOF_ID_COLUMNS)].reset_index(drop=True)
    true = pd.DataFrame(vote_fractions(rows).astype(np.float64), columns=list(TRUE_COLUMNS))
    predicted = pd.DataFrame(probabilities, columns=list(PREDICTED_COLUMNS))
    return pd.concat([frame, true, predicted], axis=1)


def save_weights_atomically(model, path: Path) -> Path:
    """`save_weights` to a temporary `.weights.h5` beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"tmp-{os.getpid()}-{path.name}")
    try:
        model.save_weights(str(temporary))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------- resuming


class FoldCheckpoint(keras.callbacks.Callback):
    """Per epoch: weights + optimizer state, the history row, the best epoch by val_loss.

    Each epoch's weights go to their own `epoch_NNN.weights.h5`; `state.json`, written
    atomically afterwards, names the last and the best of them. Whatever moment a run is
    killed at, the state names complete files, and resuming starts after its `epoch`.
    """

    def __init__(self, directory: Path, fold: int, config: TrainConfig):
        super().__init__()
        self.directory = Path(directory)
        self.fold = fold
        self.config = config
        path = self.directory / STATE_NAME
        self.state = read_json(path) if path.is_file() else {
            "epoch": 0, "last": None, "best": None, "best_epoch": None, "best_val_loss": None, "history": [],
        }
        self._epoch_started = self._train_seconds = None

    @property
    def completed_epochs(self) -> int:
        return self.state["epoch"]

    def restore(self, model) -> None:
        """Load the last epoch's weights and optimizer state (its step count drives the
        learning-rate schedule) into a freshly compiled model."""
        if self.state["last"] is None:
            return
        model.optimizer.build(model.trainable_variables)
        model.load_weights(str(self.directory / self.state["last"]))
        log.info("fold %d: resuming after epoch %d of %d (optimizer step %d)",
                 self.fold, self.completed_epochs, self.config.epochs, int(model.optimizer.iterations.numpy()))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()
        self._train_seconds = None

    def on_test_begin(self, logs=None):
        if self._train_seconds is None and self._epoch_started is not None:
            self._train_seconds = time.perf_counter() - self._epoch_started

    def on_epoch_end(self, epoch, logs=None):
        completed = epoch + 1
        name = f"epoch_{completed:03d}.weights.h5"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.model.save_weights(str(self.directory / name))
        row = self._history_row(completed, logs or {})
        state = self.state
        if math.isfinite(row["val_loss"]) and (state["best_val_loss"] is None or row["val_loss"] < state["best_val_loss"]):
            state.update(best=name, best_epoch=completed, best_val_loss=row["val_loss"])
        state.update(epoch=completed, last=name, history=state["history"] + [row])
        write_json(state, self.directory / STATE_NAME)
        self._remove_unreferenced_weights()
        log.info(
            "fold %d epoch %d/%d: loss %.4f, val_loss %.4f (best %.4f at epoch %s), lr %.3g, %.0f s, %.1f samples/s",
            self.fold, completed, self.config.epochs, row["loss"], row["val_loss"],
            state["best_val_loss"] if state["best_val_loss"] is not None else math.nan, state["best_epoch"],
            row["learning_rate"], row["seconds"], row["train_samples_per_second"],
        )

    def _history_row(self, completed: int, logs: dict) -> dict:
        seconds = time.perf_counter() - self._epoch_started
        samples = self.config.steps_per_epoch * self.config.batch_size
        return {
            "epoch": completed,
            "loss": float(logs.get("loss", math.nan)),
            "val_loss": float(logs.get("val_loss", math.nan)),
            "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            "seconds": seconds,
            "train_samples_per_second": samples / (self._train_seconds or seconds),
        }

    def _remove_unreferenced_weights(self) -> None:
        keep = {self.state["last"], self.state["best"]}
        for path in self.directory.glob("epoch_*.weights.h5"):
            if path.name not in keep:
                path.unlink()
