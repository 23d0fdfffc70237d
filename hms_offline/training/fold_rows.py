"""Which rows of train.csv a fold trains and is validated on, and how many steps an epoch
takes; no TensorFlow (fold.py trains on them).

Training rows: every row outside the fold (with a second stage, those with enough votes),
drawn per epoch by the configured sampling. Validation rows: of the fold's rows, the first
per eeg_id (the default) or per spectrogram_id (the starter's); they are the out-of-fold rows.
"""

import dataclasses

import pandas as pd

from hms_offline.training.config import TrainConfig
from hms_offline.training.labels import make_sampler, validation_positions, vote_counts


@dataclasses.dataclass
class FoldData:
    train_rows: pd.DataFrame
    validation_rows: pd.DataFrame  # one window per eeg_id (per spectrogram_id with the starter's choice)
    sampler: object
    steps_per_epoch: int


def split_fold(config: TrainConfig, labels: pd.DataFrame, fold: int, min_votes: int | None = None) -> FoldData:
    train_rows = labels[labels["fold"] != fold].reset_index(drop=True)
    if min_votes is not None:
        train_rows = train_rows[vote_counts(train_rows) >= min_votes].reset_index(drop=True)
    held_out = labels[labels["fold"] == fold].reset_index(drop=True)
    validation_rows = held_out.iloc[validation_positions(held_out, config.validation_rows)].reset_index(drop=True)
    if train_rows.empty or validation_rows.empty:
        votes = f" with at least {min_votes} votes" if min_votes is not None else ""
        raise ValueError(
            f"fold {fold}: {len(train_rows)} training rows{votes} and {len(validation_rows)} validation rows; "
            "too few train.csv rows for the folds (see --max-samples, --stage2-min-votes)"
        )
    sampler = make_sampler(config.sampling, train_rows, config.seed + fold)
    steps = config.steps_per_epoch or max(1, sampler.rows_per_epoch // config.batch_size)
    return FoldData(train_rows, validation_rows, sampler, steps)
