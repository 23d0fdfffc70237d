"""The hardware a run trains on: a TPU strategy when a TPU is attached, MirroredStrategy over
several GPUs (Kaggle's 2 x T4), else the default; mixed precision on GPU / TPU.

`--cpu-replicas N` (tests and debugging) takes the several-GPUs path on a CPU: it splits the
CPU into N logical devices, which TensorFlow allows only before its runtime initialises (in a
fresh process), and hands them to MirroredStrategy (which by default takes no logical CPU).

Under any strategy `--batch-size` is the global batch: Keras splits each batch of the dataset
across the replicas, sums their gradients into one optimizer step (each replica's loss is
divided by the replica count), so steps per epoch and the learning-rate schedule count global
batches whatever the replica count.
"""

import contextlib
import logging
import os
from pathlib import Path

import keras
import tensorflow as tf

from hms_offline.training.config import check_batch_splits

log = logging.getLogger(__name__)


@contextlib.contextmanager
def training_strategy(mixed_precision: str, cpu_replicas: int | None = None, batch_size: int | None = None):
    """A TPU strategy when a TPU is attached, MirroredStrategy over several GPUs (or over
    `cpu_replicas` logical CPUs), else the default; mixed precision on GPU / TPU (`auto`).
    `batch_size`, the global batch, must divide by the replica count. The global dtype policy
    is restored after."""
    strategy, device = select_strategy(cpu_replicas)
    if batch_size is not None:
        check_batch_splits(batch_size, strategy.num_replicas_in_sync)
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


def select_strategy(cpu_replicas: int | None = None):
    """(strategy, device label). `cpu_replicas` first: it must act before anything
    initialises the TensorFlow runtime (listing logical devices does)."""
    if cpu_replicas is not None:
        devices = logical_cpus(cpu_replicas)
        return tf.distribute.MirroredStrategy(devices=devices), f"{cpu_replicas} logical CPU(s)"
    if tpu_attached():
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", "local"))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver), "TPU"
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy(), f"{len(gpus)} GPUs"
    return tf.distribute.get_strategy(), "GPU" if gpus else "CPU"


def logical_cpus(count: int) -> list[str]:
    """The names of `count` logical CPU devices: the CPU split into `count` if the runtime has
    not started, else the ones it already has (a process that split it before, e.g. a second
    run in one `study`)."""
    if count < 1:
        raise ValueError(f"cpu_replicas must be >= 1, got {count}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    if count > 1:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:  # the runtime is initialised: its devices are fixed
            pass
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    if len(devices) < count:
        raise RuntimeError(
            f"--cpu-replicas {count}: TensorFlow already initialised this process with {len(devices)} logical "
            f"CPU device(s), and logical devices can only be configured before it does; run "
            f"`python -m hms_offline train --cpu-replicas {count} ...` in a fresh process"
        )
    return devices[:count]


class BatchCountingLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras's dynamic loss scaling for mixed_float16, but a step skipped for non-finite
    gradients (the scale halves) still advances `iterations`, as tf.keras 2's did: the
    learning-rate schedule follows the batches trained, so steps per epoch, the warm-up and
    the floor at the last step hold whatever the loss scale does. Keras 3's own counts only
    the applied steps (measured: a 4-step run skipped 2 and never left the warm-up)."""

    def _stateful_handle_non_finite_grads(self):
        super()._stateful_handle_non_finite_grads()
        self.iterations.assign_add(1)


def precision_optimizer(optimizer):
    """`optimizer` as the dtype policy needs it: under mixed_float16 in
    BatchCountingLossScaleOptimizer (else `compile` wraps it in Keras's own)."""
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        return BatchCountingLossScaleOptimizer(optimizer)
    return optimizer


def precision_policy(mode: str, device: str) -> str:
    accelerated = "CPU" not in device  # "CPU", "2 logical CPU(s)"
    if mode == "off" or (mode == "auto" and not accelerated):
        return "float32"
    return "mixed_bfloat16" if device == "TPU" else "mixed_float16"
