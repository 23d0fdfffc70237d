"""One fold: its training and validation rows (fold_rows.py), the compiled model, `fit`
with the checkpoint callback, and, once trained, the fold's files: the best weights,
out-of-fold predictions, history, config and, last, summary.json.

With `stage2_min_votes`, a fold trains in two stages: the first on all its training rows
(its files in `fold<k>/stage1/`), the second from the first's best weights on the rows with
at least that many votes (its files in `fold<k>/`, what the manifest ships). Both are scored
on the same validation rows; each stage resumes from its own checkpoint.
"""

import dataclasses
import logging
import os
import shutil
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from hms_offline.atomic import write_text_atomically
from hms_offline.models.registry import build_model
from hms_offline.training.augmentations import build_augmenter
from hms_offline.training.checkpoint import FoldCheckpoint
from hms_offline.training.config import PROGRESS_MODES, TrainConfig
from hms_offline.training.data import WindowTable, window_dataset
from hms_offline.training.fold_rows import FoldData, split_fold
from hms_offline.training.labels import epoch_stream, prior, training_targets, vote_fractions
from hms_offline.training.run_folder import (CHECKPOINT_DIR, CONFIG_NAME, FOLD_SUMMARY_NAME, HISTORY_NAME,
                                             OOF_ID_COLUMNS, OOF_NAME, PREDICTED_COLUMNS, TRUE_COLUMNS, fold_dir,
                                             stage_dir, weights_name, write_csv, write_json)
from hms_offline.training.schedule import schedule_for
from hms_offline.training.strategy import precision_optimizer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Stage:
    """One training stage of a fold: its number, folder and settings, the least votes of its
    training rows, and the weights it starts from (None: the backbone's initialisation)."""

    number: int
    directory: Path
    config: TrainConfig
    min_votes: int | None = None
    start_from: Path | None = None


def fold_stages(config: TrainConfig, fold: int) -> list[Stage]:
    """The fold's one stage, or two with `stage2_min_votes`."""
    if config.stage2_min_votes is None:
        return [Stage(1, fold_dir(config.out, fold), config)]
    first = stage_dir(config.out, fold, 1)
    second = dataclasses.replace(
        config, epochs=config.stage2_epochs, warmup_epochs=0.0, schedule="warmup_cosine",
        initial_learning_rate=config.stage2_learning_rate, peak_learning_rate=config.stage2_learning_rate,
    )
    return [Stage(1, first, config),
            Stage(2, fold_dir(config.out, fold), second, config.stage2_min_votes,
                  first / weights_name(config.arch, fold))]


def train_fold(config: TrainConfig, labels: pd.DataFrame, folders: dict[str, Path], fold: int, strategy) -> None:
    """Every stage of the fold not finished yet (a stage with a summary.json is)."""
    for stage in fold_stages(config, fold):
        if (stage.directory / FOLD_SUMMARY_NAME).is_file():
            log.info("fold %d stage %d is already finished in %s", fold, stage.number, stage.directory)
            continue
        train_stage(stage, labels, folders, fold, strategy)


def train_stage(stage: Stage, labels: pd.DataFrame, folders: dict[str, Path], fold: int, strategy) -> None:
    config = stage.config
    data = split_fold(config, labels, fold, stage.min_votes)
    fold_config = dataclasses.replace(config, folds=[fold], steps_per_epoch=data.steps_per_epoch)
    checkpoint = FoldCheckpoint(stage.directory / CHECKPOINT_DIR, fold, fold_config)
    keras.utils.set_random_seed(config.seed + fold + 1000 * (stage.number - 1))
    with strategy.scope():
        model = training_model(fold_config)
        if stage.start_from is not None and checkpoint.state["last"] is None:
            with warnings.catch_warnings():  # the shipped weights carry no optimizer state, on purpose
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                model.load_weights(str(stage.start_from))
            log.info("fold %d stage %d starts from %s", fold, stage.number, stage.start_from)
        checkpoint.restore(model)
    if stage.start_from is None:
        warn_if_batch_statistics_lag(model, fold_config)
    votes = f" with >= {stage.min_votes} votes" if stage.min_votes is not None else ""
    log.info(
        "fold %d%s: %d training rows%s (%d windows per epoch, %s), %d validation rows (%s, %s targets); input %s; "
        "%d steps x global batch %d (%d per replica) for epochs %d..%d of %d",
        fold, f" stage {stage.number}" if config.stage2_min_votes is not None else "", len(data.train_rows), votes,
        data.sampler.rows_per_epoch, config.sampling, len(data.validation_rows), config.validation_rows,
        config.validation_targets, config.input,
        data.steps_per_epoch, config.batch_size, config.batch_size // strategy.num_replicas_in_sync,
        checkpoint.completed_epochs + 1, config.epochs, config.epochs,
    )
    validation = validation_dataset(config, folders, data.validation_rows)
    if checkpoint.completed_epochs < config.epochs:
        model.fit(
            training_dataset(config, folders, data, checkpoint.completed_epochs),
            validation_data=validation,
            epochs=config.epochs,
            initial_epoch=checkpoint.completed_epochs,
            steps_per_epoch=data.steps_per_epoch,
            callbacks=[checkpoint],
            shuffle=False,  # the sampler already shuffled each epoch
            verbose=PROGRESS_MODES[config.progress],
        )
    finish_stage(stage, fold_config, data, validation, checkpoint, model, strategy)


def training_model(config: TrainConfig):
    """The compiled classifier: Adam on the configured learning-rate schedule (loss-scaled under
    mixed_float16), KLDivergence loss."""
    model = build_model(config.arch, include_rescaling=config.include_rescaling, pretrained=config.pretrained)
    if config.bn_momentum is not None:
        for layer in batch_normalization_layers(model):
            layer.momentum = min(layer.momentum, config.bn_momentum)
    optimizer = keras.optimizers.Adam(learning_rate=schedule_for(config, config.steps_per_epoch))
    model.compile(optimizer=precision_optimizer(optimizer), loss=keras.losses.KLDivergence())
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


def training_dataset(config: TrainConfig, folders: dict[str, Path], data: FoldData, first_epoch: int):
    table = WindowTable(folders, data.train_rows, training_targets(data.train_rows, config.labels), config.view)
    positions = epoch_stream(data.sampler, first_epoch, config.epochs, data.steps_per_epoch * config.batch_size)
    augment = build_augmenter(config.mixup_p, config.mixup_alpha, config.time_mask_p, config.freq_mask_p, config.seed,
                              mirror_p=config.mirror_p)
    return window_dataset(table, positions, config.batch_size, drop_remainder=True, augment=augment)


def validation_dataset(config: TrainConfig, folders: dict[str, Path], rows: pd.DataFrame):
    """val_loss against --validation-targets: vote fractions (the metric's target, whatever
    --labels says), or the starter's one-hot consensus. The out-of-fold rows written after
    training are scored against vote fractions either way (`oof_frame`)."""
    table = WindowTable(folders, rows, training_targets(rows, config.validation_targets), config.view)
    return window_dataset(table, np.arange(len(rows)), config.batch_size, drop_remainder=False)


def finish_stage(stage: Stage, config: TrainConfig, data: FoldData, validation, checkpoint: FoldCheckpoint,
                 model, strategy) -> None:
    """Best weights (without optimizer state), out-of-fold predictions (under the training
    strategy: each batch split across the replicas, the last one partial), history, config
    and, last, summary.json, in the stage's folder; then the checkpoint is removed."""
    fold = config.folds[0]
    directory = stage.directory
    state = checkpoint.state
    if state["best"] is None:
        raise RuntimeError(f"fold {fold}: no epoch reached a finite val_loss; nothing to keep")
    with strategy.scope():
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
        "stage": stage.number,
        "min_votes": stage.min_votes,
        "input": config.view,
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
    log.info("fold %d%s finished: best val_loss %.4f at epoch %d -> %s",
             fold, f" stage {stage.number}" if config.stage2_min_votes is not None else "",
             summary["best_val_loss"], summary["best_epoch"], weights)


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
