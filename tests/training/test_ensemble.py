"""`python -m hms_offline ensemble`: weights fitted on hand-made run folders (oof.csv,
weights_manifest.json, cv.json, fold summaries, a few bytes as weight files). No TensorFlow."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hms_offline.bundle.weights import check_weight_files, copy_weights, merged_manifest
from hms_offline.cli import main
from hms_offline.constants import CLASSES
from hms_offline.digests import sha256_file
from hms_offline.metric import kl_divergence
from hms_offline.models.manifest import MANIFEST_NAME, Manifest, make_entry, manifest_problems, read_manifest, write_manifest
from hms_offline.training.ensemble import (ENSEMBLE_JSON, ENSEMBLE_MD, WEIGHT_SUM_TOLERANCE, ensemble_runs, fit_weights,
                                           mixture_kl, mixture_kl_gradient, write_all)
from hms_offline.training.run_folder import (CV_NAME, FOLD_SUMMARY_NAME, OOF_ID_COLUMNS, OOF_NAME, PREDICTED_COLUMNS,
                                             TRUE_COLUMNS, fold_dir, weights_name)

from conftest import REPO_ROOT

ROWS, N_FOLDS = 40, 2
UNIFORM = np.full((ROWS, len(CLASSES)), 1 / len(CLASSES))


def random_fractions(rng: np.random.Generator, rows: int, zeros: bool = True) -> np.ndarray:
    """Vote-fraction-like rows: some classes exactly 0 when `zeros`."""
    votes = rng.integers(0 if zeros else 1, 6, size=(rows, len(CLASSES))).astype(float)
    votes[votes.sum(axis=1) == 0, 0] = 1.0
    return votes / votes.sum(axis=1, keepdims=True)


def random_probabilities(rng: np.random.Generator, rows: int) -> np.ndarray:
    return rng.dirichlet(np.full(len(CLASSES), 0.7), size=rows)


TRUE = random_fractions(np.random.default_rng(0), ROWS)


def oof_ids(rows: int = ROWS, n_folds: int = N_FOLDS) -> pd.DataFrame:
    index = np.arange(rows)
    return pd.DataFrame({"eeg_id": 1000 + index, "label_id": 5000 + index, "spectrogram_id": 9000 + index // 2,
                         "patient_id": 70 + index % 7, "fold": index % n_folds})


def make_run(folder: Path, predicted: np.ndarray, true: np.ndarray = TRUE, arch: str = "mobilenetv3_large",
             ids: pd.DataFrame | None = None, prior_kl: float | None = 1.25) -> Path:
    """A run folder as `train` leaves it, by hand: fold<k>/ with its weights and summary.json,
    oof.csv (rows shuffled: the ensemble sorts them), weights_manifest.json and cv.json."""
    ids = oof_ids(len(true)) if ids is None else ids
    folds = sorted(ids["fold"].unique())
    entries = []
    for fold in folds:
        weights = fold_dir(folder, fold) / weights_name(arch, fold)
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.write_bytes(f"{folder.name} {arch} {fold}".encode())
        (fold_dir(folder, fold) / FOLD_SUMMARY_NAME).write_text(json.dumps({"fold": int(fold)}))
        entries.append(make_entry(weights, folder, arch=arch, fold=int(fold), cv_kl=0.5,
                                  class_prior=[1 / len(CLASSES)] * len(CLASSES)))
    write_manifest(Manifest(models=entries), folder / MANIFEST_NAME)
    oof = pd.concat([ids.reset_index(drop=True),
                     pd.DataFrame(true, columns=list(TRUE_COLUMNS)),
                     pd.DataFrame(predicted, columns=list(PREDICTED_COLUMNS))], axis=1)
    assert list(oof.columns[:len(OOF_ID_COLUMNS)]) == list(OOF_ID_COLUMNS)
    oof.sample(frac=1, random_state=len(folder.name)).to_csv(folder / OOF_NAME, index=False)
    cv = {"run": folder.name, "arch": arch, "folds": [int(f) for f in folds], "oof_rows": len(oof),
          "cv_kl": kl_divergence(true, predicted)}
    if prior_kl is not None:
        cv["prior_kl"] = prior_kl
    (folder / CV_NAME).write_text(json.dumps(cv))
    return folder


@pytest.fixture
def two_runs(tmp_path) -> list[Path]:
    rng = np.random.default_rng(1)
    return [make_run(tmp_path / "runs" / "mnv3", 0.6 * TRUE + 0.4 * random_probabilities(rng, ROWS)),
            make_run(tmp_path / "runs" / "effnet", 0.4 * TRUE + 0.6 * random_probabilities(rng, ROWS),
                     arch="efficientnetv2_b2")]


# ----------------------------------------------------------------------------- the fit

def test_one_run_gets_weight_one():
    fit = fit_weights(TRUE, UNIFORM[None])
    assert fit.weights.tolist() == [1.0]
    assert fit.kl == fit.equal_kl == kl_divergence(TRUE, UNIFORM)


@pytest.mark.parametrize("zeros", [True, False], ids=["fractions with zeros", "no zero fraction"])
@pytest.mark.parametrize("exact_first", [True, False])
def test_a_run_equal_to_the_truth_takes_all_the_weight_from_a_uniform_one(zeros, exact_first):
    true = random_fractions(np.random.default_rng(2), ROWS, zeros=zeros)
    predictions = np.stack([true, UNIFORM] if exact_first else [UNIFORM, true])
    fit = fit_weights(true, predictions)
    exact = 0 if exact_first else 1
    assert fit.weights[exact] == pytest.approx(1.0, abs=1e-6)
    assert fit.weights[1 - exact] == pytest.approx(0.0, abs=1e-6)
    if zeros:  # the optimum is on the bound, where the slope is not 0: exactly there
        assert fit.weights.tolist() == ([1.0, 0.0] if exact_first else [0.0, 1.0])
    assert fit.kl < 1e-9 < fit.equal_kl


def test_an_interior_optimum_is_found():
    """The truth is the half-half mixture of two runs: the fit finds it."""
    rng = np.random.default_rng(3)
    a, b = random_probabilities(rng, ROWS), random_probabilities(rng, ROWS)
    fit = fit_weights((a + b) / 2, np.stack([a, b, UNIFORM]))
    np.testing.assert_allclose(fit.weights, [0.5, 0.5, 0.0], atol=1e-5)


def test_the_gradient_is_the_metrics():
    rng = np.random.default_rng(4)
    predictions = np.stack([random_probabilities(rng, ROWS) for _ in range(3)])
    weights, step = np.array([0.2, 0.5, 0.3]), 1e-6
    numeric = [(mixture_kl(weights + step * e, TRUE, predictions) - mixture_kl(weights - step * e, TRUE, predictions))
               / (2 * step) for e in np.eye(3)]
    np.testing.assert_allclose(mixture_kl_gradient(weights, TRUE, predictions), numeric, rtol=1e-5, atol=1e-7)


def test_predictions_of_exactly_one_mix_without_the_metric_refusing_them():
    one_hot = np.eye(len(CLASSES))[np.arange(ROWS) % len(CLASSES)]
    fit = fit_weights(one_hot, np.stack([one_hot, one_hot, UNIFORM]))
    assert fit.kl < 1e-9 and fit.weights[2] == pytest.approx(0.0, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(runs=st.integers(1, 4), rows=st.integers(1, 25), seed=st.integers(0, 2**32 - 1), zeros=st.booleans(),
       sharp=st.sampled_from([0.05, 0.7, 5.0]))
def test_the_fit_is_never_worse_than_equal_weights(runs, rows, seed, zeros, sharp):
    rng = np.random.default_rng(seed)
    true = random_fractions(rng, rows, zeros=zeros)
    predictions = rng.dirichlet(np.full(len(CLASSES), sharp), size=(runs, rows))
    fit = fit_weights(true, predictions)
    assert fit.weights.shape == (runs,)
    assert (fit.weights >= 0).all()
    assert abs(fit.weights.sum() - 1.0) <= WEIGHT_SUM_TOLERANCE
    assert fit.kl <= fit.equal_kl
    assert fit.kl == mixture_kl(fit.weights, true, predictions)
    assert fit.equal_kl == pytest.approx(kl_divergence(true, predictions.mean(axis=0)), rel=1e-12)


# ----------------------------------------------------------------------------- the folder

def test_ensemble_writes_the_manifest_the_record_and_the_table(two_runs, tmp_path):
    out = tmp_path / "ensemble"
    record = ensemble_runs(two_runs, out)
    weights = [run["weight"] for run in record["runs"]]
    assert [run["run"] for run in record["runs"]] == ["mnv3", "effnet"]
    assert weights[0] > weights[1] > 0 and sum(weights) == pytest.approx(1.0, abs=1e-12)
    assert record["fitted_kl"] <= record["equal_weights_kl"] and record["prior_kl"] == 1.25
    assert record["runs"][1] | {"weight": None} == {
        "run": "effnet", "path": "../runs/effnet", "arch": "efficientnetv2_b2", "input": "starter_log_standardize",
        "folds": [0, 1], "models": 2, "cv_kl": json.loads((two_runs[1] / CV_NAME).read_text())["cv_kl"],
        "prior_kl": 1.25, "weight": None}
    assert json.loads((out / ENSEMBLE_JSON).read_text()) == record

    manifest = read_manifest(out / MANIFEST_NAME)
    assert manifest.rejected == []
    assert [entry.name for entry in manifest.models] == [
        "mnv3/mobilenetv3_large_fold0", "mnv3/mobilenetv3_large_fold1",
        "effnet/efficientnetv2_b2_fold0", "effnet/efficientnetv2_b2_fold1"]
    assert manifest.models[2].file == "../runs/effnet/fold0/efficientnetv2_b2_fold0.weights.h5"
    assert [entry.ensemble_weight for entry in manifest.models] == pytest.approx(
        [weights[0] / 2, weights[0] / 2, weights[1] / 2, weights[1] / 2], abs=1e-15)
    assert sum(entry.ensemble_weight for entry in manifest.models) == pytest.approx(1.0, abs=1e-12)
    original = read_manifest(two_runs[1] / MANIFEST_NAME).models[0]
    assert (manifest.models[2].sha256, manifest.models[2].cv_kl, manifest.models[2].class_prior, manifest.models[2].input) \
        == (original.sha256, original.cv_kl, original.class_prior, original.input)
    assert manifest_problems(out / MANIFEST_NAME) == []  # what the kernel (and build_bundle.py) checks first

    markdown = (out / ENSEMBLE_MD).read_text()
    assert "| mnv3 | mobilenetv3_large | starter_log_standardize | 0 1 |" in markdown
    assert f"| ensemble, fitted weights |  |  |  | {record['fitted_kl']:.4f} |" in markdown
    assert f"| class prior |  |  |  | 1.2500 |" in markdown
    assert "Weight 0" not in markdown
    assert sorted(path.name for path in out.iterdir()) == [ENSEMBLE_JSON, ENSEMBLE_MD, MANIFEST_NAME]


def test_the_bundle_takes_the_ensembles_manifest(two_runs, tmp_path):
    out = tmp_path / "ensemble"
    ensemble_runs(two_runs, out)
    path = (out / MANIFEST_NAME).resolve()
    merged = merged_manifest([path], path.parent)  # what build_bundle.py --manifest does
    assert merged["models"][0]["file"] == "../runs/mnv3/fold0/mobilenetv3_large_fold0.weights.h5"
    check_weight_files(merged, path.parent)
    dataset = tmp_path / "dataset"
    bundled = copy_weights(merged, path.parent, dataset)
    assert [model["file"] for model in bundled["models"]] == [
        "weights/mnv3_mobilenetv3_large_fold0.weights.h5", "weights/mnv3_mobilenetv3_large_fold1.weights.h5",
        "weights/effnet_efficientnetv2_b2_fold0.weights.h5", "weights/effnet_efficientnetv2_b2_fold1.weights.h5"]
    for model in bundled["models"]:
        assert sha256_file(dataset / model["file"]) == model["sha256"]
    assert (dataset / bundled["models"][3]["file"]).read_bytes() == b"effnet efficientnetv2_b2 1"
    # Merged from another folder too (the demo's merge_manifests): paths rebased, files found.
    (tmp_path / "a" / "b").mkdir(parents=True)
    elsewhere = merged_manifest([path], tmp_path / "a" / "b")
    assert elsewhere["models"][0]["file"] == "../../runs/mnv3/fold0/mobilenetv3_large_fold0.weights.h5"
    check_weight_files(elsewhere, tmp_path / "a" / "b")


def test_two_runs_of_one_arch_get_names_of_their_own(tmp_path):
    rng = np.random.default_rng(5)
    runs = [make_run(tmp_path / name, random_probabilities(rng, ROWS)) for name in ("seed0", "seed1")]
    ensemble_runs(runs, tmp_path / "ensemble")
    names = [entry.name for entry in read_manifest(tmp_path / "ensemble" / MANIFEST_NAME).models]
    assert names == ["seed0/mobilenetv3_large_fold0", "seed0/mobilenetv3_large_fold1",
                     "seed1/mobilenetv3_large_fold0", "seed1/mobilenetv3_large_fold1"]


def test_mismatched_out_of_fold_rows_are_refused_naming_both_runs(tmp_path):
    rng = np.random.default_rng(6)
    base = make_run(tmp_path / "base", random_probabilities(rng, ROWS))
    fewer = make_run(tmp_path / "fewer", random_probabilities(rng, ROWS - 1), true=TRUE[:-1],
                     ids=oof_ids().iloc[:-1])
    with pytest.raises(ValueError, match=r"runs .*base and .*fewer hold different out-of-fold rows \(base: 40 rows "
                                         r"of folds 0 1; fewer: 39 rows of folds 0 1; 1 \(eeg_id, label_id\) only in "
                                         r"base, e.g. \(1039, 5039\)\)"):
        ensemble_runs([base, fewer], tmp_path / "out")
    other_folds = make_run(tmp_path / "refolded", random_probabilities(rng, ROWS),
                           ids=oof_ids().assign(fold=lambda ids: (ids["fold"] + (ids.index == 3)) % N_FOLDS))
    with pytest.raises(ValueError, match=r"base and .*refolded .*1 rows are in other folds, e.g. \(eeg_id, label_id\) "
                                         r"\(1003, 5003\): fold 1 in base, fold 0 in refolded"):
        ensemble_runs([base, other_folds], tmp_path / "out")
    truth = TRUE.copy()
    truth[7] = np.roll(truth[7], 1) if not np.allclose(truth[7], np.roll(truth[7], 1)) else UNIFORM[0]
    other_truth = make_run(tmp_path / "retruthed", random_probabilities(rng, ROWS), true=truth)
    with pytest.raises(ValueError, match=r"base and .*retruthed .*the true vote fractions of 1 rows differ.*"
                                         r"\(1007, 5007, 1\)"):
        ensemble_runs([base, other_truth], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_input_is_refused(tmp_path):
    rng = np.random.default_rng(7)
    good = make_run(tmp_path / "good", random_probabilities(rng, ROWS))
    with pytest.raises(ValueError, match="at least 1 run"):
        ensemble_runs([], tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty: no finished fold \(fold\*/summary.json\)"):
        ensemble_runs([good, empty], tmp_path / "out")
    for name in (OOF_NAME, MANIFEST_NAME, CV_NAME):
        broken = make_run(tmp_path / f"without_{name}", random_probabilities(rng, ROWS))
        (broken / name).unlink()
        with pytest.raises(FileNotFoundError, match=f"without_{name}: no {name}"):
            ensemble_runs([good, broken], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        ensemble_runs([good, tmp_path / "absent"], tmp_path / "out")
    altered = make_run(tmp_path / "altered", random_probabilities(rng, ROWS))
    (fold_dir(altered, 1) / weights_name("mobilenetv3_large", 1)).write_bytes(b"other bytes")
    with pytest.raises(ValueError, match="entries the kernel would refuse:\n  mobilenetv3_large_fold1: sha256"):
        ensemble_runs([good, altered], tmp_path / "out")
    stale = make_run(tmp_path / "stale", random_probabilities(rng, ROWS))
    (stale / CV_NAME).write_text(json.dumps({**json.loads((stale / CV_NAME).read_text()), "cv_kl": 0.1}))
    with pytest.raises(ValueError, match="stale/cv.json says cv_kl 0.100000, its oof.csv scores"):
        ensemble_runs([good, stale], tmp_path / "out")
    unfinished = make_run(tmp_path / "unfinished", random_probabilities(rng, ROWS))
    (fold_dir(unfinished, 1) / FOLD_SUMMARY_NAME).unlink()
    manifest = read_manifest(unfinished / MANIFEST_NAME)
    write_manifest(Manifest(models=manifest.models[:1]), unfinished / MANIFEST_NAME)
    with pytest.raises(ValueError, match=r"lists folds \[0\], oof.csv holds folds \[0, 1\], cv.json says \[0, 1\]"):
        ensemble_runs([good, unfinished], tmp_path / "out")
    twin = tmp_path / "elsewhere" / "good"
    twin.parent.mkdir()
    twin.symlink_to(good)
    with pytest.raises(ValueError, match="are all named 'good'"):
        ensemble_runs([good, twin], tmp_path / "out")
    with pytest.raises(ValueError, match="is the run folder"):
        ensemble_runs([good], good)
    assert not (tmp_path / "out").exists()


def test_a_run_given_no_weight_is_listed_with_weight_0_and_said(tmp_path):
    runs = [make_run(tmp_path / "exact", TRUE), make_run(tmp_path / "uniform", UNIFORM)]
    record = ensemble_runs(runs, tmp_path / "out")
    assert [run["weight"] for run in record["runs"]] == [1.0, 0.0]
    assert [entry.ensemble_weight for entry in read_manifest(tmp_path / "out" / MANIFEST_NAME).models] == [0.5, 0.5, 0, 0]
    assert "Weight 0: uniform. The kernel still runs their models" in (tmp_path / "out" / ENSEMBLE_MD).read_text()


def test_a_failed_write_leaves_the_previous_outputs(two_runs, tmp_path, monkeypatch):
    out = tmp_path / "ensemble"
    ensemble_runs(two_runs[:1], out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    written = []

    def fail_on_the_last(self, text, *args, **kwargs):
        written.append(self)
        if len(written) == 3:
            raise OSError("disk full")
        return original(self, text, *args, **kwargs)

    original = Path.write_text
    monkeypatch.setattr(Path, "write_text", fail_on_the_last)
    with pytest.raises(OSError, match="disk full"):
        ensemble_runs(two_runs, out)
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # no temporary file either
    write_all({out / "a.txt": "a"})
    assert (out / "a.txt").read_text() == "a"


# ----------------------------------------------------------------------------- the command

def test_the_command_prints_the_table_and_writes_the_folder(two_runs, tmp_path, capsys):
    out = tmp_path / "ensemble"
    assert main(["ensemble", *map(str, two_runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / ENSEMBLE_JSON).read_text())
    assert printed.splitlines()[0].split() == ["model", "arch", "input", "folds", "cv_kl", "weight"]
    assert "ensemble, fitted weights" in printed and f"{record['fitted_kl']:.4f}" in printed
    assert f"{record['runs'][0]['weight']:.4f}" in printed
    assert (out / MANIFEST_NAME).is_file() and (out / ENSEMBLE_MD).is_file()


def test_the_command_exits_2_naming_the_runs_whose_rows_differ(tmp_path, caplog):
    rng = np.random.default_rng(8)
    base = make_run(tmp_path / "base", random_probabilities(rng, ROWS))
    fewer = make_run(tmp_path / "fewer", random_probabilities(rng, ROWS - 1), true=TRUE[:-1], ids=oof_ids().iloc[:-1])
    assert main(["ensemble", str(base), str(fewer), "--out", str(tmp_path / "out")]) == 2
    assert f"runs {base} and {fewer} hold different out-of-fold rows" in caplog.text
    assert not (tmp_path / "out").exists()


def test_the_command_imports_no_tensorflow(two_runs, tmp_path):
    code = ("import sys; from hms_offline.cli import main; "
            f"code = main(['ensemble', {str(two_runs[0])!r}, {str(two_runs[1])!r}, '--out', {str(tmp_path / 'out')!r}]); "
            "loaded = sorted(name for name in ('tensorflow', 'keras', 'keras_cv') if name in sys.modules); "
            "print(code, loaded)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "0 []"
