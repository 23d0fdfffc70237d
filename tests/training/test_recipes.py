"""`train --recipe`: the starter recipe against the starter notebook's own formulas, computed
here independently of the package (its fold split on the real label sample, its rows, its
targets, its per-epoch learning rates), and recipes as defaults that every flag overrides."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hms_offline.cli import build_parser
from hms_offline.training.config import (
    SAMPLINGS, VALIDATION_ROWS, TrainConfig, read_config, recipe_defaults,
)
from hms_offline.training.fold_rows import split_fold
from hms_offline.training.folds import fold_of_rows, make_folds
from hms_offline.training.labels import (
    SAMPLERS, VALIDATION_ROW_CHOICES, read_train_labels, training_targets, vote_fractions,
)
from hms_offline.training.recipes import RECIPES
from hms_offline.training.schedule import starter_epoch_rates

# The notebook's Config: classNames (-> class_label), batchSize, epochs, fold, randSeed.
NOTEBOOK_CLASSES = ["Seizure", "LPD", "GPD", "LRDA", "GRDA", "Other"]
NOTEBOOK_BATCH, NOTEBOOK_EPOCHS, NOTEBOOK_FOLD, NOTEBOOK_SEED = 64, 13, 0, 42


def parse_train(*flags: str) -> TrainConfig:
    arguments = build_parser().parse_args(["train", "--data-dir", "comp", "--out", "runs/x", *flags])
    return TrainConfig.from_arguments(arguments)


def starter() -> TrainConfig:
    return parse_train("--recipe", "starter").resolved()


def notebook_rate(epoch: int, batch_size: int = NOTEBOOK_BATCH, epochs: int = 10) -> float:
    """What the notebook's `get_lr_callback(Config.batchSize, mode="cos")` sets for 0-based
    `epoch`: its `epochs` argument is left at the function's default, 10; start 5e-5, peak
    6e-6 x batch, floor 1e-5, a linear ramp over 3 epochs, no sustain, then a cosine whose
    period is `epochs - 3 + 3` epochs."""
    start, peak, floor, ramp = 5e-5, 6e-6 * batch_size, 1e-5, 3
    if epoch < ramp:
        return start + epoch * (peak - start) / ramp
    return floor + (peak - floor) * (1 + math.cos(math.pi * (epoch - ramp) / (epochs - ramp + 3))) / 2


def test_starter_learning_rates_are_the_notebooks_per_epoch_values():
    config = starter()
    rates = starter_epoch_rates(config)
    assert config.schedule == "starter_staircase" and len(rates) == NOTEBOOK_EPOCHS
    np.testing.assert_allclose(rates, [notebook_rate(epoch) for epoch in range(NOTEBOOK_EPOCHS)], rtol=1e-12)
    np.testing.assert_allclose(rates, [5e-05, 1.6133e-04, 2.7267e-04, 3.84e-04, 3.7485e-04, 3.4829e-04, 3.0692e-04,
                                       2.5479e-04, 1.97e-04, 1.3921e-04, 8.7084e-05, 4.5714e-05, 1.9152e-05], rtol=1e-4)
    assert min(rates) > 1.9e-5  # a cosine 10 epochs long over 13 epochs never reaches the 1e-5 floor
    # its knobs are the config's: a batch of 32 peaks at 1.92e-4, staircase_epochs 13 reaches further down
    np.testing.assert_allclose(starter_epoch_rates(parse_train("--recipe", "starter", "--batch-size", "32").resolved()),
                               [notebook_rate(epoch, batch_size=32) for epoch in range(NOTEBOOK_EPOCHS)], rtol=1e-12)
    np.testing.assert_allclose(starter_epoch_rates(parse_train("--recipe", "starter", "--staircase-epochs", "13").resolved()),
                               [notebook_rate(epoch, epochs=13) for epoch in range(NOTEBOOK_EPOCHS)], rtol=1e-12)


@pytest.fixture(scope="module")
def subset_path(hms_sample):
    return hms_sample / "train_labels_subset.csv"


@pytest.fixture(scope="module")
def notebook_frame(subset_path) -> pd.DataFrame:
    """train.csv as the notebook splits it: all rows, y = class_label, groups = patient_id."""
    from sklearn.model_selection import StratifiedGroupKFold

    df = pd.read_csv(subset_path)
    df["class_label"] = df["expert_consensus"].map({name: index for index, name in enumerate(NOTEBOOK_CLASSES)})
    splitter = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=NOTEBOOK_SEED)
    df["fold"] = -1
    df = df.reset_index(drop=True)  # the notebook: reset_index(drop=True, inplace=True)
    for fold, (_, valid_idx) in enumerate(splitter.split(df, y=df["class_label"], groups=df["patient_id"])):
        df.loc[valid_idx, "fold"] = fold
    return df


@pytest.fixture(scope="module")
def starter_labels(subset_path) -> pd.DataFrame:
    """The label sample with the starter recipe's folds, as `train` assigns them."""
    config = starter()
    labels = read_train_labels(subset_path)
    folds = make_folds(labels, config.n_splits, config.fold_seed, config.fold_unit)
    return labels.assign(fold=fold_of_rows(labels, folds, "starter folds"))


def test_starter_folds_are_the_notebooks_on_the_real_label_sample(notebook_frame, starter_labels, subset_path):
    assert len(notebook_frame) == 2089
    np.testing.assert_array_equal(starter_labels["fold"].to_numpy(), notebook_frame["fold"].to_numpy())
    # the default recipe's split over one row per eeg_id is an unrelated partition of the same rows
    from sklearn.metrics import adjusted_rand_score

    config = parse_train().resolved()
    labels = read_train_labels(subset_path)
    default = fold_of_rows(labels, make_folds(labels, config.n_splits, config.fold_seed, config.fold_unit), "default")
    assert adjusted_rand_score(notebook_frame["fold"], default) < 0.1


def test_starter_trains_and_validates_on_the_notebooks_rows_and_targets(notebook_frame, starter_labels):
    config = starter()
    sample_df = notebook_frame.groupby("spectrogram_id").head(1).reset_index(drop=True)
    train_df = sample_df[sample_df.fold != NOTEBOOK_FOLD]
    valid_df = sample_df[sample_df.fold == NOTEBOOK_FOLD]
    assert config.fold_list() == [NOTEBOOK_FOLD]
    data = split_fold(config, starter_labels, fold=NOTEBOOK_FOLD)
    # validation: the first row per spectrogram_id of fold 0, in order, against one-hot class_label
    assert data.validation_rows["label_id"].tolist() == valid_df["label_id"].tolist()
    one_hot = np.eye(len(NOTEBOOK_CLASSES))
    np.testing.assert_array_equal(training_targets(data.validation_rows, config.validation_targets),
                                  one_hot[valid_df["class_label"]])
    # training: every epoch the first row per spectrogram_id of the other folds, len // 64 steps
    for epoch in (0, 1):
        drawn = data.train_rows.iloc[data.sampler.epoch_rows(epoch)]
        assert sorted(drawn["label_id"]) == sorted(train_df["label_id"])
    assert data.steps_per_epoch == len(train_df) // NOTEBOOK_BATCH
    drawn = data.sampler.epoch_rows(0)
    class_label = train_df.set_index("label_id")["class_label"]
    np.testing.assert_array_equal(training_targets(data.train_rows, config.labels)[drawn],
                                  one_hot[data.train_rows["label_id"].iloc[drawn].map(class_label).to_numpy()])
    # what the out-of-fold rows are scored against stays the vote fractions (run_folder's true_*)
    votes = valid_df.filter(like="_vote").to_numpy(dtype=float)
    np.testing.assert_allclose(vote_fractions(data.validation_rows), votes / votes.sum(axis=1, keepdims=True),
                               rtol=1e-6)


# One flag per field the starter recipe sets, each giving a value other than the starter's
# (several the default recipe's own value: a flag given with the dataclass default still wins).
OVERRIDES = {
    "arch": (["--arch", "mobilenetv3_large"], "mobilenetv3_large"),
    "input": (["--input", "eeg"], "eeg"),
    "include_rescaling": (["--no-include-rescaling"], False),
    "fold_unit": (["--fold-unit", "eeg"], "eeg"),
    "n_splits": (["--n-splits", "4"], 4),
    "fold_seed": (["--fold-seed", "7"], 7),
    "folds": (["--folds", "all"], None),
    "sampling": (["--sampling", "eeg_random_window"], "eeg_random_window"),
    "labels": (["--labels", "fractions"], "fractions"),
    "validation_rows": (["--validation-rows", "eeg_first"], "eeg_first"),
    "validation_targets": (["--validation-targets", "fractions"], "fractions"),
    "epochs": (["--epochs", "3"], 3),
    "batch_size": (["--batch-size", "32"], 32),
    "schedule": (["--schedule", "warmup_cosine"], "warmup_cosine"),
    "initial_learning_rate": (["--initial-learning-rate", "1e-4"], 1e-4),
    "peak_learning_rate": (["--peak-learning-rate", "1e-3"], 1e-3),
    "final_learning_rate": (["--final-learning-rate", "2e-5"], 2e-5),
    "warmup_epochs": (["--warmup-epochs", "1"], 1.0),
    "staircase_epochs": (["--staircase-epochs", "13"], 13),
    "mixup_p": (["--mixup-p", "0"], 0.0),
    "mixup_alpha": (["--mixup-alpha", "1"], 1.0),
    "time_mask_p": (["--time-mask-p", "0"], 0.0),
    "freq_mask_p": (["--freq-mask-p", "0"], 0.0),
    "mirror_p": (["--mirror-p", "0.5"], 0.5),
    "stage2_min_votes": (["--stage2-min-votes", "10"], 10),
    "seed": (["--seed", "1"], 1),
    "mixed_precision": (["--mixed-precision", "auto"], "auto"),
}


def test_every_value_of_the_starter_recipe_is_overridden_by_its_flag():
    assert set(OVERRIDES) == set(RECIPES["starter"])  # a new recipe field gets its line here
    plain = parse_train("--recipe", "starter")
    for name, (flags, expected) in OVERRIDES.items():
        changed = parse_train("--recipe", "starter", *flags)
        assert plain.differences(changed, ignore=frozenset()) == {name: (RECIPES["starter"][name], expected)}, name
    assert parse_train("--recipe", "starter", "--epochs", "3").resolved().epochs == 3
    assert starter().epochs == NOTEBOOK_EPOCHS and starter().labels == "consensus"
    assert parse_train("--epochs", "3", "--recipe", "starter").epochs == 3  # wherever --recipe stands


def test_the_starter_recipe_is_the_notebook_point_for_point():
    config = starter()
    assert config.recipe == "starter"
    assert (config.arch, config.input, config.mirror_p, config.stage2_min_votes) == (
        "efficientnetv2_b2", "kaggle", 0.0, None)
    assert (config.fold_unit, config.n_splits, config.fold_seed, config.fold_list()) == ("rows", 5, 42, [0])
    assert (config.sampling, config.labels, config.validation_rows, config.validation_targets) == (
        "spectrogram_first", "consensus", "spectrogram_first", "consensus")
    assert (config.epochs, config.batch_size, config.mixed_precision) == (13, 64, "off")
    assert (config.mixup_p, config.mixup_alpha, config.time_mask_p, config.freq_mask_p) == (0.5, 2.0, 0.5, 0.5)
    # no ImageNet weights without a local preset: the cap for random weights stays
    assert config.pretrained is None and config.bn_momentum == 0.99
    assert parse_train("--recipe", "starter", "--pretrained", "presets/b2").resolved().bn_momentum is None


def test_the_default_recipe_is_the_dataclass_defaults():
    assert RECIPES["default"] == {}
    assert parse_train() == parse_train("--recipe", "default") == TrainConfig(data_dir=Path("comp"), out=Path("runs/x"))
    config = parse_train().resolved()
    assert (config.recipe, config.fold_unit, config.validation_rows, config.validation_targets, config.schedule) == (
        "default", "eeg", "eeg_first", "fractions", "warmup_cosine")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    assert recipe_defaults("default") == defaults
    assert recipe_defaults("starter") == {**defaults, **RECIPES["starter"], "recipe": "starter"}
    assert TrainConfig.for_recipe("starter", data_dir=Path("comp"), out=Path("runs/x")) == parse_train("--recipe", "starter")


def test_the_recipe_is_recorded_and_old_configs_read_as_default(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(starter().to_json())
    assert read_config(path) == starter() and json.loads(path.read_text())["recipe"] == "starter"
    # a config.json written before recipes: none of the new fields
    old = json.loads(parse_train().resolved().to_json())
    for name in ("recipe", "fold_unit", "validation_rows", "validation_targets", "schedule", "staircase_epochs"):
        del old[name]
    path.write_text(json.dumps(old))
    assert read_config(path) == parse_train().resolved() and read_config(path).recipe == "default"
    with pytest.raises(SystemExit):
        parse_train("--recipe", "notebook")
    path.write_text(json.dumps({**old, "recipe": "notebook"}))
    with pytest.raises(ValueError, match="unknown recipe 'notebook'"):
        read_config(path).resolved()


def test_the_staircase_needs_no_warm_up_shorter_than_the_run_but_a_positive_cosine():
    assert parse_train("--recipe", "starter", "--epochs", "2").resolved().epochs == 2  # all of it in the ramp
    with pytest.raises(ValueError, match="staircase_epochs"):
        parse_train("--recipe", "starter", "--warmup-epochs", "13").resolved()
    with pytest.raises(ValueError, match="warmup_epochs"):
        parse_train("--epochs", "2").resolved()  # warmup_cosine still needs its decay


def test_choices_have_one_home():
    assert tuple(VALIDATION_ROW_CHOICES) == VALIDATION_ROWS and tuple(SAMPLERS) == SAMPLINGS
