"""Every training hyperparameter in one typed object.

`TrainConfig` is the single source of the `train` command's flags (names, defaults, help)
and of the `config.json` written next to the weights: its *resolved* form, where every
"automatic" value is replaced by the number actually used, so a checkpoint describes itself.
Its dataclass defaults are the `default` recipe; `--recipe` (recipes.py) sets other
defaults, and a flag given explicitly wins over its recipe's value.
"""

import argparse
import copy
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from hms_offline.features.views import INPUT_CHOICES
from hms_offline.models.registry import ARCHITECTURES, check_arch
from hms_offline.training.recipes import DEFAULT, RECIPES, STARTER, recipe_values

LABEL_MODES = ("fractions", "consensus")
SAMPLINGS = ("eeg_random_window", "spectrogram_first")
FOLD_UNITS = ("eeg", "rows")
VALIDATION_ROWS = ("eeg_first", "spectrogram_first")
SCHEDULES = ("warmup_cosine", "starter_staircase")
MIXED_PRECISION_MODES = ("auto", "on", "off")
PROGRESS_MODES = {"bar": 1, "epoch": 2, "off": 0}  # -> Keras `fit(verbose=...)`

# The starter's learning-rate rule: peak = 6e-6 x batch size (3.84e-4 at batch 64).
PEAK_LEARNING_RATE_PER_SAMPLE = 6e-6

# From random weights, MobileNetV3's own BatchNormalization momentum (0.999) leaves its
# moving statistics far from the batch statistics for thousands of steps, so validation and
# inference lag training; EfficientNetV2's own (0.9) is below the cap and stays.
FROM_SCRATCH_BN_MOMENTUM = 0.99

# Fields that may differ when a run folder is trained again (resumed or extended by folds).
# (The replica count may change, the global batch may not: each optimizer step sees the same
# batch whatever the hardware splits it into.)
RESUMABLE_DIFFERENCES = frozenset(
    {"data_dir", "out", "work_dir", "spectrogram_dir", "folds", "folds_file", "progress", "cpu_replicas"}
)


def _option(default, help: str, **argparse_options):
    return field(default=default, metadata={"help": help, **argparse_options})


def _required(help: str):
    return field(metadata={"help": help})


def parse_folds(text: str) -> list[int] | None:
    """`all` -> None (every fold); `0,2` -> [0, 2]."""
    if text.strip().lower() == "all":
        return None
    try:
        folds = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--folds takes 'all' or fold numbers like '0,2', got {text!r}") from None
    if not folds:
        raise argparse.ArgumentTypeError("--folds is empty")
    return folds


@dataclass
class TrainConfig:
    data_dir: Path = _required("competition folder: train.csv + train_spectrograms/ (read only)")
    out: Path = _required("run folder: weights, folds.csv, out-of-fold predictions, reports")
    recipe: str = _option(
        DEFAULT, f"a named set of defaults: {DEFAULT} (this project's) or {STARTER} (the KerasCV starter notebook "
        "point for point); every flag given explicitly still wins", choices=tuple(RECIPES),
    )
    arch: str = _option("mobilenetv3_large", "backbone from the model registry", choices=tuple(ARCHITECTURES))
    folds: list[int] | None = _option(
        None, "folds to train: 'all' or e.g. '0,2'", parse=parse_folds, metavar="all|0,2"
    )
    input: str = _option(
        "kaggle", "model input: the Kaggle spectrogram (the starter's), the spectrogram computed from the raw "
        "EEG in the bipolar montage, or both stacked into one image's channels", choices=tuple(INPUT_CHOICES),
    )
    n_splits: int = _option(5, "number of StratifiedGroupKFold folds")
    fold_seed: int = _option(42, "StratifiedGroupKFold random_state")
    fold_unit: str = _option(
        "eeg", "what StratifiedGroupKFold splits (grouped by patient_id, stratified by expert_consensus): one row "
        "per eeg_id, or every train.csv row as the starter does; folds.csv maps each eeg_id to its fold either way",
        choices=FOLD_UNITS,
    )
    folds_file: Path | None = _option(
        None, "reuse another run's folds.csv so out-of-fold predictions line up"
    )
    epochs: int = _option(13, "epochs per fold")
    batch_size: int = _option(64, "global batch size (split across replicas)")
    labels: str = _option(
        "fractions", "training targets: vote fractions, or the starter's one-hot consensus",
        choices=LABEL_MODES,
    )
    sampling: str = _option(
        "eeg_random_window",
        "training windows per epoch: one random labelled window per eeg_id, or the "
        "starter's first row per spectrogram_id",
        choices=SAMPLINGS,
    )
    validation_rows: str = _option(
        "eeg_first", "validation windows of a fold: the first labelled row of each eeg_id (like the test set), or "
        "the starter's first row per spectrogram_id; they are the out-of-fold rows",
        choices=VALIDATION_ROWS,
    )
    validation_targets: str = _option(
        "fractions", "targets of val_loss (which picks the kept epoch): vote fractions, or the starter's one-hot "
        "consensus; out-of-fold rows and CV KL are scored against vote fractions either way",
        choices=LABEL_MODES,
    )
    schedule: str = _option(
        "warmup_cosine", "learning-rate schedule: per step, linear warm-up then half cosine to the floor; or the "
        "starter's per-epoch staircase (its get_lr_callback, constant within an epoch)",
        choices=SCHEDULES,
    )
    initial_learning_rate: float = _option(5e-5, "learning rate at step 0 (warm-up start)")
    peak_learning_rate: float | None = _option(
        None, f"learning rate at the end of warm-up (default: {PEAK_LEARNING_RATE_PER_SAMPLE:g} x batch size)"
    )
    final_learning_rate: float = _option(
        1e-5, "learning rate the cosine decay ends at (warmup_cosine: at the last step; the staircase's lr_min)"
    )
    warmup_epochs: float = _option(3.0, "epochs of linear warm-up (may be fractional)")
    staircase_epochs: int = _option(
        10, "starter_staircase only: the `epochs` argument of the starter's get_lr_callback, which sets its cosine's "
        "length (staircase_epochs - warmup_epochs + 3 epochs); the notebook left it at the function's own 10 "
        "while training 13 epochs"
    )
    mixup_p: float = _option(0.5, "probability a training batch gets keras-cv MixUp")
    mixup_alpha: float = _option(2.0, "MixUp alpha")
    time_mask_p: float = _option(0.5, "probability of a keras-cv RandomCutout time mask")
    freq_mask_p: float = _option(0.5, "probability of a keras-cv RandomCutout frequency mask")
    mirror_p: float = _option(
        0.0, "probability a training image is mirrored left <-> right (its LL/RL and LP/RP chains swapped)"
    )
    stage2_min_votes: int | None = _option(
        None, "train a second stage, from the first's best weights, on the training rows with at least "
        "this many votes (e.g. 10; default: one stage)"
    )
    stage2_epochs: int = _option(4, "epochs of the second stage")
    stage2_learning_rate: float = _option(
        1e-4, "learning rate the second stage starts at (cosine decay to --final-learning-rate, no warm-up, "
        "whatever --schedule)"
    )
    bn_momentum: float | None = _option(
        None,
        "cap on every BatchNormalization momentum (default: "
        f"{FROM_SCRATCH_BN_MOMENTUM} from random weights, the backbone's own with --pretrained; "
        "MobileNetV3's own 0.999 needs thousands of steps before its moving statistics fit)",
    )
    pretrained: Path | None = _option(
        None, "local keras-cv preset folder (or attached Kaggle Model) with backbone weights; never downloaded"
    )
    include_rescaling: bool = _option(
        True, "keep the backbone's Rescaling(1/255) input layer (keras-cv preset default)",
        action=argparse.BooleanOptionalAction,
    )
    seed: int = _option(42, "seed for sampling, augmentation and initialisation")
    max_samples: int | None = _option(None, "use at most this many train.csv rows (smoke runs)")
    steps_per_epoch: int | None = _option(
        None, "training batches per epoch (default: one pass over the sampled windows)"
    )
    work_dir: Path | None = _option(
        None, "where converted .npy spectrograms go (default: ~/.cache/hms_offline/<data-dir>-<hash>)"
    )
    spectrogram_dir: Path | None = _option(
        None, "folder of already converted <spectrogram_id>.npy files; skips conversion"
    )
    mixed_precision: str = _option(
        "auto", "mixed precision: auto = on with a GPU or TPU", choices=MIXED_PRECISION_MODES
    )
    cpu_replicas: int | None = _option(
        None, "for tests and debugging: train under MirroredStrategy over this many logical CPU devices (the CPU "
        "split before TensorFlow initialises), the code path of several GPUs, whatever hardware is attached; "
        "--batch-size stays the global batch and must divide by it; may change when a run resumes "
        "(default: the hardware's strategy)",
    )
    progress: str = _option(
        "bar", "Keras progress: a bar, one line per epoch, or off", choices=tuple(PROGRESS_MODES)
    )

    def resolved(self) -> "TrainConfig":
        """Absolute paths, the peak learning rate filled in; checks every value."""
        paths = {
            f.name: Path(getattr(self, f.name)).expanduser().resolve()
            for f in dataclasses.fields(self)
            if _is_path(f.name) and getattr(self, f.name) is not None
        }
        config = dataclasses.replace(self, **paths)
        if config.peak_learning_rate is None:
            config.peak_learning_rate = PEAK_LEARNING_RATE_PER_SAMPLE * config.batch_size
        if config.bn_momentum is None and config.pretrained is None:
            config.bn_momentum = FROM_SCRATCH_BN_MOMENTUM
        config._check()
        return config

    def _check(self) -> None:
        """Every value in range (for a resolved config: the peak learning rate is set)."""
        check_arch(self.arch)
        recipe_values(self.recipe)  # a known recipe
        choices = {"labels": LABEL_MODES, "sampling": SAMPLINGS, "fold_unit": FOLD_UNITS,
                   "validation_rows": VALIDATION_ROWS, "validation_targets": LABEL_MODES, "schedule": SCHEDULES,
                   "mixed_precision": MIXED_PRECISION_MODES}
        for name, known in choices.items():
            if getattr(self, name) not in known:
                raise ValueError(f"{name} must be one of {', '.join(known)}, got {getattr(self, name)!r}")
        positive = ("n_splits", "epochs", "batch_size", "max_samples", "steps_per_epoch", "stage2_min_votes",
                    "stage2_epochs", "staircase_epochs", "cpu_replicas")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.cpu_replicas is not None:
            check_batch_splits(self.batch_size, self.cpu_replicas)
        if self.n_splits < 2:
            raise ValueError(f"n_splits must be >= 2, got {self.n_splits}")
        if self.folds is not None and not all(0 <= fold < self.n_splits for fold in self.folds):
            raise ValueError(f"folds {self.folds} must lie in 0..{self.n_splits - 1}")
        if self.schedule == "warmup_cosine" and not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be >= 0 and less than epochs ({self.epochs})"
            )
        if self.schedule == "starter_staircase" and not 0 <= self.warmup_epochs < self.staircase_epochs + 3:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be >= 0 and less than staircase_epochs + 3 "
                f"({self.staircase_epochs + 3}): the staircase's cosine lasts staircase_epochs - warmup_epochs + 3"
            )
        for name in ("mixup_p", "time_mask_p", "freq_mask_p", "mirror_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.bn_momentum is not None and not 0 <= self.bn_momentum < 1:
            raise ValueError(f"bn_momentum must be in [0, 1), got {self.bn_momentum}")
        if not 0 < self.final_learning_rate <= self.peak_learning_rate:
            raise ValueError(
                f"final_learning_rate ({self.final_learning_rate}) must be > 0 and "
                f"<= peak_learning_rate ({self.peak_learning_rate})"
            )
        if self.stage2_min_votes is not None and not 0 < self.final_learning_rate <= self.stage2_learning_rate:
            raise ValueError(
                f"stage2_learning_rate ({self.stage2_learning_rate}) must be >= "
                f"final_learning_rate ({self.final_learning_rate})"
            )
        if self.initial_learning_rate < 0:
            raise ValueError(f"initial_learning_rate must be >= 0, got {self.initial_learning_rate}")

    @property
    def view(self) -> str:
        """The input view's name (features/views.py) that `input` chooses."""
        return INPUT_CHOICES[self.input]

    def fold_list(self) -> list[int]:
        return list(range(self.n_splits)) if self.folds is None else list(self.folds)

    def to_json(self) -> str:
        values = {
            name: str(value) if isinstance(value, Path) else value
            for name, value in dataclasses.asdict(self).items()
        }
        return json.dumps(values, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}")
        return cls(**{name: _from_json_value(name, value) for name, value in raw.items()})

    @classmethod
    def for_recipe(cls, recipe: str = DEFAULT, **values) -> "TrainConfig":
        """The config of `recipe` with `values` (explicit choices) over its defaults."""
        return cls(**{**copy.deepcopy(recipe_values(recipe)), **values, "recipe": recipe})

    @classmethod
    def from_arguments(cls, arguments: argparse.Namespace) -> "TrainConfig":
        """From `add_arguments`' flags: a flag left out is absent from `arguments`, so its
        recipe's value (else the dataclass default) fills it."""
        given = {f.name: getattr(arguments, f.name) for f in dataclasses.fields(cls) if hasattr(arguments, f.name)}
        return cls.for_recipe(given.pop("recipe", DEFAULT), **given)

    def differences(self, other: "TrainConfig", ignore=RESUMABLE_DIFFERENCES) -> dict[str, tuple]:
        """{field: (self's value, other's value)} for the fields that differ."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)
        }


def check_batch_splits(batch_size: int, replicas: int) -> None:
    """The global batch splits evenly across the replicas (no replica gets a smaller share)."""
    if batch_size % replicas:
        raise ValueError(
            f"batch_size {batch_size} (the global batch) does not divide by the {replicas} replicas it is split "
            f"across; choose a multiple of {replicas}"
        )


def _hints() -> dict:
    return typing.get_type_hints(TrainConfig)


def _is_path(name: str) -> bool:
    hint = _hints()[name]
    return hint is Path or Path in typing.get_args(hint)


def _from_json_value(name: str, value):
    return Path(value) if value is not None and _is_path(name) else value


def _argument_type(hint):
    """The argparse `type` for a field annotation such as `int | None` or `Path`."""
    options = [arg for arg in typing.get_args(hint) if arg is not type(None)] or [hint]
    return options[0]


def recipe_defaults(recipe: str) -> dict:
    """Every field's default under `recipe` (the required fields left out)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    return {**defaults, **copy.deepcopy(recipe_values(recipe)), "recipe": recipe}


def _shown(name: str, value) -> str:
    if name == "folds" and value is None:
        return "all"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return "on" if value else "off"
    return "automatic" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def add_arguments(parser: argparse.ArgumentParser, exclude: typing.Collection[str] = ()) -> None:
    """One flag per TrainConfig field (but the fields in `exclude`): `--batch-size` for
    `batch_size`. A flag left out is absent from the parsed namespace (argparse.SUPPRESS), so
    `TrainConfig.from_arguments` can tell it from one given with the default's value and fill
    it from `--recipe`. The help shows each recipe's default where they differ."""
    hints = _hints()
    defaults = {name: recipe_defaults(name) for name in RECIPES}
    unknown = set(exclude) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"not TrainConfig fields: {sorted(unknown)}")
    for f in dataclasses.fields(TrainConfig):
        if f.name in exclude:
            continue
        metadata = dict(f.metadata)
        options = {"help": metadata.pop("help").replace("%", "%%")}
        parse = metadata.pop("parse", None)
        if f.default is dataclasses.MISSING:
            options["required"] = True
        else:
            options["default"] = argparse.SUPPRESS
            shown = {recipe: _shown(f.name, values[f.name]) for recipe, values in defaults.items()}
            if f.name == "recipe":
                options["help"] += f" (default: {DEFAULT})"
            elif len(set(shown.values())) > 1:
                options["help"] += " (" + "; ".join(f"{recipe}: {value}" for recipe, value in shown.items()) + ")"
            elif f.default is not None and "default" not in options["help"]:
                options["help"] += f" (default: {shown[DEFAULT]})"
        if metadata.get("action") is None:
            options["type"] = parse or _argument_type(hints[f.name])
        options.update(metadata)
        parser.add_argument("--" + f.name.replace("_", "-"), **options)


def read_config(path: Path) -> TrainConfig:
    return TrainConfig.from_json(Path(path).read_text())
