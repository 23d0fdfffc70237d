import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from hms_offline.cli import build_parser
from hms_offline.training.config import TrainConfig, parse_folds, read_config


def parse_train(*flags: str) -> TrainConfig:
    arguments = build_parser().parse_args(["train", "--data-dir", "comp", "--out", "runs/x", *flags])
    return TrainConfig.from_arguments(arguments)


def test_defaults_are_the_default_recipe():
    config = parse_train().resolved()
    assert config.recipe == "default"
    assert (config.arch, config.epochs, config.batch_size, config.n_splits, config.fold_seed) == (
        "mobilenetv3_large", 13, 64, 5, 42,
    )
    assert (config.mixup_p, config.mixup_alpha, config.time_mask_p, config.freq_mask_p) == (0.5, 2.0, 0.5, 0.5)
    assert config.labels == "fractions" and config.sampling == "eeg_random_window"
    assert (config.fold_unit, config.validation_rows, config.validation_targets, config.schedule) == (
        "eeg", "eeg_first", "fractions", "warmup_cosine")
    assert config.mixed_precision == "auto"
    assert config.include_rescaling and config.pretrained is None
    assert config.fold_list() == [0, 1, 2, 3, 4]
    # the switches beyond the starter are off
    assert (config.input, config.view, config.mirror_p, config.stage2_min_votes) == (
        "kaggle", "starter_log_standardize", 0.0, None)


def test_input_mirror_and_second_stage_flags():
    config = parse_train("--input", "both", "--mirror-p", "0.5", "--stage2-min-votes", "10", "--stage2-epochs", "3",
                         "--stage2-learning-rate", "5e-5").resolved()
    assert (config.input, config.view, config.mirror_p) == ("both", "kaggle_eeg_stacked", 0.5)
    assert (config.stage2_min_votes, config.stage2_epochs, config.stage2_learning_rate) == (10, 3, 5e-5)
    assert parse_train("--input", "eeg").resolved().view == "eeg_bipolar_stft"
    with pytest.raises(SystemExit):
        parse_train("--input", "raw")


def test_batch_norm_momentum_is_capped_from_random_weights_only():
    assert parse_train().resolved().bn_momentum == 0.99
    assert parse_train("--pretrained", "presets/mnv3").resolved().bn_momentum is None
    assert parse_train("--bn-momentum", "0.5").resolved().bn_momentum == 0.5


def test_every_flag_reaches_the_config():
    config = parse_train(
        "--arch", "efficientnetv2_b2", "--folds", "0,2", "--epochs", "3", "--batch-size", "8",
        "--labels", "consensus", "--sampling", "spectrogram_first", "--peak-learning-rate", "1e-3",
        "--bn-momentum", "0.5", "--no-include-rescaling", "--max-samples", "50", "--steps-per-epoch", "2",
        "--mixup-p", "0", "--progress", "off", "--warmup-epochs", "1",
    ).resolved()
    assert config.arch == "efficientnetv2_b2" and config.folds == [0, 2]
    assert (config.epochs, config.batch_size, config.max_samples, config.steps_per_epoch) == (3, 8, 50, 2)
    assert (config.labels, config.sampling, config.peak_learning_rate) == ("consensus", "spectrogram_first", 1e-3)
    assert config.bn_momentum == 0.5 and config.include_rescaling is False and config.mixup_p == 0
    assert config.data_dir == Path("comp").resolve()


def test_resolved_config_round_trips_through_json(tmp_path):
    config = parse_train("--folds", "1", "--work-dir", "cache").resolved()
    path = tmp_path / "config.json"
    path.write_text(config.to_json())
    assert read_config(path) == config
    assert isinstance(read_config(path).work_dir, Path)


def test_only_location_and_fold_choice_may_change_between_runs():
    base = parse_train().resolved()
    moved = parse_train("--folds", "3", "--work-dir", "elsewhere", "--progress", "off").resolved()
    assert base.differences(moved) == {}
    assert set(base.differences(parse_train("--epochs", "2", "--warmup-epochs", "1").resolved())) == {"epochs", "warmup_epochs"}


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--epochs", "2"), "warmup_epochs"),
        (("--folds", "5"), r"folds \[5\] must lie in 0..4"),
        (("--mixup-p", "1.5"), "mixup_p must be a probability"),
        (("--final-learning-rate", "1"), "final_learning_rate"),
        (("--n-splits", "1"), "n_splits must be >= 2"),
        (("--mirror-p", "2"), "mirror_p must be a probability"),
        (("--stage2-min-votes", "0"), "stage2_min_votes must be >= 1"),
        (("--stage2-min-votes", "10", "--stage2-learning-rate", "1e-6"), "stage2_learning_rate"),
    ],
)
def test_bad_values_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_train(*flags).resolved()


def test_fold_lists():
    assert parse_folds("all") is None
    assert parse_folds("2, 0") == [0, 2]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_folds("first")


def test_cli_help_does_not_import_tensorflow():
    code = (
        "import sys; from hms_offline.cli import build_parser; build_parser(); "
        "import hms_offline.training.config, hms_offline.training.folds, hms_offline.training.labels; "
        "heavy = [m for m in ('tensorflow', 'keras', 'keras_cv', 'sklearn', 'matplotlib') if m in sys.modules]; "
        "print(heavy); sys.exit(bool(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_replicas_must_split_the_global_batch_evenly():
    assert parse_train("--cpu-replicas", "2", "--batch-size", "8").resolved().cpu_replicas == 2
    assert parse_train().resolved().cpu_replicas is None  # the hardware's strategy
    with pytest.raises(ValueError, match=r"batch_size 6 \(the global batch\) does not divide by the 4 replicas"):
        parse_train("--cpu-replicas", "4", "--batch-size", "6").resolved()
    for count in ("0", "-1"):
        with pytest.raises(ValueError, match=f"cpu_replicas must be >= 1, got {count}"):
            parse_train("--cpu-replicas", count).resolved()


def test_a_global_batch_that_does_not_split_across_the_hardware_is_refused():
    """The check the strategy applies to the replica count it finds (GPUs, TPU cores)."""
    from hms_offline.training.config import check_batch_splits

    check_batch_splits(64, 8)
    with pytest.raises(ValueError, match=r"batch_size 64 \(the global batch\) does not divide by the 3 replicas"):
        check_batch_splits(64, 3)


def test_a_resumed_run_may_change_its_replica_count_not_its_global_batch(tmp_path):
    from hms_offline.training.run_folder import check_same_run

    started = parse_train("--cpu-replicas", "2", "--batch-size", "8").resolved()
    (tmp_path / "config.json").write_text(started.to_json())
    for flags in (("--cpu-replicas", "1", "--batch-size", "8"), ("--batch-size", "8"),
                  ("--cpu-replicas", "4", "--batch-size", "8")):
        check_same_run(parse_train(*flags).resolved(), tmp_path)  # accepted
    with pytest.raises(ValueError, match=r"other settings \(batch_size: 8 there, 16 now; peak_learning_rate"):
        check_same_run(parse_train("--cpu-replicas", "2", "--batch-size", "16").resolved(), tmp_path)
