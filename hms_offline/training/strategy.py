"""The hardware a run trains on: a TPU strategy when a TPU is attached, MirroredStrategy over
several GPUs (Kaggle's 2 x T4), else the default; mixed precision on GPU / TPU."""

import contextlib
import logging
import os
from pathlib import Path

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


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
