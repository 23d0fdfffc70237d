"""Side-by-side inference speed of one model under several engines, on this machine.

    .venv/bin/python benchmarks/inference_engines.py [--arch mobilenetv3_large] [--images 32]

Prints images/s per engine and the ratio to Keras `predict_on_batch` (the kernel's
engine), measured in the same run, interleaved over rounds so machine noise hits all alike.
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from hms_offline.constants import IMAGE_SHAPE
from hms_offline.model import build_model


def keras_predict_on_batch(model, batch_size):
    def run(images):
        for start in range(0, len(images), batch_size):
            model.predict_on_batch(images[start : start + batch_size])
    return run


def keras_predict(model, batch_size):
    return lambda images: model.predict(images, batch_size=batch_size, verbose=0)


def tflite(model, threads):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with tempfile.TemporaryDirectory():
        flat = converter.convert()
    interpreter = tf.lite.Interpreter(model_content=flat, num_threads=threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]

    def run(images):
        for image in images:
            interpreter.set_tensor(inp, image[None])
            interpreter.invoke()
            interpreter.get_tensor(out)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="mobilenetv3_large")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-tflite", dest="tflite", action="store_false", help="skip the TFLite conversion")
    args = parser.parse_args()
    model = build_model(args.arch)
    images = np.random.default_rng(0).normal(size=(args.images, *IMAGE_SHAPE)).astype("float32")
    started = time.perf_counter()
    engines = {f"keras predict_on_batch (bs {bs})": keras_predict_on_batch(model, bs) for bs in (16, 8, 4, 2)}
    engines["keras model.predict (bs 16)"] = keras_predict(model, 16)
    if args.tflite:
        engines["tflite interpreter (2 threads)"] = tflite(model, 2)
        print(f"tflite conversion: {time.perf_counter() - started:.1f} s")
    for run in engines.values():
        run(images[:4])  # warm-up: tracing, allocation
    seconds = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, run in engines.items():
            start = time.perf_counter()
            run(images)
            seconds[name].append(time.perf_counter() - start)
    base = min(seconds["keras predict_on_batch (bs 16)"])
    print(f"{args.arch}, {args.images} images at {IMAGE_SHAPE}, best of {args.rounds} rounds")
    for name, times in seconds.items():
        best = min(times)
        print(f"  {name:34s} {args.images / best:7.1f} images/s   x{base / best:5.2f} vs predict_on_batch bs 16")


if __name__ == "__main__":
    main()
