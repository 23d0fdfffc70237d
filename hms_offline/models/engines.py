"""Inference engines: what runs one model of the ensemble.

- `tflite`: the TFLite file the bundle exported (XNNPACK, all cores): the fastest on CPU;
- `saved_model`: the exported TF SavedModel, run by `tf.saved_model.load`;
- `keras`: the model rebuilt by keras-cv from its arch and `.weights.h5`.

The first two need TensorFlow only (the image's own, whatever its Keras): keras-cv is
never imported. `keras` needs keras-cv, which the kernel installs from the bundle's wheels
only when this engine is reached (`prepare_keras`). `auto` tries, per model, `tflite` ->
`saved_model` -> `keras` where no GPU is visible and `saved_model` -> `keras` where one is
(TFLite runs on the CPU only).
"""

import logging
import os
from pathlib import Path

import numpy as np

from hms_offline.constants import CLASSES
from hms_offline.models.manifest import ModelEntry, export_path, export_problem, weights_path

log = logging.getLogger(__name__)

ENGINE_NAMES = ("tflite", "saved_model", "keras")
AUTO = "auto"
AUTO_ORDER_CPU = ("tflite", "saved_model", "keras")
AUTO_ORDER_GPU = ("saved_model", "keras")


class EngineError(RuntimeError):
    """No requested engine could open a model; the message lists each attempt."""


class KerasEngine:
    name = "keras"

    def __init__(self, entry: ModelEntry, root: Path):
        from hms_offline.models.registry import build_model

        self.model = build_model(entry.arch, num_classes=len(CLASSES), input_shape=tuple(entry.input_shape),
                                 include_rescaling=entry.include_rescaling)
        self.model.load_weights(str(weights_path(entry, root)))

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(images))


class SavedModelEngine:
    name = "saved_model"

    def __init__(self, entry: ModelEntry, root: Path):
        self._open(_checked_export(entry, root, self.name))

    @classmethod
    def from_path(cls, folder: Path) -> "SavedModelEngine":
        engine = cls.__new__(cls)
        engine._open(folder)
        return engine

    def _open(self, folder: Path) -> None:
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(str(folder))  # kept referenced: it owns the variables
        self._serve = self._loaded.serve

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._serve(self._tf.constant(images, dtype=self._tf.float32)))


class TFLiteEngine:
    name = "tflite"

    def __init__(self, entry: ModelEntry, root: Path):
        self._open(_checked_export(entry, root, self.name))

    @classmethod
    def from_path(cls, path: Path, threads: int | None = None) -> "TFLiteEngine":
        engine = cls.__new__(cls)
        engine._open(path, threads)
        return engine

    def _open(self, path: Path, threads: int | None = None) -> None:
        self._interpreter = tflite_interpreter(path, threads)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch = None

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        if len(images) != self._batch:  # the graph is sized per batch; the last one is often smaller
            self._interpreter.resize_tensor_input(self._input, list(images.shape))
            self._interpreter.allocate_tensors()
            self._batch = len(images)
        self._interpreter.set_tensor(self._input, np.ascontiguousarray(images, dtype=np.float32))
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output))


def tflite_interpreter(path: Path, threads: int | None = None):
    """The LiteRT interpreter where `ai-edge-litert` is installed, else TensorFlow's own
    `tf.lite.Interpreter` (deprecated in its favour, still in TF 2.20 / 2.21); all cores by default."""
    threads = threads or os.cpu_count() or 1
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import warnings

        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            return tf.lite.Interpreter(model_path=str(path), num_threads=threads)
    return Interpreter(model_path=str(path), num_threads=threads)


ENGINES = {engine.name: engine for engine in (TFLiteEngine, SavedModelEngine, KerasEngine)}


def _checked_export(entry: ModelEntry, root: Path, kind: str) -> Path:
    problem = export_problem(entry, root, kind)
    if problem:
        raise EngineError(problem)
    return export_path(entry, root, kind)


def gpu_visible() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def engine_order(requested: str, gpu: bool) -> tuple[str, ...]:
    if requested == AUTO:
        return AUTO_ORDER_GPU if gpu else AUTO_ORDER_CPU
    if requested not in ENGINES:
        raise ValueError(f"unknown engine {requested!r}; choose {AUTO} or one of {', '.join(ENGINE_NAMES)}")
    return (requested,)


class EngineLoader:
    """`loader(entry, root)` -> the first engine of the order that opens the model; each
    failed attempt is logged and kept in `attempts[name]`. `prepare_keras` (the kernel's
    offline install of keras-cv and its dependencies) runs once, before the first keras engine."""

    def __init__(self, requested: str = AUTO, prepare_keras=None, gpu: bool | None = None):
        self.requested = requested
        self.order = engine_order(requested, gpu_visible() if gpu is None else gpu)
        self.prepare_keras = prepare_keras
        self.keras_ready = False
        self.keras_error: Exception | None = None
        self.attempts: dict[str, list[str]] = {}

    def __call__(self, entry: ModelEntry, root: Path):
        failures = []
        for name in self.order:
            try:
                if name == "keras":
                    self._prepare_keras()
                engine = ENGINES[name](entry, root)
            except Exception as error:  # this engine cannot run the model: try the next one
                failures.append(f"{name}: {type(error).__name__}: {error}")
                log.warning("model %s: engine %s unavailable (%s: %s)", entry.name, name, type(error).__name__, error)
                continue
            self.attempts[entry.name] = failures
            return engine
        self.attempts[entry.name] = failures
        raise EngineError(f"no engine of {', '.join(self.order)} could open it: " + "; ".join(failures))

    def _prepare_keras(self) -> None:
        """Once: a failed set-up is not retried for every model."""
        if self.keras_error is not None:
            raise self.keras_error
        if not self.keras_ready and self.prepare_keras is not None:
            try:
                self.prepare_keras()
            except Exception as error:
                self.keras_error = error
                raise
        self.keras_ready = True
