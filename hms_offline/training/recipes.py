"""Named sets of training defaults: `train --recipe default|starter`.

A recipe maps TrainConfig fields to the values it sets; a flag given on the command line
still wins over its recipe's value. `default` is this project's recipe (the TrainConfig
dataclass defaults). `starter` is the KerasCV starter notebook point for point, as its code
does it (checked cell by cell, see DESIGN.md "The starter notebook's code"): folds over all
train.csv rows, its sampling, one-hot targets, its validation rows and targets, its
per-epoch learning-rate staircase, float32, fold 0 of EfficientNetV2 B2. It pins every
field that makes up the recipe, also those equal to today's defaults, so it stays the
starter's if the defaults move on.

What it cannot reproduce by itself: the starter began from ImageNet weights
(`efficientnetv2_b2_imagenet`); here those come only from a local preset (`--pretrained`).

Pure data: no import of the config (config.py imports this).
"""

DEFAULT = "default"
STARTER = "starter"

RECIPES: dict[str, dict] = {
    DEFAULT: {},
    STARTER: {
        # model
        "arch": "efficientnetv2_b2",  # its preset: efficientnetv2_b2_imagenet
        "input": "kaggle",
        "include_rescaling": True,  # the keras-cv preset default
        # folds: StratifiedGroupKFold(5, shuffle=True, random_state=42) over all rows, fold 0 only
        "fold_unit": "rows",
        "n_splits": 5,
        "fold_seed": 42,
        "folds": [0],
        # data: first row per spectrogram_id, one-hot expert_consensus, for training and validation
        "sampling": "spectrogram_first",
        "labels": "consensus",
        "validation_rows": "spectrogram_first",
        "validation_targets": "consensus",
        # optimisation: 13 epochs of batch 64, get_lr_callback(64, mode="cos") (its epochs=10)
        "epochs": 13,
        "batch_size": 64,
        "schedule": "starter_staircase",
        "initial_learning_rate": 5e-5,
        "peak_learning_rate": None,  # 6e-6 x batch size
        "final_learning_rate": 1e-5,
        "warmup_epochs": 3.0,
        "staircase_epochs": 10,
        # augmentation: MixUp(2.0) and the two RandomCutouts, each p = 0.5; nothing else
        "mixup_p": 0.5,
        "mixup_alpha": 2.0,
        "time_mask_p": 0.5,
        "freq_mask_p": 0.5,
        "mirror_p": 0.0,
        "stage2_min_votes": None,
        "seed": 42,
        "mixed_precision": "off",  # it trains float32
    },
}


def recipe_values(name: str) -> dict:
    """The field values recipe `name` sets (a copy)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return dict(RECIPES[name])
