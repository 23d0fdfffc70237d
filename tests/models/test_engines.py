"""Choosing the engine that runs each model: the order, the fallbacks, the keras set-up."""

import pytest

import hms_offline.models.engines as engines
from hms_offline.models.engines import EngineError, EngineLoader, engine_order
from hms_offline.models.manifest import ModelEntry


def test_auto_prefers_tflite_on_cpu_and_the_saved_model_where_a_gpu_is_visible():
    assert engine_order("auto", gpu=False) == ("tflite", "saved_model", "keras")
    assert engine_order("auto", gpu=True) == ("saved_model", "keras")
    assert engine_order("keras", gpu=True) == ("keras",)
    with pytest.raises(ValueError, match="unknown engine 'onnx'; choose auto or one of tflite, saved_model, keras"):
        engine_order("onnx", gpu=False)


def fake_engine(name, fails_with=None):
    class Fake:
        def __init__(self, entry, root):
            if fails_with:
                raise fails_with

        def predict_on_batch(self, images):
            return images

    Fake.name = name
    return Fake


ENTRY = ModelEntry(name="m", arch="mobilenetv3_large", fold=0, file="m.weights.h5", sha256="0")


def test_each_model_gets_the_first_engine_that_opens_it(monkeypatch):
    monkeypatch.setattr(engines, "ENGINES", {
        "tflite": fake_engine("tflite", FileNotFoundError("no exports/m.tflite")),
        "saved_model": fake_engine("saved_model"),
        "keras": fake_engine("keras"),
    })
    prepared = []
    loader = EngineLoader("auto", prepare_keras=lambda: prepared.append(1), gpu=False)
    assert loader(ENTRY, None).name == "saved_model"
    assert loader.attempts["m"] == ["tflite: FileNotFoundError: no exports/m.tflite"]
    assert prepared == []  # keras never reached: nothing installed


def test_the_keras_set_up_runs_once_and_a_failed_one_is_not_retried(monkeypatch):
    monkeypatch.setattr(engines, "ENGINES", {
        "tflite": fake_engine("tflite", OSError("corrupt")),
        "saved_model": fake_engine("saved_model", OSError("corrupt")),
        "keras": fake_engine("keras"),
    })
    calls = []
    loader = EngineLoader("auto", prepare_keras=lambda: calls.append("install"), gpu=False)
    assert [loader(ENTRY, None).name for _ in range(3)] == ["keras"] * 3
    assert calls == ["install"]

    def no_wheels_for_this_python():
        calls.append("failed install")
        raise RuntimeError("the bundle ships the keras engine's wheels for cp312 only")

    loader = EngineLoader("auto", prepare_keras=no_wheels_for_this_python, gpu=False)
    for _ in range(2):
        with pytest.raises(EngineError, match="no engine of tflite, saved_model, keras could open it: tflite: "
                                              "OSError: corrupt; saved_model: OSError: corrupt; keras: RuntimeError: "
                                              "the bundle ships the keras engine's wheels for cp312 only"):
            loader(ENTRY, None)
    assert calls == ["install", "failed install"]
