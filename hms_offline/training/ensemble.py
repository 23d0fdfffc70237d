"""`python -m hms_offline ensemble RUN [RUN ...] --out DIR`: one ensemble weight per run,
fitted on the runs' out-of-fold predictions, and the weights manifest that ships it.

Every run must hold the same out-of-fold rows: the same (eeg_id, label_id, fold) rows, in the
same order once sorted, with the same true vote fractions (train the runs with one
`--folds-file`, the same `--folds` and `--max-samples`). A fold model has out-of-fold rows
for its own fold only, so the weights of one run's fold models cannot be told apart: the
fit gives one weight per run. It minimises the competition's metric
(`hms_offline.metric.kl_divergence`) of the weighted mixture of the runs' out-of-fold
probabilities against the true fractions, over weights >= 0 summing to 1 (SLSQP from equal
weights, see `fit_weights`).

DIR gets, all or nothing (each file atomically; none is renamed into place unless all
were written):

    weights_manifest.json  every entry of every run, named <run folder name>/<entry name>, its
                           `file` relative to DIR, `ensemble_weight` = the run's weight / its
                           number of entries (all entries sum to 1): what build_bundle.py
                           --manifest takes
    ensemble.json          per run its arch, input view, folds, CV KL and weight; the equal-
                           weight and the fitted ensemble's CV KL; the class-prior baseline's
    ensemble.md            the same as a table

Imports numpy, pandas and scipy only (no TensorFlow).
"""

import contextlib
import dataclasses
import inspect
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hms_offline.atomic import atomic_output
from hms_offline.metric import kl_divergence, score
from hms_offline.models.manifest import MANIFEST_NAME, Manifest, ModelEntry, read_manifest, verify_files
from hms_offline.training.run_folder import (CV_NAME, FOLD_SUMMARY_NAME, OOF_NAME, PREDICTED_COLUMNS, TRUE_COLUMNS,
                                             finished_folds, read_json)

log = logging.getLogger(__name__)

ENSEMBLE_JSON = "ensemble.json"
ENSEMBLE_MD = "ensemble.md"
# What makes two runs' out-of-fold rows the same rows (their order: sorted by these).
ROW_KEY = ("eeg_id", "label_id", "fold")
# The true fractions of a row may differ by float noise only.
TRUE_TOLERANCE = 1e-9
# cv.json's cv_kl against the metric of oof.csv: a larger difference is a stale summary.
CV_TOLERANCE = 1e-6
SLSQP_OPTIONS = {"ftol": 1e-12, "maxiter": 1000}
WEIGHT_SUM_TOLERANCE = 1e-12
# An optimiser's weight below this is float noise (1 - (1 - tiny)): made exactly 0.
ZERO_WEIGHT = 1e-12
# The metric clips predictions to [epsilon, 1 - epsilon]; the gradient follows it.
_EPSILON = inspect.signature(score).parameters["epsilon"].default


@dataclass
class Run:
    """One run folder, read and checked: its out-of-fold rows sorted by ROW_KEY."""

    path: Path
    oof: pd.DataFrame
    manifest: Manifest
    cv: dict

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def folds(self) -> list[int]:
        return sorted(entry.fold for entry in self.manifest.models)

    @property
    def arch(self) -> str:
        return ", ".join(sorted({entry.arch for entry in self.manifest.models}))

    @property
    def input_view(self) -> str:
        return ", ".join(sorted({entry.input["name"] for entry in self.manifest.models}))

    @property
    def true(self) -> np.ndarray:
        return self.oof[list(TRUE_COLUMNS)].to_numpy(dtype=np.float64)

    @property
    def predicted(self) -> np.ndarray:
        return self.oof[list(PREDICTED_COLUMNS)].to_numpy(dtype=np.float64)


@dataclass
class Fit:
    weights: np.ndarray  # one per run, >= 0, summing to 1
    kl: float  # the metric of the fitted mixture
    equal_kl: float  # the metric of the equal-weight mixture
    chosen: str  # "SLSQP", "equal weights", "run <i> alone" or "one run": which candidate gave `weights`
    iterations: int
    message: str


# ----------------------------------------------------------------------------- reading

def read_run(run_dir: Path) -> Run:
    """A run folder's out-of-fold rows, manifest and cv.json, or a ValueError / FileNotFoundError
    saying what is missing or inconsistent."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    if not finished_folds(run_dir):
        raise ValueError(f"{run_dir}: no finished fold (fold*/{FOLD_SUMMARY_NAME}); train it first")
    for name in (OOF_NAME, MANIFEST_NAME, CV_NAME):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir}: no {name}; is it a run folder written by `train`?")
    manifest = read_manifest(run_dir / MANIFEST_NAME)
    verify_files(manifest, run_dir)
    if manifest.rejected:
        reasons = "".join(f"\n  {name}: {reason}" for name, reason in manifest.rejected)
        raise ValueError(f"{run_dir / MANIFEST_NAME}: entries the kernel would refuse:{reasons}")
    if not manifest.models:
        raise ValueError(f"{run_dir / MANIFEST_NAME} lists no models")
    oof = pd.read_csv(run_dir / OOF_NAME)
    missing = [column for column in (*ROW_KEY, *TRUE_COLUMNS, *PREDICTED_COLUMNS) if column not in oof.columns]
    if missing:
        raise ValueError(f"{run_dir / OOF_NAME}: no column {', '.join(missing)}")
    oof = oof.sort_values(list(ROW_KEY), kind="mergesort").reset_index(drop=True)
    cv = read_json(run_dir / CV_NAME)
    run = Run(run_dir, oof, manifest, cv)
    check_run(run)
    return run


def check_run(run: Run) -> None:
    """The run's manifest, oof.csv and cv.json describe the same folds, its predictions are
    probabilities, and cv.json's CV KL is that of its oof.csv."""
    if len(set(run.folds)) != len(run.folds):
        raise ValueError(f"{run.path / MANIFEST_NAME}: lists a fold more than once: {run.folds}")
    oof_folds = sorted(int(fold) for fold in run.oof["fold"].unique())
    cv_folds = sorted(run.cv.get("folds", []))
    if not (run.folds == oof_folds == cv_folds):
        raise ValueError(f"{run.path}: {MANIFEST_NAME} lists folds {run.folds}, {OOF_NAME} holds folds {oof_folds}, "
                         f"{CV_NAME} says {cv_folds}: its summary is incomplete (run `train` again to finish it)")
    try:
        kl = kl_divergence(run.true, run.predicted)
    except ValueError as error:
        raise ValueError(f"{run.path / OOF_NAME}: cannot be scored: {error}") from error
    if "cv_kl" not in run.cv:
        raise ValueError(f"{run.path / CV_NAME}: no cv_kl")
    if abs(run.cv["cv_kl"] - kl) > CV_TOLERANCE * max(1.0, abs(kl)):
        raise ValueError(f"{run.path / CV_NAME} says cv_kl {run.cv['cv_kl']:.6f}, its {OOF_NAME} scores {kl:.6f}: "
                         "the summary is stale (run `train` again to rewrite it)")


def check_same_rows(runs: list[Run]) -> None:
    """Refuse runs whose out-of-fold rows differ from the first run's, naming both and what differs."""
    first = runs[0]
    for run in runs[1:]:
        problem = rows_difference(first, run)
        if problem:
            raise ValueError(
                f"runs {first.path} and {run.path} hold different out-of-fold rows ({problem}); one ensemble is "
                "fitted on the same rows: train its runs with the same --folds-file, --folds and --max-samples")


def rows_difference(a: Run, b: Run) -> str | None:
    """What differs between the two runs' sorted out-of-fold rows, or None."""
    def describe(run: Run) -> str:
        return f"{run.name}: {len(run.oof)} rows of folds {' '.join(map(str, sorted(run.oof['fold'].unique())))}"

    ids = ["eeg_id", "label_id"]
    if len(a.oof) != len(b.oof) or not a.oof[ids].equals(b.oof[ids]):
        keys_a = set(a.oof[ids].itertuples(index=False, name=None))
        keys_b = set(b.oof[ids].itertuples(index=False, name=None))
        only_a, only_b = sorted(keys_a - keys_b), sorted(keys_b - keys_a)
        listed = [describe(a), describe(b)]
        if only_a:
            listed.append(f"{len(only_a)} (eeg_id, label_id) only in {a.name}, e.g. {only_a[0]}")
        if only_b:
            listed.append(f"{len(only_b)} only in {b.name}, e.g. {only_b[0]}")
        if not only_a and not only_b:
            listed.append("the same (eeg_id, label_id), in another order or repeated differently")
        return "; ".join(listed)
    folds_differ = a.oof["fold"].to_numpy() != b.oof["fold"].to_numpy()
    if folds_differ.any():
        row = int(np.argmax(folds_differ))
        key = tuple(int(a.oof[column].iloc[row]) for column in ids)
        return (f"{int(folds_differ.sum())} rows are in other folds, e.g. (eeg_id, label_id) {key}: fold "
                f"{int(a.oof['fold'].iloc[row])} in {a.name}, fold {int(b.oof['fold'].iloc[row])} in {b.name}")
    difference = np.abs(a.true - b.true).max(axis=1)
    if (difference > TRUE_TOLERANCE).any():
        row = int(np.argmax(difference))
        key = tuple(int(a.oof[column].iloc[row]) for column in ROW_KEY)
        return (f"the true vote fractions of {int((difference > TRUE_TOLERANCE).sum())} rows differ, by up to "
                f"{difference.max():.3g}, e.g. (eeg_id, label_id, fold) {key}")
    return None


def read_runs(run_dirs: list[Path]) -> list[Run]:
    if not run_dirs:
        raise ValueError("an ensemble needs at least 1 run folder")
    paths = [Path(run_dir) for run_dir in run_dirs]
    by_name: dict[str, list[Path]] = {}
    for path in paths:
        by_name.setdefault(path.resolve().name, []).append(path)
    repeated = {name: listed for name, listed in by_name.items() if len(listed) > 1}
    if repeated:
        described = "; ".join(f"{' and '.join(map(str, listed))} are all named {name!r}" for name, listed in repeated.items())
        raise ValueError(f"{described}: the ensemble names its models <run folder name>/<entry name>, so each run "
                         "is given once and its folder name must be its own (rename or link one)")
    runs = [read_run(path) for path in paths]
    check_same_rows(runs)
    return runs


# ----------------------------------------------------------------------------- the fit

def mixture(weights: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """The weighted mixture `[rows, classes]` of the runs' predictions `[runs, rows, classes]`."""
    return np.tensordot(np.asarray(weights, dtype=np.float64), predictions, axes=1)


def _normalised(weights: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    total = clipped.sum()
    return clipped / total if total > 0 else np.full(len(clipped), 1.0 / len(clipped))


def mixture_kl(weights: np.ndarray, true: np.ndarray, predictions: np.ndarray) -> float:
    """The competition's metric of the mixture with `weights` (clipped at 0, normalised to sum 1).
    The mixture is clipped to [0, 1]: a sum of weights 1 + 1 ulp times a prediction of exactly
    1 would otherwise be refused by the metric as above one."""
    return kl_divergence(true, np.clip(mixture(_normalised(weights), predictions), 0.0, 1.0))


def mixture_kl_gradient(weights: np.ndarray, true: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """The gradient of `mixture_kl` in `weights` (where they are >= 0): the derivative of the
    mean over rows of sum(y log(y / clip(p))), which is -y / p where y > 0 and p is not
    clipped, else 0, through the mixture and the normalisation. Only the optimiser's
    direction: the value minimised is the metric itself."""
    weights = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    total = weights.sum()
    normalised = _normalised(weights)
    p = mixture(normalised, predictions)
    live = (true > 0) & (p > _EPSILON) & (p < 1 - _EPSILON)
    d_p = np.divide(-true, p, out=np.zeros_like(true), where=live) / len(true)
    d_normalised = np.einsum("rnk,nk->r", predictions, d_p)
    if total <= 0:
        return d_normalised
    return (d_normalised - normalised @ d_normalised) / total


def fit_weights(true: np.ndarray, predictions: np.ndarray) -> Fit:
    """Weights >= 0 summing to 1 (within WEIGHT_SUM_TOLERANCE), one per run, minimising the
    metric of the mixture of `predictions` `[runs, rows, classes]` against `true` `[rows, classes]`.

    SLSQP from equal weights, bounds [0, 1], the sum constraint, the analytic gradient,
    SLSQP_OPTIONS; the result's weights below ZERO_WEIGHT made 0, the rest renormalised. The fitted weights are the best
    (by the metric) of that result, equal weights and each run alone, so the fit is never
    worse than equal weights, whatever the optimiser reports."""
    from scipy.optimize import minimize

    true = np.asarray(true, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    runs = len(predictions)
    equal = np.full(runs, 1.0 / runs)
    equal_kl = mixture_kl(equal, true, predictions)
    if runs == 1:
        return Fit(np.ones(1), equal_kl, equal_kl, "one run", 0, "one run: weight 1")
    result = minimize(
        mixture_kl, equal, args=(true, predictions), jac=mixture_kl_gradient, method="SLSQP",
        bounds=[(0.0, 1.0)] * runs,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        options=SLSQP_OPTIONS,
    )
    candidates = [("SLSQP", _normalised(np.where(result.x < ZERO_WEIGHT, 0.0, result.x))), ("equal weights", equal)]
    candidates += [(f"run {index} alone", row) for index, row in enumerate(np.eye(runs))]
    scored = [(mixture_kl(weights, true, predictions), order, name, weights)
              for order, (name, weights) in enumerate(candidates)]
    kl, _, chosen, weights = min(scored, key=lambda item: (item[0], item[1]))
    if not (weights >= 0).all() or abs(weights.sum() - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise AssertionError(f"fitted weights {weights} are not >= 0 summing to 1")
    log.info("SLSQP: %s (%d iterations); weights %s from %s, KL %.6f (equal weights %.6f)", result.message,
             result.nit, np.round(weights, 6).tolist(), chosen, kl, equal_kl)
    return Fit(weights, kl, equal_kl, chosen, int(result.nit), str(result.message))


# ----------------------------------------------------------------------------- outputs

def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def ensemble_entries(runs: list[Run], weights: np.ndarray, out: Path) -> list[ModelEntry]:
    """Every run's entries, named <run>/<entry>, files relative to `out`, the run's weight
    shared equally by its entries."""
    entries = []
    for run, weight in zip(runs, weights):
        share = float(weight) / len(run.manifest.models)
        for entry in run.manifest.models:
            exports = {kind: {**listing, "path": _relative(run.path / listing["path"], out)}
                       if isinstance(listing, dict) and isinstance(listing.get("path"), str) else listing
                       for kind, listing in entry.exports.items()}
            entries.append(dataclasses.replace(
                entry, name=f"{run.name}/{entry.name}", file=_relative(run.path / entry.file, out),
                ensemble_weight=share, exports=exports,
            ))
    return entries


def _agreed_prior_kl(runs: list[Run]) -> float | None:
    values = [run.cv.get("prior_kl") for run in runs]
    if any(value is None for value in values) or max(values) - min(values) > CV_TOLERANCE:
        return None
    return float(values[0])


def ensemble_record(runs: list[Run], fit: Fit, out: Path) -> dict:
    """ensemble.json's data."""
    return {
        "runs": [{
            "run": run.name,
            "path": _relative(run.path, out),
            "arch": run.arch,
            "input": run.input_view,
            "folds": run.folds,
            "models": len(run.manifest.models),
            "cv_kl": float(run.cv["cv_kl"]),
            "prior_kl": run.cv.get("prior_kl"),
            "weight": float(weight),
        } for run, weight in zip(runs, fit.weights)],
        "oof_rows": len(runs[0].oof),
        "equal_weights_kl": fit.equal_kl,
        "fitted_kl": fit.kl,
        "prior_kl": _agreed_prior_kl(runs),
        "fit": {
            "objective": "hms_offline.metric.kl_divergence of the weighted mixture of the runs' out-of-fold "
                         "probabilities against the true vote fractions",
            "method": "scipy.optimize.minimize SLSQP from equal weights, bounds [0, 1], weights summing to 1",
            **SLSQP_OPTIONS,
            "chosen": fit.chosen,
            "iterations": fit.iterations,
            "message": fit.message,
        },
        "manifest": MANIFEST_NAME,
    }


def ensemble_table(record: dict) -> pd.DataFrame:
    """Per run, then the equal-weight and the fitted ensemble and the class prior: the table
    ensemble.md shows and the command prints, as text cells."""
    def kl(value) -> str:
        return "" if value is None else f"{value:.4f}"

    rows = [{"model": run["run"], "arch": run["arch"], "input": run["input"],
             "folds": " ".join(map(str, run["folds"])), "cv_kl": kl(run["cv_kl"]), "weight": f"{run['weight']:.4f}"}
            for run in record["runs"]]
    blank = {"arch": "", "input": "", "folds": ""}
    rows.append({"model": "ensemble, equal weights", **blank, "cv_kl": kl(record["equal_weights_kl"]),
                 "weight": f"{1 / len(record['runs']):.4f} each"})
    rows.append({"model": "ensemble, fitted weights", **blank, "cv_kl": kl(record["fitted_kl"]), "weight": ""})
    if record["prior_kl"] is not None:
        rows.append({"model": "class prior", **blank, "cv_kl": kl(record["prior_kl"]), "weight": ""})
    return pd.DataFrame(rows)


def ensemble_markdown(record: dict) -> str:
    table = ensemble_table(record)
    lines = [
        f"# Ensemble of {len(record['runs'])} run(s), fitted on {record['oof_rows']:,} out-of-fold rows",
        "",
        "| " + " | ".join(table.columns) + " |",
        "|" + "|".join("---" for _ in table.columns) + "|",
        *("| " + " | ".join(row) + " |" for row in table.itertuples(index=False)),
        "",
        "cv_kl: Kaggle's KL metric on all out-of-fold rows (each row predicted by the fold model that did not "
        "train on it). The weights are one per run (a fold model has out-of-fold rows of its own fold only), "
        f"fitted by {record['fit']['method']}, minimising that metric of the weighted mixture "
        f"(chosen: {record['fit']['chosen']}; {record['fit']['message']}). The fitted ensemble's cv_kl is "
        "measured on the rows it was fitted on, so it flatters it a little: with few runs, little.",
        "",
        f"`{record['manifest']}` lists every run's models, named <run>/<model>, each with its run's weight "
        "divided by the run's number of models: `python build_bundle.py --manifest "
        f"<this folder>/{record['manifest']}` ships it.",
    ]
    unused = [run["run"] for run in record["runs"] if run["weight"] == 0]
    if unused:
        lines += ["", f"Weight 0: {', '.join(unused)}. The kernel still runs their models; leave them out of "
                      "the RUN list to save their inference time."]
    return "\n".join(lines) + "\n"


def write_all(texts: dict[Path, str]) -> None:
    """Write every file to a temporary file beside it; rename them into place only once all
    were written (a failure leaves every previous file as it was, and no temporary file)."""
    with contextlib.ExitStack() as stack:
        temporaries = {path: stack.enter_context(atomic_output(path)) for path in texts}
        for path, text in texts.items():
            temporaries[path].write_text(text)


def check_out(out: Path, runs: list[Run]) -> None:
    """--out must not be one of the runs (it would replace the run's manifest) nor a run folder."""
    out = Path(out)
    for run in runs:
        if out.resolve() == run.path.resolve():
            raise ValueError(f"--out {out} is the run folder {run.path}: it would replace the run's {MANIFEST_NAME}; "
                             "give the ensemble a folder of its own")
    if (out / OOF_NAME).exists():
        raise ValueError(f"--out {out} holds an {OOF_NAME}: it is a run folder; give the ensemble a folder of its own")


def ensemble_runs(run_dirs: list[Path], out: Path) -> dict:
    """Fit the runs' weights and write DIR's weights_manifest.json, ensemble.json and
    ensemble.md; returns ensemble.json's data."""
    out = Path(out)
    runs = read_runs(run_dirs)
    check_out(out, runs)
    fit = fit_weights(runs[0].true, np.stack([run.predicted for run in runs]))
    record = ensemble_record(runs, fit, out)
    manifest = Manifest(models=ensemble_entries(runs, fit.weights, out))
    write_all({
        out / ENSEMBLE_JSON: json.dumps(record, indent=2) + "\n",
        out / ENSEMBLE_MD: ensemble_markdown(record),
        out / MANIFEST_NAME: manifest.to_json(),
    })
    log.info("wrote %s, %s and %s in %s", MANIFEST_NAME, ENSEMBLE_JSON, ENSEMBLE_MD, out)
    return record
