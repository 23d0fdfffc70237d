"""Learning rate as a pure function of the optimizer step: `--schedule warmup_cosine` (the
default) or `starter_staircase` (the starter notebook's).

warmup_cosine is Keras's own `CosineDecay(warmup_target=..., warmup_steps=...)`: from
`initial` it rises linearly to `peak` over `warmup_steps`, then follows a half cosine down to
`final` (alpha = final / peak) at `total_steps`, and stays there. `schedule_for` puts
`total_steps` on a run's last step: that step trains at the floor.

starter_staircase is the starter's `get_lr_callback(batch_size, mode="cos")` (DESIGN.md, "The
starter notebook's code", and the notebook's cell "LR Schedule"): a
`keras.callbacks.LearningRateScheduler` that sets one rate per 0-based epoch e, with
lr_start = 5e-5, lr_max = 6e-6 x batch size, lr_min = 1e-5, 3 ramp epochs and no sustain:

    e < 3:   lr_start + (lr_max - lr_start) / 3 * e
    e >= 3:  lr_min + (lr_max - lr_min) / 2 * (1 + cos(pi * (e - 3) / (E - 3 + 3)))

where E is that function's `epochs` argument, left at its default 10 although the notebook
trains 13 epochs, so the cosine never gets down to lr_min (its last epoch: 1.92e-5). Here the
same values are a `PiecewiseConstantDecay` over the steps (constant within an epoch), so the
rate lives in the optimizer's step count and a resumed run continues it like any other
schedule.
"""

import math


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


def starter_epoch_rate(epoch: int, start: float, peak: float, floor: float, ramp_epochs: float,
                       schedule_epochs: int) -> float:
    """The starter's `lrfn(epoch)` (mode "cos", no sustain), with lr_start = `start`,
    lr_max = `peak`, lr_min = `floor`, lr_ramp_ep = `ramp_epochs` and get_lr_callback's
    `epochs` = `schedule_epochs`."""
    if epoch < ramp_epochs:
        return (peak - start) / ramp_epochs * epoch + start
    decay_total_epochs = schedule_epochs - ramp_epochs + 3  # the notebook's literal 3
    phase = math.pi * (epoch - ramp_epochs) / decay_total_epochs
    return (peak - floor) * 0.5 * (1 + math.cos(phase)) + floor


def starter_epoch_rates(config) -> list[float]:
    """The rate of each epoch of a resolved TrainConfig under starter_staircase."""
    return [
        starter_epoch_rate(epoch, config.initial_learning_rate, config.peak_learning_rate,
                           config.final_learning_rate, config.warmup_epochs, config.staircase_epochs)
        for epoch in range(config.epochs)
    ]


def per_epoch_staircase(rates: list[float], steps_per_epoch: int):
    """`rates[e]` for the steps of epoch e (steps e * steps_per_epoch ... (e + 1) * steps_per_epoch - 1),
    the last rate after them."""
    if not rates or steps_per_epoch < 1:
        raise ValueError(f"need at least one epoch's rate and steps_per_epoch >= 1, got {rates}, {steps_per_epoch}")
    import keras

    # PiecewiseConstantDecay gives values[i] for boundaries[i - 1] < step <= boundaries[i].
    boundaries = [(epoch + 1) * steps_per_epoch - 1 for epoch in range(len(rates))]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, [*rates, rates[-1]])


def schedule_for(config, steps_per_epoch: int):
    """The schedule of a resolved TrainConfig with `steps_per_epoch` batches per epoch."""
    if config.schedule == "starter_staircase":
        return per_epoch_staircase(starter_epoch_rates(config), steps_per_epoch)
    if config.schedule != "warmup_cosine":
        raise ValueError(f"unknown schedule {config.schedule!r}; known: warmup_cosine, starter_staircase")
    warmup = warmup_steps(config.warmup_epochs, steps_per_epoch)
    last_step = config.epochs * steps_per_epoch - 1
    return warmup_cosine(
        initial=config.initial_learning_rate,
        peak=config.peak_learning_rate,
        final=config.final_learning_rate,
        warmup_steps=warmup,
        total_steps=max(last_step, warmup + 1),  # the floor at the last step (after it in a 1-step run)
    )
