"""hms_offline.synthetic: a folder shaped like the competition's, with a learnable signal."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from hms_offline.constants import (
    CLASSES,
    CONSENSUS_NAMES,
    EEG_CHANNELS,
    EEG_SAMPLE_RATE_HZ,
    ID_COLUMN,
    SPECTROGRAM_COLUMNS,
    SPECTROGRAM_STEP_SECONDS,
    SPECTROGRAM_TIME_COLUMN,
    VOTE_COLUMNS,
    WINDOW_COLUMNS,
)
from hms_offline.convert import read_eeg, read_spectrogram
from hms_offline.features import eeg as eeg_view
from hms_offline.features import spectrogram as spectrogram_view
from hms_offline.features.spectrogram import model_input, window_start
from hms_offline.synthetic import write
from hms_offline.synthetic.plan import plan_train
from hms_offline.synthetic.signatures import EEG_ONLY_PAIR, SIGNATURES
from hms_offline.synthetic.write import MARKER_NAME, write_competition

from conftest import REPO_ROOT
N_TRAIN, N_TEST, SEED = 200, 20, 0
# The competition's train.csv header, in its order (checked against the real sample below).
TRAIN_HEADER = (
    "eeg_id", "eeg_sub_id", "eeg_label_offset_seconds", "spectrogram_id", "spectrogram_sub_id",
    "spectrogram_label_offset_seconds", "label_id", "patient_id", "expert_consensus",
    *VOTE_COLUMNS,
)
EEG_WINDOW_ROWS = 50 * EEG_SAMPLE_RATE_HZ  # a 50 s labelled EEG window: 10,000 rows


@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    return write_competition(tmp_path_factory.mktemp("synth") / "comp", N_TRAIN, N_TEST, SEED)


@pytest.fixture(scope="module")
def train(comp) -> pd.DataFrame:
    return pd.read_csv(comp / "train.csv")


@pytest.fixture(scope="module")
def test_frame(comp) -> pd.DataFrame:
    return pd.read_csv(comp / "test.csv")


@pytest.fixture(scope="module")
def train_spectrograms(comp) -> dict[int, pd.DataFrame]:
    return {int(p.stem): pd.read_parquet(p) for p in _parquets(comp, "train_spectrograms")}


def _parquets(comp: Path, folder: str) -> list[Path]:
    return sorted((comp / folder).glob("*.parquet"))


def _spectrogram(frame: pd.DataFrame) -> np.ndarray:
    """`[400, T]` as the starter builds it: drop `time`, fillna(0), transpose."""
    return frame.drop(columns=SPECTROGRAM_TIME_COLUMN).fillna(0).to_numpy().T


def _fractions(frame: pd.DataFrame) -> np.ndarray:
    votes = frame[list(VOTE_COLUMNS)].to_numpy(float)
    return votes / votes.sum(axis=1, keepdims=True)


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ layout and dtypes


def test_layout_columns_and_dtypes_follow_the_constants(comp, train, test_frame):
    assert sorted(p.name for p in comp.iterdir()) == sorted([
        MARKER_NAME, "sample_submission.csv", "test.csv", "test_eegs", "test_solution.csv",
        "test_spectrograms", "train.csv", "train_eegs", "train_spectrograms",
    ])
    assert tuple(train.columns) == TRAIN_HEADER
    for column in TRAIN_HEADER:
        if column == "expert_consensus":
            assert pd.api.types.is_string_dtype(train[column])
        elif column.endswith("_offset_seconds"):
            assert train[column].dtype == "float64", column
        else:
            assert train[column].dtype == "int64", column
    # Offsets are written like the real file's "60.0", votes as plain integers.
    first_row = (comp / "train.csv").read_text().splitlines()[1].split(",")
    assert first_row[2].endswith(".0") and first_row[5].endswith(".0")
    assert all(field.isdigit() for field in first_row[9:])
    assert tuple(test_frame.columns) == ("spectrogram_id", ID_COLUMN, "patient_id")
    assert all(dtype == "int64" for dtype in test_frame.dtypes)
    for name in ("sample_submission.csv", "test_solution.csv"):
        frame = pd.read_csv(comp / name)
        assert tuple(frame.columns) == (ID_COLUMN, *VOTE_COLUMNS)
        assert frame[ID_COLUMN].dtype == "int64"
        assert all(frame[c].dtype == "float64" for c in VOTE_COLUMNS)

    for folder, time_type in (("train_spectrograms", "int64"), ("test_spectrograms", "int16")):
        schema = pq.read_schema(_parquets(comp, folder)[0])
        assert tuple(schema.names) == (SPECTROGRAM_TIME_COLUMN, *SPECTROGRAM_COLUMNS)
        assert str(schema.field(SPECTROGRAM_TIME_COLUMN).type) == time_type
        assert {str(schema.field(c).type) for c in SPECTROGRAM_COLUMNS} == {"float"}
    for folder in ("train_eegs", "test_eegs"):
        schema = pq.read_schema(_parquets(comp, folder)[0])
        assert tuple(schema.names) == EEG_CHANNELS
        assert {str(t) for t in schema.types} == {"float"}


def test_columns_and_dtypes_equal_the_real_sample(comp, hms_sample):
    real_train = pd.read_csv(hms_sample / "train_labels_subset.csv")
    ours = pd.read_csv(comp / "train.csv")
    assert list(ours.columns) == list(real_train.columns)
    assert list(ours.dtypes) == list(real_train.dtypes)
    for name in ("test.csv", "sample_submission.csv"):
        real, mine = pd.read_csv(hms_sample / name), pd.read_csv(comp / name)
        assert list(mine.columns) == list(real.columns), name
        assert list(mine.dtypes) == list(real.dtypes), name
    solution = pd.read_csv(comp / "test_solution.csv")
    real_submission = pd.read_csv(hms_sample / "sample_submission.csv")
    assert list(solution.columns) == list(real_submission.columns)
    assert list(solution.dtypes) == list(real_submission.dtypes)
    for folder in ("train_spectrograms", "test_spectrograms", "train_eegs", "test_eegs"):
        real_path = _parquets(hms_sample, folder)[0]
        real_schema = pq.read_schema(real_path)
        real_dtypes = list(pd.read_parquet(real_path).dtypes)
        for path in _parquets(comp, folder)[:3]:
            schema = pq.read_schema(path)
            assert schema.names == real_schema.names, folder
            assert schema.types == real_schema.types, folder
            # Read back through pandas exactly as the real files are.
            assert list(pd.read_parquet(path).dtypes) == real_dtypes, folder


def test_vote_counts_look_like_the_real_sample(train, hms_sample):
    real = pd.read_csv(hms_sample / "train_labels_subset.csv")
    ours_total = train[list(VOTE_COLUMNS)].sum(axis=1)
    real_total = real[list(VOTE_COLUMNS)].sum(axis=1)
    assert ours_total.max() <= 28 and real_total.max() <= 28
    assert ours_total.mode()[0] == real_total.mode()[0] == 3
    ours_mixed = ((train[list(VOTE_COLUMNS)] > 0).sum(axis=1) > 1).mean()
    real_mixed = ((real[list(VOTE_COLUMNS)] > 0).sum(axis=1) > 1).mean()
    assert abs(ours_mixed - real_mixed) < 0.25, (ours_mixed, real_mixed)


# ------------------------------------------------------------------ train.csv


def test_train_rows_votes_and_consensus(train):
    assert len(train) == N_TRAIN
    votes = train[list(VOTE_COLUMNS)].to_numpy()
    totals = votes.sum(axis=1)
    assert (votes >= 0).all() and totals.min() >= 1 and totals.max() <= 28
    assert (totals == 3).mean() > 0.25 and (totals >= 10).mean() > 0.1  # mostly 3, some large
    assert ((votes > 0).sum(axis=1) > 1).mean() > 0.2  # often mixed
    np.testing.assert_array_equal(
        train["expert_consensus"].to_numpy(), np.array(CONSENSUS_NAMES)[votes.argmax(axis=1)]
    )
    assert set(train["expert_consensus"]) == set(CONSENSUS_NAMES)
    assert train["label_id"].is_unique
    assert (train[["eeg_id", "spectrogram_id", "label_id"]] > 10_000).all().all()


def test_train_structure_eegs_spectrograms_patients(train):
    for _, rows in train.groupby("eeg_id"):
        assert rows["eeg_sub_id"].tolist() == list(range(len(rows)))
        assert rows["eeg_label_offset_seconds"].is_monotonic_increasing
        assert rows["eeg_label_offset_seconds"].iloc[0] == 0.0
        assert rows["spectrogram_id"].nunique() == 1 and rows["patient_id"].nunique() == 1
        shift = rows["spectrogram_label_offset_seconds"] - rows["eeg_label_offset_seconds"]
        assert shift.nunique() == 1 and shift.iloc[0] >= 0
    for _, rows in train.groupby("spectrogram_id"):
        assert rows["patient_id"].nunique() == 1
        assert sorted(rows["spectrogram_sub_id"]) == list(range(len(rows)))
    per_eeg = train.groupby("eeg_id").size()
    assert per_eeg.max() > 1 and (per_eeg == 1).any()
    assert train.groupby("spectrogram_id")["eeg_id"].nunique().max() > 1
    assert train.groupby("patient_id")["eeg_id"].nunique().max() > 1
    assert train["patient_id"].nunique() >= 10


@pytest.mark.parametrize("seed", range(12))
def test_small_sets_keep_their_guarantees(seed):
    """Six classes from 30 rows, ten patients from 60 rows: for every seed, not by luck."""
    for n_train in (30, 31, 45, 60):
        frame, _, _ = plan_train(np.random.default_rng(seed), n_train, set())
        assert len(frame) == n_train
        assert set(frame["expert_consensus"]) == set(CONSENSUS_NAMES)
        if n_train >= 60:
            assert frame["patient_id"].nunique() >= 10
    tiny, _, _ = plan_train(np.random.default_rng(seed), 1, set())
    assert len(tiny) == 1


# ------------------------------------------------------------------ spectrograms and EEGs


def test_every_labelled_window_lies_inside_its_spectrogram(train, train_spectrograms):
    for spectrogram_id, rows in train.groupby("spectrogram_id"):
        n_rows = len(train_spectrograms[spectrogram_id])
        assert n_rows > WINDOW_COLUMNS
        for offset in rows["spectrogram_label_offset_seconds"]:
            assert offset // SPECTROGRAM_STEP_SECONDS + WINDOW_COLUMNS <= n_rows
            assert window_start(n_rows, offset) + WINDOW_COLUMNS <= n_rows


def test_every_labelled_eeg_window_lies_inside_its_eeg(comp, train):
    for eeg_id, rows in train.groupby("eeg_id"):
        n_rows = pq.ParquetFile(comp / "train_eegs" / f"{eeg_id}.parquet").metadata.num_rows
        assert n_rows >= EEG_WINDOW_ROWS
        assert n_rows == (rows["eeg_label_offset_seconds"].max() + 50) * EEG_SAMPLE_RATE_HZ


def test_spectrogram_values_times_and_nans(comp, train, test_frame, train_spectrograms):
    all_nan_rows = {"train_spectrograms": 0, "test_spectrograms": 0}
    finite = []
    for folder, time_dtype in (("train_spectrograms", np.int64), ("test_spectrograms", np.int16)):
        paths = _parquets(comp, folder)
        ids = train["spectrogram_id"] if folder.startswith("train") else test_frame["spectrogram_id"]
        assert sorted(int(p.stem) for p in paths) == sorted(set(ids))
        for path in paths:
            frame = train_spectrograms[int(path.stem)] if folder.startswith("train") else pd.read_parquet(path)
            time = frame[SPECTROGRAM_TIME_COLUMN].to_numpy()
            assert time.dtype == time_dtype
            np.testing.assert_array_equal(time, 1 + SPECTROGRAM_STEP_SECONDS * np.arange(len(frame)))
            if folder.startswith("test"):
                assert len(frame) == WINDOW_COLUMNS
            values = frame.drop(columns=SPECTROGRAM_TIME_COLUMN).to_numpy()
            assert values.dtype == np.float32
            all_nan_rows[folder] += int(np.isnan(values).all(axis=1).sum())
            finite.append(values[np.isfinite(values)][::7])  # a sample keeps the quantiles fast
    assert all_nan_rows["train_spectrograms"] > 0 and all_nan_rows["test_spectrograms"] > 0
    finite = np.concatenate(finite)
    assert finite.min() >= np.float32(0.01) and finite.max() <= 15_000
    q01, q50, q99 = np.quantile(finite, [0.01, 0.5, 0.99])
    assert q01 < 0.2 and 0.05 < q50 < 5 and 5 < q99 < 1000  # real: 0.02-0.04, 0.1-0.3, 22-49
    assert finite.max() > 1000  # artefacts reach the real files' thousands
    np.testing.assert_array_equal(finite, np.round(finite.astype(np.float64), 2).astype(np.float32))


def test_eeg_files_values(comp, test_frame):
    paths = _parquets(comp, "test_eegs")
    assert sorted(int(p.stem) for p in paths) == sorted(test_frame[ID_COLUMN])
    for path in paths[:5] + _parquets(comp, "train_eegs")[:5]:
        frame = pd.read_parquet(path)
        assert tuple(frame.columns) == EEG_CHANNELS
        if "test_eegs" in str(path):
            assert len(frame) == EEG_WINDOW_ROWS
        eeg = frame.drop(columns="EKG").to_numpy()
        assert eeg.dtype == np.float32 and np.isfinite(eeg).all()
        stds = eeg.std(axis=0)
        assert 10 < np.median(stds) < 80  # real: ~30-55 microvolts
        assert 50 < np.abs(eeg - eeg.mean(axis=0)).max() < 1000  # a few hundred


def test_test_csv_submission_and_solution(comp, test_frame):
    assert len(test_frame) == N_TEST and test_frame[ID_COLUMN].is_unique
    submission = pd.read_csv(comp / "sample_submission.csv")
    solution = pd.read_csv(comp / "test_solution.csv")
    assert submission[ID_COLUMN].tolist() == test_frame[ID_COLUMN].tolist()
    assert solution[ID_COLUMN].tolist() == test_frame[ID_COLUMN].tolist()
    np.testing.assert_array_equal(submission[list(VOTE_COLUMNS)].to_numpy(), 1 / 6)
    truth = solution[list(VOTE_COLUMNS)].to_numpy()
    assert ((truth >= 0) & (truth <= 1)).all()
    np.testing.assert_allclose(truth.sum(axis=1), 1.0)
    assert (truth.max(axis=1) < 1).any()  # some test rows are mixed too
    # Test ids never collide with train ids.
    train = pd.read_csv(comp / "train.csv")
    assert not set(test_frame[ID_COLUMN]) & set(train[ID_COLUMN])
    assert not set(test_frame["spectrogram_id"]) & set(train["spectrogram_id"])


# ------------------------------------------------------------------ learnability


def _softmax_regression(x_train, y_train, x_eval, steps=300, lr=0.5, l2=1e-2):
    """Multinomial logistic regression on soft targets, full-batch gradient descent (numpy)."""
    weights = np.zeros((x_train.shape[1], y_train.shape[1]))
    bias = np.zeros(y_train.shape[1])

    def predict(x):
        logits = x @ weights + bias
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    for _ in range(steps):
        grad = (predict(x_train) - y_train) / len(x_train)
        weights -= lr * (x_train.T @ grad + l2 * weights)
        bias -= lr * grad.sum(axis=0)
    return predict(x_eval)


def _kl(truth, pred):
    """Kaggle's metric: mean over rows of sum_c y log(y / p) where y > 0."""
    pred = np.clip(pred, 1e-15, 1 - 1e-15)
    safe = np.where(truth > 0, truth, 1.0)
    return float(np.mean(np.sum(np.where(truth > 0, truth * np.log(safe / pred), 0.0), axis=1)))


def _pooled(image: np.ndarray) -> np.ndarray:
    """`[400, 300, 3]` model input -> 80 features: time mean of 5-row frequency blocks."""
    return image[..., 0].reshape(len(SPECTROGRAM_COLUMNS) // 5, 5, WINDOW_COLUMNS).mean(axis=(1, 2))


@pytest.mark.slow  # fits a softmax regression per fold
def test_spectrogram_signal_is_learnable_from_model_input(comp, train, test_frame, train_spectrograms):
    cache = {sid: _spectrogram(frame) for sid, frame in train_spectrograms.items()}
    features = []
    for row in train.itertuples():
        features.append(_pooled(model_input(cache[row.spectrogram_id], row.spectrogram_label_offset_seconds)))
    x = np.array(features)
    y = _fractions(train)
    labels = train["expert_consensus"].map(CONSENSUS_NAMES.index).to_numpy()

    # 5 folds grouped by patient, so no patient is both trained and scored on.
    patients = train["patient_id"].unique()
    fold_of = dict(zip(np.random.default_rng(0).permutation(patients), np.arange(len(patients)) % 5))
    fold = train["patient_id"].map(fold_of).to_numpy()
    predicted = np.zeros_like(y)
    prior = np.zeros_like(y)
    for k in range(5):
        fit, held = fold != k, fold == k
        mean, std = x[fit].mean(axis=0), x[fit].std(axis=0) + 1e-6
        predicted[held] = _softmax_regression((x[fit] - mean) / std, y[fit], (x[held] - mean) / std)
        prior[held] = y[fit].mean(axis=0)
    accuracy = (predicted.argmax(axis=1) == labels).mean()
    majority = np.bincount(labels, minlength=len(CLASSES)).max() / len(labels)
    kl_model, kl_prior = _kl(y, predicted), _kl(y, prior)
    # Measured for seeds 0-6 (200 rows, GENERATOR_VERSION 2): accuracy 0.70-0.86 against a
    # majority share of ~0.2 (the classes are balanced), held-out KL 0.46-0.59 against the
    # prior's 1.43-1.61. (Version 1: 0.86-0.96 and 0.21-0.38; since version 2 the spectrogram
    # cannot tell GPD from GRDA, signatures.EEG_ONLY_PAIR, a coin toss on a third of the rows.)
    # The thresholds sit far from both: a broken window cut (signature outside the window),
    # a label/signature mismatch or a signal drowned by the background all fall to the
    # baseline (accuracy ~0.2, KL >= prior), while the remaining errors come from mixed
    # votes, tied consensus and distractor bands, so a perfect score is not expected either.
    print(f"spectrogram: accuracy {accuracy:.3f} vs majority {majority:.3f}, KL {kl_model:.3f} vs prior {kl_prior:.3f}")
    assert accuracy >= majority + 0.4, (accuracy, majority)
    assert kl_model <= 0.5 * kl_prior, (kl_model, kl_prior)
    assert accuracy < 1.0 or kl_model > 0.05  # learnable, not trivially saturated

    # Train and test share the signal: fit on all train rows, score the test files.
    test_x = np.array([
        _pooled(model_input(_spectrogram(pd.read_parquet(comp / "test_spectrograms" / f"{sid}.parquet"))))
        for sid in test_frame["spectrogram_id"]
    ])
    truth = pd.read_csv(comp / "test_solution.csv")[list(VOTE_COLUMNS)].to_numpy()
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    test_pred = _softmax_regression((x - mean) / std, y, (test_x - mean) / std)
    # Measured 0.28-0.56 against the prior's 1.30-1.57 (seeds 0-6; version 1: 0.08-0.26).
    kl_test, kl_test_prior = _kl(truth, test_pred), _kl(truth, np.tile(y.mean(axis=0), (len(truth), 1)))
    print(f"spectrogram test files: KL {kl_test:.3f} vs prior {kl_test_prior:.3f}")
    assert kl_test <= 0.6 * kl_test_prior, (kl_test, kl_test_prior)


def test_eeg_signal_is_learnable(comp, train):
    """Each class's rhythm on its channel group stands out in its rows' 50 s windows.

    GPD and GRDA (EEG_ONLY_PAIR) share their rate and field, so in band power they are one
    group here; test_the_eeg_only_pair_is_told_apart_by_the_eeg_view_alone separates them."""
    freqs = np.fft.rfftfreq(EEG_WINDOW_ROWS, 1 / EEG_SAMPLE_RATE_HZ)
    reference = (freqs > 0.5) & (freqs < 20)
    groups = list(dict.fromkeys((SIGNATURES[name].eeg_hz, SIGNATURES[name].eeg_channels) for name in CLASSES))
    group_of = [groups.index((SIGNATURES[name].eeg_hz, SIGNATURES[name].eeg_channels)) for name in CLASSES]
    assert len(groups) == len(CLASSES) - 1 and group_of[CLASSES.index(EEG_ONLY_PAIR[0])] == group_of[CLASSES.index(EEG_ONLY_PAIR[1])]
    features = []
    first_rows = train.groupby("eeg_id").head(1)  # one row per EEG keeps it fast
    for row in first_rows.itertuples():
        eeg = pd.read_parquet(comp / "train_eegs" / f"{row.eeg_id}.parquet").to_numpy().T
        start = int(row.eeg_label_offset_seconds * EEG_SAMPLE_RATE_HZ)
        window = eeg[:, start : start + EEG_WINDOW_ROWS]
        power = np.abs(np.fft.rfft(window - window.mean(axis=1, keepdims=True), axis=1)) ** 2
        row_features = []
        for rate, channel_names in groups:
            channels = [EEG_CHANNELS.index(c) for c in channel_names]
            band = (freqs > 0.9 * rate) & (freqs < 1.1 * rate)
            row_features.append(np.log(power[channels][:, band].mean() / power[channels][:, reference].mean()))
        features.append(row_features)
    z = np.array(features)
    z = (z - z.mean(axis=0)) / z.std(axis=0)
    labels = np.array(group_of)[first_rows["expert_consensus"].map(CONSENSUS_NAMES.index).to_numpy()]
    accuracy = (z.argmax(axis=1) == labels).mean()
    majority = np.bincount(labels, minlength=len(groups)).max() / len(labels)
    # No fitting at all: the argmax of the five standardised band powers. Measured for seeds
    # 0-6: 0.77-0.86 against a majority share of ~1/3 (the GPD+GRDA group);
    # distractor rhythms, wandering frequencies and mixed votes keep it below 1. A rhythm on
    # the wrong channels, at the wrong rate or outside the labelled 50 s window drops it to chance.
    print(f"eeg: accuracy {accuracy:.3f} vs majority {majority:.3f}")
    assert accuracy >= majority + 0.3, (accuracy, majority)


# The EEG-only pair: its own, larger data set (the pair is a third of the rows).
EEG_ONLY_N_TRAIN, EEG_ONLY_SEED = 400, 1
CONTROL_PAIR = ("lpd", "lrda")  # lateralized: told apart by the spectrogram too


@pytest.fixture(scope="module")
def eeg_only_comp(tmp_path_factory) -> Path:
    return write_competition(tmp_path_factory.mktemp("eeg_only") / "comp", EEG_ONLY_N_TRAIN, 1, EEG_ONLY_SEED)


def _cross_validated_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """Out-of-fold ROC AUC of a logistic regression, 5 folds grouped by patient."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    folds = StratifiedGroupKFold(5, shuffle=True, random_state=0)
    p = cross_val_predict(model, x, y, groups=groups, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


def _eeg_only_aucs(comp: Path) -> dict[tuple[str, str], float]:
    """{(pair, view): cross-validated AUC} for the EEG-only and the control pair (see below)."""
    train = pd.read_csv(comp / "train.csv")
    first_rows = train.groupby("eeg_id").head(1)
    names = first_rows["expert_consensus"].map(dict(zip(CONSENSUS_NAMES, CLASSES)))
    features: dict[str, list[np.ndarray]] = {"kaggle": [], "eeg": []}
    rows = first_rows[names.isin(EEG_ONLY_PAIR + CONTROL_PAIR)]
    for row in rows.itertuples():
        spectrogram = read_spectrogram(comp / "train_spectrograms" / f"{row.spectrogram_id}.parquet")
        features["kaggle"].append(_pooled(spectrogram_view.model_input(spectrogram, row.spectrogram_label_offset_seconds)))
        eeg = read_eeg(comp / "train_eegs" / f"{row.eeg_id}.parquet")
        features["eeg"].append(_pooled(eeg_view.model_input(eeg, row.eeg_label_offset_seconds)))
    x = {view: np.array(values) for view, values in features.items()}
    x["both"] = np.hstack([x["kaggle"], x["eeg"]])
    row_names = names[rows.index].to_numpy()
    auc = {}
    for label, pair in (("pair", EEG_ONLY_PAIR), ("control", CONTROL_PAIR)):
        chosen = np.isin(row_names, pair)
        y = (row_names[chosen] == pair[0]).astype(int)
        assert 20 <= y.sum() <= len(y) - 20, (label, y.sum(), len(y))
        for view, values in x.items():
            auc[label, view] = _cross_validated_auc(values[chosen], y, rows["patient_id"].to_numpy()[chosen])
    return auc


@pytest.mark.slow  # ~30 s: its own 400-row data set and ~120 EEG views
def test_the_eeg_only_pair_is_told_apart_by_the_eeg_view_alone(eeg_only_comp):
    """GPD vs GRDA (signatures.EEG_ONLY_PAIR) is separable from the EEG view and not from the
    Kaggle spectrogram; both views together do as well as the EEG view; the control pair
    (LPD vs LRDA) is separable from both, so neither view's features are blind.

    Each view as a model receives it (features.eeg / features.spectrogram `model_input` on
    the files read by hms_offline.convert, at the label's offsets), pooled to 80 features (the
    time mean of 5-row frequency blocks, as _pooled), on the first labelled row of every EEG
    whose consensus is one of the pair (rows of one EEG share most of their window), then a
    cross-validated logistic regression, folds grouped by patient.

    Measured (400 rows, seed 1; ~60 EEGs per pair): GPD vs GRDA AUC 0.994 from the EEG view,
    0.565 from the Kaggle view, 0.994 from both; LPD vs LRDA 0.994 (EEG), 0.997 (Kaggle),
    0.994 (both). Over seeds 0-14 the same procedure gave: GPD vs GRDA 0.985-1.000 (EEG),
    0.30-0.71 (Kaggle, median 0.54; seed 0's 0.706 is the one above 0.65), both within 0.011
    of the EEG view; LPD vs LRDA 0.99-1.00 (Kaggle), 0.915-0.994 (EEG), 0.96-1.00 (both).
    The Kaggle view's AUC is chance with a wide spread: about 60 independent EEGs, each with
    its own background and distractors, and a cross-validated fit on 80 noise features (the
    spread includes anti-learning, below 0.5). A spectrogram that told the pair apart scores
    ~1.0: GENERATOR_VERSION 1, when GPD and GRDA had bands of their own, gave 0.99-1.00 here
    (seeds 0-4), and its EEG view, whose near-uniform fields the montage cancelled, only
    0.66-0.87 on LPD vs LRDA. An EEG view that lost the difference (fields the montage
    cancels, one waveform for both) falls to chance as well.
    """
    pytest.importorskip("sklearn")
    auc = _eeg_only_aucs(eeg_only_comp)
    print(" ".join(f"{label}/{view} {value:.3f}" for (label, view), value in auc.items()))
    assert auc["pair", "eeg"] > 0.9, auc
    assert auc["pair", "kaggle"] < 0.65, auc
    assert auc["pair", "both"] >= max(auc["pair", "eeg"], auc["pair", "kaggle"]) - 0.05, auc
    assert auc["control", "kaggle"] > 0.9 and auc["control", "eeg"] > 0.85, auc
    assert auc["control", "both"] >= max(auc["control", "eeg"], auc["control", "kaggle"]) - 0.05, auc


# ------------------------------------------------------------------ determinism, safety, CLI


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    first = _file_bytes(write_competition(tmp_path / "a", 24, 3, 1))
    second = _file_bytes(write_competition(tmp_path / "b", 24, 3, 1))
    other = _file_bytes(write_competition(tmp_path / "c", 24, 3, 2))
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)
    assert first["train.csv"] != other["train.csv"]
    assert first["test_solution.csv"] != other["test_solution.csv"]
    first_parquets = {v for k, v in first.items() if k.endswith(".parquet")}
    assert not first_parquets & {v for k, v in other.items() if k.endswith(".parquet")}


def test_rewrites_its_own_output_and_refuses_anything_else(tmp_path):
    out = tmp_path / "comp"
    write_competition(out, 12, 2, 0)
    write_competition(out, 8, 1, 3)  # a previous synthetic output is replaced
    assert len(pd.read_csv(out / "train.csv")) == 8
    assert len(list((out / "test_spectrograms").iterdir())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comp"]  # no temp folders left

    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_competition(empty, 3, 1, 0) == empty

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a previous synthetic output"):
        write_competition(foreign, 3, 1, 0)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        write_competition(a_file, 3, 1, 0)


@pytest.mark.parametrize(
    ("n_train", "n_test", "message"),
    [(0, 1, "n_train must be >= 1"), (1, 0, "n_test must be >= 1"), (-5, 3, "n_train"), (2.5, 1, "integer")],
)
def test_bad_sizes_raise(tmp_path, n_train, n_test, message):
    with pytest.raises(ValueError, match=message):
        write_competition(tmp_path / "x", n_train, n_test, 0)
    assert not (tmp_path / "x").exists()


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_write_eeg = write._write_eeg

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_write_eeg(*args, **kwargs)

    monkeypatch.setattr(write, "_write_eeg", failing)
    with pytest.raises(KeyboardInterrupt):
        write_competition(tmp_path / "comp", 20, 2, 0)
    assert list(tmp_path.iterdir()) == []


def test_cli_synth_writes_the_folder(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "hms_offline", "synth", "--out", str(out),
         "--n-train", "40", "--n-test", "5", "--seed", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(out / "train.csv")) == 40
    assert len(pd.read_csv(out / "test.csv")) == 5
    assert len(list((out / "test_eegs").glob("*.parquet"))) == 5
    assert "wrote" in result.stderr
