import numpy as np
import pytest

from hms_offline.training.config import TrainConfig
from hms_offline.training.schedule import schedule_for, starter_epoch_rates, warmup_cosine


def learning_rates(schedule, steps) -> np.ndarray:
    return np.array([float(schedule(step)) for step in steps])


@pytest.mark.slow
def test_warm_up_rises_to_the_peak_then_cosine_decays_to_the_floor():
    initial, peak, final, warmup, total = 5e-5, 3.84e-4, 1e-5, 30, 130
    schedule = warmup_cosine(initial, peak, final, warmup_steps=warmup, total_steps=total)
    rates = learning_rates(schedule, range(total + 20))
    assert rates[0] == pytest.approx(initial)
    assert np.all(np.diff(rates[: warmup + 1]) > 0)  # rises through the warm-up
    assert rates.argmax() == warmup and rates[warmup] == pytest.approx(peak)  # peaks at its end
    assert np.all(np.diff(rates[warmup:total + 1]) < 0)  # then only decays
    assert rates[(warmup + total) // 2] == pytest.approx((peak + final) / 2, rel=1e-3)  # a half cosine
    np.testing.assert_allclose(rates[total:], final, rtol=1e-5)  # ends at its floor and stays


@pytest.mark.slow
def test_schedule_of_the_default_config():
    config = TrainConfig(data_dir="d", out="o").resolved()  # batch 64, 13 epochs, 3 warm-up
    schedule = schedule_for(config, steps_per_epoch=10)
    assert config.peak_learning_rate == pytest.approx(6e-6 * 64)
    assert float(schedule(0)) == pytest.approx(5e-5)
    assert float(schedule(30)) == pytest.approx(3.84e-4)
    assert float(schedule(128)) > 1e-5 * 1.001  # still decaying one step before the end
    assert float(schedule(129)) == pytest.approx(1e-5) == float(schedule(130))  # the last step trains at the floor


@pytest.mark.slow
def test_the_starter_staircase_holds_each_epochs_rate_over_its_steps():
    config = TrainConfig.for_recipe("starter", data_dir="d", out="o").resolved()
    steps = 7
    schedule = schedule_for(config, steps_per_epoch=steps)
    rates = starter_epoch_rates(config)
    for epoch, rate in enumerate(rates):
        first, last = epoch * steps, (epoch + 1) * steps - 1
        np.testing.assert_allclose(learning_rates(schedule, range(first, last + 1)), rate, rtol=1e-6)
    np.testing.assert_allclose(learning_rates(schedule, [len(rates) * steps, 10**6]), rates[-1], rtol=1e-6)


@pytest.mark.slow
def test_without_warm_up_the_schedule_starts_at_the_peak():
    rates = learning_rates(warmup_cosine(0.0, 1e-3, 1e-4, warmup_steps=0, total_steps=10), range(11))
    assert rates[0] == pytest.approx(1e-3) and rates[10] == pytest.approx(1e-4)


@pytest.mark.parametrize("warmup, total, final", [(10, 10, 1e-5), (-1, 10, 1e-5), (2, 10, 1e-2)])
def test_impossible_schedules_are_refused(warmup, total, final):
    with pytest.raises(ValueError):
        warmup_cosine(1e-5, 1e-3, final, warmup_steps=warmup, total_steps=total)
