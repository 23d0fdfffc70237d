"""--verify: the built dataset exactly as built, on sample test data, offline, in a fresh
environment layered on the Kaggle-shaped base (the image's Python 3.12 and pins). Checks the
submission and its score, that the kernel installed and replaced nothing, that its
predictions equal the training stack's Keras predictions on the same weights, and that it
still predicts with keras-cv made unimportable; reports which engine ran each model."""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hms_offline.digests import sha256_file

from .common import KERNEL_SCRIPT, LOG, PACKAGE, REPO_ROOT, BundleError, run
from .environment import (NetworkBlock, kaggle_base_python, make_fresh_env, pip_list, pip_list_changes,
                          python_version_of, require_absent_before_install, require_not_installed)
from .submission_check import SUM_TOLERANCE, check_submission, read_csv_rows
from .wheels import DEFAULT_PLATFORM, WHEELS_DIR, parse_target

# The sample test data --verify generates when no --verify-data is given.
VERIFY_SYNTHETIC = {"n_train": 6, "n_test": 8, "seed": 0}
KERNEL_SUMMARY_RULE = "=" * 60  # kernel/inference.py prints its summary below this line
# Copies: hms_offline.serving.inference_report.REPORT_NAME (written beside the submission), and the
# kernel's --engine choices, hms_offline.models.engines.AUTO and ENGINE_NAMES.
REPORT_NAME = "inference_report.json"
VERIFY_ENGINES = ("auto", "tflite", "saved_model", "keras")
# The kernel's predictions against the training stack's Keras predictions on the same
# weights: the exports are proven at build time within 1e-5 (SavedModel) and 1e-4 (TFLite).
PREDICTION_TOLERANCE = 1e-4
# Made unimportable in the second kernel run: the exported engines must not need it.
WITHOUT_KERAS_CV = ("keras_cv",)


def find_built_bundle(dist: Path, slug: str) -> tuple[Path, Path]:
    """The dataset folder (the one holding wheels/lock-cp3XY.json) and kernel/inference.py of a build in `dist`."""
    kernel = dist / "kernel" / "inference.py"
    datasets = sorted({lock.parent.parent for lock in dist.glob(f"*/{WHEELS_DIR}/lock-cp*.json")})
    if not kernel.is_file() or not datasets:
        raise BundleError(f"{dist} holds no built bundle (kernel/inference.py and <dataset>/wheels/lock-cp3XY.json): "
                          f"build one first with python build_bundle.py --kaggle-user USER --out {dist}")
    if len(datasets) > 1:
        datasets = [dataset for dataset in datasets if dataset.name == slug]
        if not datasets:
            raise BundleError(f"{dist} holds several datasets; name one with --dataset-slug")
    return datasets[0], kernel


def require_lock_for(dataset: Path, python_version: str) -> Path:
    """The dataset's lock for the base's Python: the kernel there would read no other."""
    lock = dataset / WHEELS_DIR / parse_target(python_version, DEFAULT_PLATFORM).lock_name
    if not lock.is_file():
        shipped = sorted(path.name for path in (dataset / WHEELS_DIR).glob("lock-cp*.json"))
        raise BundleError(f"the Kaggle-shaped base runs CPython {python_version}, and {dataset / WHEELS_DIR} has no "
                          f"{lock.name} (it ships {', '.join(shipped)}): rebuild with --python-version {python_version}")
    return lock


def synthesize_competition(folder: Path, *, n_train: int, n_test: int, seed: int) -> Path:
    """A synthetic, competition-shaped folder (python -m hms_offline synth, from this repo)."""
    LOG.info("generating synthetic competition data in %s (%d train rows, %d test rows, seed %d)",
             folder, n_train, n_test, seed)
    run([sys.executable, "-m", PACKAGE, "synth", "--out", str(folder), "--n-train", str(n_train),
         "--n-test", str(n_test), "--seed", str(seed)], quiet=True, cwd=REPO_ROOT,
        what=f"generating synthetic data with {sys.executable} -m {PACKAGE} synth (or pass --verify-data DIR)")
    return folder


def check_test_data(data: Path) -> None:
    missing = [name for name in ("test.csv", "sample_submission.csv", "test_spectrograms") if not (data / name).exists()]
    if missing:
        raise BundleError(f"--verify-data {data} is not a competition-shaped folder: it lacks {', '.join(missing)}")


def score_command(python: Path, solution: Path, submission: Path) -> list[str]:
    return [str(python), "-m", PACKAGE, "score", "--solution", str(solution), "--submission", str(submission)]


def parse_score(output: str) -> float:
    return float(output.strip().splitlines()[-1])


@dataclass
class KernelRun:
    """One run of the built kernel: what it was asked, what ran each model, how it compared."""

    label: str  # what the run proves, for the printout
    engine: str  # --engine
    submission: Path
    engines: dict[str, str]  # model name -> the engine that ran it (inference_report.json)
    summary: str
    seconds: float
    max_difference: float | None = None  # against the training stack's Keras predictions


@dataclass
class Verification:
    submission: Path
    rows: int
    kl: float | None  # against the data's test_solution.csv, when it has one
    kernel_summary: str
    network_block: str
    seconds: float
    python_version: str = ""
    lock: str = ""
    runs: list[KernelRun] = field(default_factory=list)
    reference_seconds: float | None = None


def kernel_summary(output: str) -> str:
    """What kernel/inference.py prints after its rule line (its whole output if there is none)."""
    _, rule, summary = output.rpartition(KERNEL_SUMMARY_RULE)
    return summary.strip() if rule else output.strip()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its sha256."""
    return {path.relative_to(folder).as_posix(): sha256_file(path) for path in sorted(folder.rglob("*")) if path.is_file()}


def run_kernel(python: Path, work: Path, bundle: Path, data: Path, block: NetworkBlock, *, engine: str,
               label: str) -> KernelRun:
    """The kernel with --strict (a fallback Kaggle would survive is a failure of the dry run),
    writing into its own folder of `work`; the engines that ran each model from its report."""
    out = work / f"run-{len([p for p in work.glob('run-*')]) + 1}"
    out.mkdir()
    started = time.monotonic()
    result = block.run([str(python), str(work / KERNEL_SCRIPT), "--data-dir", str(data), "--bundle-dir", str(bundle),
                        "--output", str(out / "submission.csv"), "--engine", engine, "--strict"], cwd=out)
    seconds = time.monotonic() - started
    (out / "kernel.log").write_text(result.stdout, encoding="utf-8")
    if result.returncode != 0:
        raise BundleError(f"the kernel failed offline ({label}; exit code {result.returncode}); its last output:\n"
                          f"{result.stdout[-6000:]}", exit_code=1)
    return KernelRun(label, engine, out / "submission.csv", engines_of(out / REPORT_NAME), kernel_summary(result.stdout),
                     seconds)


def engines_of(report: Path) -> dict[str, str]:
    """model name -> engine, from the kernel's inference_report.json."""
    try:
        models = json.loads(report.read_text(encoding="utf-8"))["models"]
        return {model["name"]: model.get("engine", "?") for model in models}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BundleError(f"the kernel wrote no readable {report} ({error})", exit_code=1) from None


def require_nothing_installed(before: list[dict], after: list[dict], what: str) -> None:
    changes = pip_list_changes(before, after)
    if changes:
        raise BundleError(f"{what} changed the installed packages (pip list before and after): {'; '.join(changes)}. "
                          f"The kernel must leave Kaggle's image as it is unless a model falls back to the keras "
                          f"engine and the image lacks what it needs", exit_code=1)


def max_difference(submission: Path, reference: Path) -> float:
    """The largest absolute difference between two submissions' probabilities, row by row;
    their columns and ids must be the same."""
    header, rows = read_csv_rows(submission)
    ref_header, ref_rows = read_csv_rows(reference)
    if header != ref_header or [row[0] for row in rows] != [row[0] for row in ref_rows]:
        raise BundleError(f"{submission} and {reference} differ in their columns or ids: not comparable", exit_code=1)
    return max((abs(float(a) - float(b)) for row, ref in zip(rows, ref_rows) for a, b in zip(row[1:], ref[1:])),
               default=0.0)


def training_stack_reference(bundle: Path, data: Path, work: Path, block: NetworkBlock) -> tuple[Path, float]:
    """The training stack's Keras predictions of the bundle's models (this Python: the training
    venv), offline, with `python -m hms_offline predict --engine keras`."""
    out = work / "reference"
    out.mkdir()
    started = time.monotonic()
    result = block.run([sys.executable, "-m", PACKAGE, "predict", "--engine", "keras", "--data-dir", str(data),
                        "--bundle-dir", str(bundle), "--output", str(out / "submission.csv"), "--strict"],
                       cwd=REPO_ROOT)
    (out / "predict.log").write_text(result.stdout, encoding="utf-8")
    if result.returncode != 0:
        raise BundleError(f"the training stack's Keras prediction ({sys.executable} -m {PACKAGE} predict --engine keras; "
                          f"run build_bundle.py with the training venv's Python) failed (exit code "
                          f"{result.returncode}):\n{result.stdout[-4000:]}", exit_code=1)
    return out / "submission.csv", time.monotonic() - started


def check_engines_against_training_stack(python: Path, work: Path, bundle: Path, data: Path, block: NetworkBlock,
                                         first: KernelRun, installed: list[dict]) -> tuple[list[KernelRun], float]:
    """The two checks that need the kernel's engines: (1) the kernel's predictions equal the
    training stack's Keras predictions on the same weights within PREDICTION_TOLERANCE; (2)
    with keras-cv unimportable (a meta-path guard beside the socket guard), a second run with
    --engine auto still predicts - and equals the reference too - and installs nothing."""
    reference, reference_seconds = training_stack_reference(bundle, data, work, block)
    without = NetworkBlock.install(work / "offline_guard_without_keras_cv", unimportable=WITHOUT_KERAS_CV)
    LOG.info("running the kernel again with %s unimportable (%s)", ", ".join(WITHOUT_KERAS_CV), without.describe())
    second = run_kernel(python, work, bundle, data, without, engine="auto",
                        label=f"--engine auto, {', '.join(WITHOUT_KERAS_CV)} unimportable")
    require_nothing_installed(installed, pip_list(python), f"the kernel ({second.label})")
    for kernel_run in (first, second):
        kernel_run.max_difference = max_difference(kernel_run.submission, reference)
        if not kernel_run.max_difference <= PREDICTION_TOLERANCE:  # also catches NaN
            raise BundleError(
                f"the kernel's predictions ({kernel_run.label}; engines {kernel_run.engines}) differ from the training "
                f"stack's Keras predictions on the same weights by up to {kernel_run.max_difference:.3g}, more than "
                f"{PREDICTION_TOLERANCE:g} ({kernel_run.submission} vs {reference})", exit_code=1)
    return [first, second], reference_seconds


def verify_bundle(dist: Path, work: Path, *, data_dir: Path | None, kaggle_base: Path, dataset_slug: str,
                  engine: str = "auto") -> Verification:
    """Run the built kernel on sample test data in a fresh environment layered on the
    Kaggle-shaped base, network blocked, with the dataset exactly as built; check the
    submission, that nothing was installed or replaced, the predictions against the training
    stack's, and a run without keras-cv."""
    started = time.monotonic()
    if engine not in VERIFY_ENGINES:
        raise BundleError(f"--verify-engine must be one of {', '.join(VERIFY_ENGINES)}, not {engine!r}")
    dataset, kernel_script = find_built_bundle(dist, dataset_slug)
    base_python = kaggle_base_python(kaggle_base)
    python_version = python_version_of(base_python)
    lock = require_lock_for(dataset, python_version)
    work.mkdir(parents=True, exist_ok=True)
    bundle = work / "bundle"
    LOG.info("verifying %s as built (a copy, its %s for CPython %s), in %s", dataset, lock.name, python_version, work)
    shutil.copytree(dataset, bundle)
    bundle_before = snapshot(bundle)
    (work / KERNEL_SCRIPT).parent.mkdir()
    shutil.copyfile(kernel_script, work / KERNEL_SCRIPT)
    data = data_dir.resolve() if data_dir else synthesize_competition(work / "data", **VERIFY_SYNTHETIC)
    check_test_data(data)
    python = make_fresh_env(base_python, work / "env")
    require_absent_before_install(python)
    base_installed, installed = pip_list(base_python), pip_list(python)
    block = NetworkBlock.install(work / "offline_guard")
    LOG.info("running the kernel (--engine %s) in a fresh environment on %s, offline (%s)", engine, kaggle_base,
             block.describe())
    first = run_kernel(python, work, bundle, data, block, engine=engine, label=f"--engine {engine}")
    require_nothing_installed(installed, pip_list(python), f"the kernel (--engine {engine})")
    require_not_installed(python, work / "env")
    rows = check_submission(first.submission, data / "sample_submission.csv")
    runs, reference_seconds = check_engines_against_training_stack(python, work, bundle, data, block, first, installed)
    require_nothing_installed(base_installed, pip_list(base_python), "--verify")  # the base itself
    if snapshot(bundle) != bundle_before:
        raise BundleError(f"the kernel wrote into its bundle folder {bundle} (read-only on Kaggle)", exit_code=1)
    kl = None
    if (data / "test_solution.csv").is_file():
        # by the training stack: the fresh environment has no hms_offline installed (by design)
        scored = block.run(score_command(Path(sys.executable), data / "test_solution.csv", first.submission),
                           cwd=REPO_ROOT)
        if scored.returncode != 0:
            raise BundleError(f"scoring the submission failed:\n{scored.stdout[-3000:]}", exit_code=1)
        kl = parse_score(scored.stdout)
    return Verification(first.submission, rows, kl, first.summary, block.describe(), time.monotonic() - started,
                        python_version, lock.name, runs, reference_seconds)


def submission_head(path: Path, rows: int = 5) -> str:
    with open(path, encoding="utf-8") as handle:
        return "".join(line for _, line in zip(range(rows + 1), handle)).rstrip("\n")


def describe_engines(engines: dict[str, str]) -> str:
    return ", ".join(f"{name}: {engine}" for name, engine in engines.items()) or "no model"


def print_verification(result: Verification) -> None:
    print(f"Kernel summary (fresh environment on the Kaggle-shaped base, CPython {result.python_version}, "
          f"dataset as built):")
    print("  " + result.kernel_summary.replace("\n", "\n  "))
    print(f"Verified offline ({result.network_block}): hms_offline was absent before the kernel ran and imported from "
          f"the bundle's wheel, never installed; the kernel installed and replaced nothing (pip list before and after "
          f"each run, of the fresh environment and of the base); the submission has {result.rows} row(s) with the "
          f"columns and row order of sample_submission.csv, finite values in [0, 1], rows summing to 1 "
          f"(within {SUM_TOLERANCE:g}).")
    for kernel_run in result.runs:
        compared = ("" if kernel_run.max_difference is None or math.isnan(kernel_run.max_difference) else
                    f"; max difference from the training stack's Keras predictions {kernel_run.max_difference:.2g} "
                    f"(tolerance {PREDICTION_TOLERANCE:g})")
        print(f"Kernel run {kernel_run.label}: {kernel_run.seconds:.0f} s; engines {describe_engines(kernel_run.engines)}"
              f"{compared}")
    if result.reference_seconds is not None:
        print(f"Reference: the training stack's Keras predictions ({sys.executable} -m {PACKAGE} predict --engine keras) "
              f"in {result.reference_seconds:.0f} s")
    print("Head of the submission:")
    print("  " + submission_head(result.submission).replace("\n", "\n  "))
    if result.kl is not None:
        print(f"KL divergence against test_solution.csv: {result.kl:.6f}")
    print(f"--verify wall time: {result.seconds:.0f} s")
