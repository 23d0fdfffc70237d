"""--verify: the built kernel on sample test data, offline, in a fresh environment on the
Kaggle base with the bundle's wheels swapped for the local Python's; the submission checked
and scored."""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .common import KERNEL_SCRIPT, LOG, PACKAGE, REPO_ROOT, BundleError, run, write_json
from .environment import (NetworkBlock, kaggle_base_python, local_target, make_fresh_env, python_version_of,
                          require_absent_before_install, require_installed_from_bundle)
from .submission_check import SUM_TOLERANCE, check_submission
from .wheels import Target, canonical_name, ensure_cached_wheels, wheel_lock

# The sample test data --verify generates when no --verify-data is given.
VERIFY_SYNTHETIC = {"n_train": 6, "n_test": 8, "seed": 0}
KERNEL_SUMMARY_RULE = "=" * 60  # kernel/inference.py prints its summary below this line


def find_built_bundle(dist: Path, slug: str) -> tuple[Path, Path]:
    """The dataset folder (the one holding wheels/lock.json) and kernel/inference.py of a build in `dist`."""
    kernel = dist / "kernel" / "inference.py"
    datasets = sorted(lock.parent.parent for lock in dist.glob("*/wheels/lock.json"))
    if not kernel.is_file() or not datasets:
        raise BundleError(f"{dist} holds no built bundle (kernel/inference.py and <dataset>/wheels/lock.json): "
                          f"build one first with python build_bundle.py --kaggle-user USER --out {dist}")
    if len(datasets) > 1:
        datasets = [dataset for dataset in datasets if dataset.name == slug]
        if not datasets:
            raise BundleError(f"{dist} holds several datasets; name one with --dataset-slug")
    return datasets[0], kernel


def bundle_for_local_python(dataset: Path, copy: Path, wheels: dict[str, Path], target: Target) -> None:
    """A copy of the built dataset whose pinned wheels are the same pins for this machine's
    Python, with lock.json regenerated for them; weights, manifest and the hms_offline wheel
    (pure Python) as built."""
    shutil.copytree(dataset, copy)
    wheel_dir = copy / "wheels"
    lock = json.loads((wheel_dir / "lock.json").read_text(encoding="utf-8"))
    package = canonical_name(PACKAGE)
    package_wheels = [wheel_dir / p["file"] for p in lock["packages"] if p["name"] == package]
    if len(package_wheels) != 1:
        raise BundleError(f"{dataset / 'wheels' / 'lock.json'} lists no single {package} wheel: not a build of build_bundle.py")
    for pinned in (p for p in lock["packages"] if p["name"] != package):
        (wheel_dir / pinned["file"]).unlink()
    local = []
    for cached in wheels.values():
        shutil.copyfile(cached, wheel_dir / cached.name)
        local.append(wheel_dir / cached.name)
    write_json(wheel_dir / "lock.json", wheel_lock(local + package_wheels, target))


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
class Verification:
    submission: Path
    rows: int
    kl: float | None  # against the data's test_solution.csv, when it has one
    kernel_summary: str
    network_block: str
    seconds: float


def kernel_summary(output: str) -> str:
    """What kernel/inference.py prints after its rule line (its whole output if there is none)."""
    _, rule, summary = output.rpartition(KERNEL_SUMMARY_RULE)
    return summary.strip() if rule else output.strip()


def run_kernel(python: Path, work: Path, data: Path, block: NetworkBlock) -> str:
    """The kernel with --strict: a fallback Kaggle would survive is a failure of the dry run."""
    result = block.run([str(python), str(work / KERNEL_SCRIPT), "--data-dir", str(data), "--bundle-dir",
                        str(work / "bundle"), "--output", str(work / "submission.csv"),
                        "--work-dir", str(work / "kernel-work"), "--strict"], cwd=work)
    if result.returncode != 0:
        raise BundleError(f"the kernel failed offline (exit code {result.returncode}); its last output:\n"
                          f"{result.stdout[-6000:]}", exit_code=1)
    return result.stdout


def verify_bundle(dist: Path, work: Path, *, data_dir: Path | None, kaggle_base: Path, wheel_cache: Path,
                  offline: bool, dataset_slug: str) -> Verification:
    """Run the built kernel on sample test data in a fresh environment that holds only the
    Kaggle base (no keras-cv, no hms_offline), network blocked; check the submission."""
    started = time.monotonic()
    dataset, kernel_script = find_built_bundle(dist, dataset_slug)
    base_python = kaggle_base_python(kaggle_base)
    target = local_target(python_version_of(base_python))
    wheels = ensure_cached_wheels(wheel_cache, target, offline=offline)
    work.mkdir(parents=True, exist_ok=True)
    LOG.info("verifying %s: a copy with the wheels for CPython %s, in %s", dataset, target.python_version, work)
    bundle_for_local_python(dataset, work / "bundle", wheels, target)
    (work / KERNEL_SCRIPT).parent.mkdir()
    shutil.copyfile(kernel_script, work / KERNEL_SCRIPT)
    data = data_dir.resolve() if data_dir else synthesize_competition(work / "data", **VERIFY_SYNTHETIC)
    check_test_data(data)
    python = make_fresh_env(base_python, work / "env")
    require_absent_before_install(python)
    block = NetworkBlock.install(work / "offline_guard")
    LOG.info("running the kernel in a fresh environment on %s, offline (%s)", kaggle_base, block.describe())
    output = run_kernel(python, work, data, block)
    require_installed_from_bundle(python, work / "env")
    submission = work / "submission.csv"
    rows = check_submission(submission, data / "sample_submission.csv")
    kl = None
    if (data / "test_solution.csv").is_file():
        scored = block.run(score_command(python, data / "test_solution.csv", submission), cwd=work)
        if scored.returncode != 0:
            raise BundleError(f"scoring the submission failed:\n{scored.stdout[-3000:]}", exit_code=1)
        kl = parse_score(scored.stdout)
    return Verification(submission, rows, kl, kernel_summary(output), block.describe(), time.monotonic() - started)


def submission_head(path: Path, rows: int = 5) -> str:
    with open(path, encoding="utf-8") as handle:
        return "".join(line for _, line in zip(range(rows + 1), handle)).rstrip("\n")


def print_verification(result: Verification) -> None:
    print("Kernel summary (fresh environment on the Kaggle base, wheels from the bundle):")
    print("  " + result.kernel_summary.replace("\n", "\n  "))
    print(f"Verified offline ({result.network_block}) in {result.seconds:.0f} s: keras_cv and hms_offline were "
          f"absent before the kernel installed them from the bundle; the submission has {result.rows} row(s) with the "
          f"columns and row order of sample_submission.csv, finite values in [0, 1], rows summing to 1 "
          f"(within {SUM_TOLERANCE:g}).")
    print("Head of the submission:")
    print("  " + submission_head(result.submission).replace("\n", "\n  "))
    if result.kl is not None:
        print(f"KL divergence against test_solution.csv: {result.kl:.6f}")
