"""Side-by-side inference speed of one model under the kernel's engines, on this machine.

    .venv/bin/python benchmarks/inference_engines.py [--arch mobilenetv3_large] [--images 64] [--batch-size 16]

Exports the model as the bundle does (hms_offline.models.export.write_exports), then runs the same
images through each engine of hms_offline.models.engines (keras, saved_model, tflite), interleaved
over rounds so machine noise hits all alike, and prints images/s and the ratio to keras.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from hms_offline.models.engines import SavedModelEngine, TFLiteEngine
from hms_offline.models.export import probe_batch, write_exports
from hms_offline.models.registry import build_model


class KerasModel:
    """The keras engine's call on an already-built model (KerasEngine loads from a manifest)."""

    def __init__(self, model):
        self.model = model

    def predict_on_batch(self, images):
        return np.asarray(self.model.predict_on_batch(images))


def run_batches(engine, images, batch_size):
    for start in range(0, len(images), batch_size):
        engine.predict_on_batch(images[start : start + batch_size])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="mobilenetv3_large")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = build_model(args.arch)
    images = probe_batch(args.images, seed=1)
    with tempfile.TemporaryDirectory() as folder:
        seconds = {}
        saved_model, tflite = write_exports(model, Path(folder), seconds)
        print(f"export: SavedModel {seconds['saved_model']:.1f} s, TFLite conversion {seconds['tflite']:.1f} s")
        engines = {"keras": KerasModel(model), "saved_model": SavedModelEngine.from_path(saved_model),
                   "tflite": TFLiteEngine.from_path(tflite)}
        for engine in engines.values():
            run_batches(engine, images[: args.batch_size], args.batch_size)  # warm-up: tracing, allocation
        times = {name: [] for name in engines}
        for _ in range(args.rounds):
            for name, engine in engines.items():
                start = time.perf_counter()
                run_batches(engine, images, args.batch_size)
                times[name].append(time.perf_counter() - start)
    base = min(times["keras"])
    print(f"{args.arch}, {args.images} images of {images.shape[1:]}, batch {args.batch_size}, "
          f"best of {args.rounds} interleaved rounds, {os.cpu_count()} cores")
    for name, measured in times.items():
        best = min(measured)
        print(f"  {name:12s} {args.images / best:7.1f} images/s   x{base / best:5.2f} vs keras")


if __name__ == "__main__":
    main()
