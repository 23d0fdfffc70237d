"""A fold's checkpoint: after every epoch its weights with the optimizer state, and then
`state.json` naming the last and the best epoch, so a run killed at any moment resumes after
the last completed epoch of the fold it was in."""

import logging
import math
import time
from pathlib import Path

import keras

from hms_offline.training.config import TrainConfig
from hms_offline.training.run_folder import STATE_NAME, read_json, write_json

log = logging.getLogger(__name__)


class FoldCheckpoint(keras.callbacks.Callback):
    """Per epoch: weights + optimizer state, the history row, the best epoch by val_loss.

    The history row's `learning_rate` is the rate of the epoch's first step and
    `learning_rate_end` that of its last (equal under the starter's per-epoch staircase),
    both read from the optimizer as those steps begin.

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
        self._rates = {}

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
        self._rates = {}

    def on_train_batch_begin(self, batch, logs=None):
        """The rate the step about to run uses (the optimizer's schedule at its step count),
        read at the epoch's first and last step only."""
        if batch == 0:
            self._rates["first"] = self._current_rate()
        if batch == self.config.steps_per_epoch - 1:
            self._rates["last"] = self._current_rate()

    def _current_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

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
            "fold %d epoch %d/%d: loss %.4f, val_loss %.4f (best %.4f at epoch %s), lr %.3g..%.3g, %.0f s, "
            "%.1f samples/s",
            self.fold, completed, self.config.epochs, row["loss"], row["val_loss"],
            state["best_val_loss"] if state["best_val_loss"] is not None else math.nan, state["best_epoch"],
            row["learning_rate"], row["learning_rate_end"], row["seconds"], row["train_samples_per_second"],
        )

    def _history_row(self, completed: int, logs: dict) -> dict:
        seconds = time.perf_counter() - self._epoch_started
        samples = self.config.steps_per_epoch * self.config.batch_size
        after = self._current_rate()  # the rate of the step after the epoch, if a step was missed
        return {
            "epoch": completed,
            "loss": float(logs.get("loss", math.nan)),
            "val_loss": float(logs.get("val_loss", math.nan)),
            "learning_rate": self._rates.get("first", after),
            "learning_rate_end": self._rates.get("last", after),
            "seconds": seconds,
            "train_samples_per_second": samples / (self._train_seconds or seconds),
        }

    def _remove_unreferenced_weights(self) -> None:
        keep = {self.state["last"], self.state["best"]}
        for path in self.directory.glob("epoch_*.weights.h5"):
            if path.name not in keep:
                path.unlink()
