"""Learning rate: linear warm-up, then cosine decay to a floor, as a pure function of the step.

Keras's own `CosineDecay(warmup_target=..., warmup_steps=...)`: from `initial` it rises
linearly to `peak` over `warmup_steps`, then follows a half cosine down to `final`
(alpha = final / peak) at `total_steps`, and stays there. `schedule_for` puts `total_steps`
on a run's last step: that step trains at the floor.
"""


def warmup_cosine(initial: float, peak: float, final: float, warmup_steps: int, total_steps: int):
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must be >= 0 and less than total_steps ({total_steps})")
    if not 0 < final <= peak:
        raise ValueError(f"need 0 < final ({final}) <= peak ({peak})")
    import keras  # after the checks: a refused schedule costs no TensorFlow import

    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=initial,
        decay_steps=total_steps - warmup_steps,
        alpha=final / peak,
        warmup_target=peak,
        warmup_steps=warmup_steps,
    )


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    return int(round(warmup_epochs * steps_per_epoch))


def schedule_for(config, steps_per_epoch: int):
    """The schedule of a resolved TrainConfig with `steps_per_epoch` batches per epoch."""
    warmup = warmup_steps(config.warmup_epochs, steps_per_epoch)
    last_step = config.epochs * steps_per_epoch - 1
    return warmup_cosine(
        initial=config.initial_learning_rate,
        peak=config.peak_learning_rate,
        final=config.final_learning_rate,
        warmup_steps=warmup,
        total_steps=max(last_step, warmup + 1),  # the floor at the last step (after it in a 1-step run)
    )
