#!/usr/bin/env python
"""hms-offline kernel: competition test files -> submission.csv, with the internet off.

On Kaggle (where /kaggle/input exists) it finds the competition folder (test.csv +
test_spectrograms/) by the competition's slug, then by content, and the bundle folder
(weights_manifest.json) by the dataset id build_bundle.py wrote into BUNDLE_DATASET, then
by content, and writes /kaggle/working/submission.csv. Elsewhere it is a local dry run:

    python kernel/inference.py --data-dir DIR --bundle-dir DIR --output submission.csv [--strict]

It imports hms_offline from the bundle's own pure-Python wheel (on sys.path: nothing is
installed) and runs the fold ensemble with the exported models (TFLite, else the TF
SavedModel), which need only the image's TensorFlow: by default the image is left as it
is. Only a model that must fall back to the keras engine makes it install, from the
bundle's wheels/ for this Python (`lock-cp3XY.json`, `pip --no-index`), what the image
lacks, and it says what, if anything, it replaced and why. It never reaches for the
network. This file is self-contained: Kaggle runs it as a single script.
"""

import argparse
import importlib
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
SEARCH_DEPTH = 4
# Copies of the package's facts, which this script cannot import before it has found the bundle;
# tests/test_one_home.py ties each to its home (named after it).
MANIFEST_NAME = "weights_manifest.json"  # hms_offline.models.manifest.MANIFEST_NAME
COMPETITION_SLUG = "hms-harmful-brain-activity-classification"  # hms_offline.bundle.build.COMPETITION_SLUG
ENGINES = ("auto", "tflite", "saved_model", "keras")  # hms_offline.models.engines.AUTO, ENGINE_NAMES
DEFAULT_BATCH_SIZE = 16  # hms_offline.serving.inference.DEFAULT_BATCH_SIZE
WHEELS_DIR = Path("wheels")  # hms_offline.bundle.wheels.WHEELS_DIR: the locks, and hms_offline's own wheel
PACKAGE_WHEEL_GLOB = "hms_offline-*.whl"  # the wheel hms_offline.bundle.package builds
LOCK_FIELDS = ("name", "version", "file")  # of each entry hms_offline.bundle.wheels.wheel_lock writes
INSTALL_RULES = ("missing", "missing_or_different")  # hms_offline.bundle.wheels.INSTALL_RULES
DEFAULT_INSTALL_RULE = "missing_or_different"  # a lock entry's `install_if`, when it has none
BUNDLE_DATASET = None  # build_bundle.py replaces this line with the dataset id "user/slug"

log = logging.getLogger("hms_kernel")


def is_competition_dir(path: Path) -> bool:
    return (path / "test.csv").is_file() and (path / "test_spectrograms").is_dir()


def is_bundle_dir(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


def find_competition_dir(root: Path, strict: bool) -> Path:
    """The folder named after the competition first, then any that looks like it: an EDA
    dataset holding a copy of the test files must not win by sorting first."""
    found = folders_under(root, is_competition_dir)
    named = [folder for folder in found if folder.name == COMPETITION_SLUG]
    if named and len(found) > len(named):
        log.info("not the competition folder, though they hold test.csv + test_spectrograms/: %s",
                 ", ".join(str(folder) for folder in found if folder not in named))
    reason = f"named {COMPETITION_SLUG}" if named else "by content"
    return choose("competition folder (test.csv + test_spectrograms/)", root, named or found, reason, "--data-dir",
                  strict)


def find_bundle_dir(root: Path, dataset_id: str | None, strict: bool) -> Path:
    """Where Kaggle mounts the dataset the build wrote into BUNDLE_DATASET, else any folder
    holding a weights manifest."""
    what = f"bundle folder ({MANIFEST_NAME})"
    if dataset_id:
        mounted = [folder for folder in dataset_mounts(root, dataset_id) if is_bundle_dir(folder)]
        if mounted:
            return choose(what, root, mounted, f"the dataset {dataset_id}", "--bundle-dir", strict)
        log.warning("the dataset %s is not attached (no %s in %s): looking for a bundle by content", dataset_id,
                    MANIFEST_NAME, " or ".join(str(folder) for folder in dataset_mounts(root, dataset_id)))
    return choose(what, root, folders_under(root, is_bundle_dir), "by content", "--bundle-dir", strict)


def dataset_mounts(root: Path, dataset_id: str) -> list[Path]:
    """Where Kaggle mounts the dataset "user/slug": <root>/slug/ or <root>/datasets/user/slug/."""
    user, _, slug = dataset_id.partition("/")
    return [root / slug, root / "datasets" / user / slug]


def choose(what: str, root: Path, candidates: list[Path], reason: str, flag: str, strict: bool) -> Path:
    """The first candidate (the shallowest, then first by name); with several, say which
    was taken and which were not, or, with --strict, refuse."""
    if not candidates:
        raise SystemExit(f"error: no {what} found under {root} (searched {SEARCH_DEPTH} levels deep); "
                         f"attach it to the notebook or name it with {flag}")
    chosen, others = candidates[0], candidates[1:]
    if others and strict:
        raise SystemExit(f"error: --strict: {len(candidates)} candidates for the {what} ({reason}): "
                         f"{', '.join(map(str, candidates))}; name one with {flag}")
    if others:
        log.warning("%d candidates for the %s (%s): took %s, the shallowest and first by name; not %s",
                    len(candidates), what, reason, chosen, ", ".join(map(str, others)))
    else:
        log.info("%s: %s (%s)", what, chosen, reason)
    return chosen


def folders_under(root: Path, predicate) -> list[Path]:
    """Every folder under `root` that `predicate` accepts, breadth-first and sorted, a few
    levels deep; the search does not go inside a folder it accepted."""
    found, level = [], [root]
    for _ in range(SEARCH_DEPTH + 1):
        accepted = [folder for folder in level if predicate(folder)]
        found += accepted
        level = sorted(child for folder in level if folder not in accepted for child in _subdirs(folder))
    return found


def _subdirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return [Path(entry.path) for entry in entries if entry.is_dir()]
    except OSError:
        return []


def parse_args(argv=None) -> argparse.Namespace:
    on_kaggle = KAGGLE_INPUT.is_dir()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="competition folder (found under /kaggle/input on Kaggle)")
    parser.add_argument("--bundle-dir", type=Path, help="folder with weights_manifest.json (found under /kaggle/input on Kaggle)")
    parser.add_argument("--output", type=Path, default=KAGGLE_WORKING / "submission.csv" if on_kaggle else None)
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="processes that read and preprocess the test parquet files in memory, a few batches "
                             "ahead of the models (default: one per core); a file that crashes the reader costs "
                             "only its samples, never the kernel. Nothing is written to disk but the outputs")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="what runs the models (default auto: per model tflite, then saved_model, then keras; "
                             "saved_model first where a GPU is visible). Only keras installs anything")
    parser.add_argument("--strict", action="store_true",
                        help="refuse rather than choose among several candidate folders or fall back on a bad input "
                             "(for local dry runs and CI; off on Kaggle, where a refusal costs the submission)")
    # parse_known_args: run from a notebook cell, sys.argv holds ipykernel's own flags.
    args, ignored = parser.parse_known_args(argv)
    if ignored:
        log.info("ignoring arguments not meant for this script: %s", " ".join(ignored))
    if not on_kaggle and None in (args.data_dir, args.bundle_dir, args.output):
        parser.error("--data-dir, --bundle-dir and --output are required outside Kaggle (no /kaggle/input here)")
    args.data_dir = args.data_dir or find_competition_dir(KAGGLE_INPUT, args.strict)
    args.bundle_dir = args.bundle_dir or find_bundle_dir(KAGGLE_INPUT, BUNDLE_DATASET, args.strict)
    return args


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        if int(text) >= 1:
            return int(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def needs_install(package: dict) -> bool:
    """Missing, or at another version unless the lock says to keep any installed version
    (`install_if: missing`, for packages whose replacement could break the image's own)."""
    installed = installed_version(package["name"])
    if installed is None:
        return True
    return package.get("install_if", DEFAULT_INSTALL_RULE) != "missing" and installed != package["version"]


def wheels_to_install(lock: dict) -> list[dict]:
    return [package for package in lock["packages"] if needs_install(package)]


def pip_install(wheel_dir: Path, files: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
               "--disable-pip-version-check", "--no-input", "--find-links", str(wheel_dir)]
    return subprocess.run(command + [str(wheel_dir / f) for f in files], capture_output=True, text=True)


class BundleSetupError(RuntimeError):
    """The keras engine's offline install cannot be done; the exported engines still run."""


def read_lock(path: Path) -> dict:
    """A lock file, checked: a damaged one is an error naming the file and the field."""
    try:
        lock = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleSetupError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(lock, dict) or not isinstance(lock.get("packages"), list):
        raise BundleSetupError(f"{path}: lacks a 'packages' list")
    for index, package in enumerate(lock["packages"]):
        problem = lock_entry_problem(package)
        if problem:
            raise BundleSetupError(f"{path}: packages[{index}] {problem}")
    return lock


def lock_entry_problem(package) -> str | None:
    if not isinstance(package, dict):
        return "is not an object"
    for key in LOCK_FIELDS:
        if key not in package:
            return f"lacks {key!r}"
        if not isinstance(package[key], str) or not package[key]:
            return f"has {key!r} {package[key]!r}, not a non-empty string"
    if package.get("install_if", DEFAULT_INSTALL_RULE) not in INSTALL_RULES:
        return f"has 'install_if' {package['install_if']!r}, not one of {', '.join(INSTALL_RULES)}"
    return None


def python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def lock_for_this_python(bundle_dir: Path) -> Path | None:
    """wheels/lock-cp3XY.json for this interpreter (hms_offline.bundle.wheels.Target.lock_name);
    None (said plainly) when the bundle has none."""
    lock_path = bundle_dir / WHEELS_DIR / f"lock-{python_tag()}.json"
    if lock_path.is_file():
        return lock_path
    shipped = sorted(path.stem.removeprefix("lock-") for path in (bundle_dir / WHEELS_DIR).glob("lock-cp*.json"))
    log.warning("keras engine: this kernel runs CPython %d.%d, and %s: it can only use the packages already "
                "installed (the exported engines, tflite and saved_model, need no install)",
                sys.version_info.major, sys.version_info.minor,
                f"the bundle ships its wheels for {', '.join(shipped)} only" if shipped
                else f"{bundle_dir} ships no wheels for it")
    return None


def install_keras_stack(bundle_dir: Path) -> list[str]:
    """For the keras engine only: install, offline, what this Python's lock pins and the
    image lacks (or, where the lock says so and why, holds at a version the bundle cannot
    use). Returns what was installed; says what it replaced."""
    lock_path = lock_for_this_python(bundle_dir)
    if lock_path is None:
        return []
    lock = read_lock(lock_path)
    pending = wheels_to_install(lock)
    if not pending:
        log.info("keras engine: all %d packages of %s already installed", len(lock["packages"]), lock_path.name)
        return []
    for package in pending:
        present = installed_version(package["name"])
        if present is not None:
            log.warning("keras engine: REPLACING the image's %s %s with %s (%s)", package["name"], present,
                        package["version"], package.get("why", "the lock says so"))
    log.info("keras engine: installing %d wheel(s) offline from %s: %s", len(pending), lock_path.name,
             ", ".join(f"{p['name']}=={p['version']}" for p in pending))
    wheel_dir = lock_path.parent
    if pip_install(wheel_dir, [p["file"] for p in pending]).returncode != 0:
        for pkg in pending:
            result = pip_install(wheel_dir, [pkg["file"]])
            if result.returncode != 0:
                raise BundleSetupError(
                    f"installing {pkg['name']}=={pkg['version']} from {wheel_dir / pkg['file']} failed:\n"
                    f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
                )
    importlib.invalidate_caches()
    return [p["name"] for p in pending]


def import_hms_offline(bundle_dir: Path):
    """hms_offline from the bundle's own pure-Python wheel (put on sys.path: nothing is
    installed), else an installed one (a local dry run on a folder that is not a built bundle)."""
    wheels = sorted((bundle_dir / WHEELS_DIR).glob(PACKAGE_WHEEL_GLOB))
    for candidate in (*wheels[-1:], None):
        if candidate is not None:
            sys.path.insert(0, str(candidate))
        try:
            module = importlib.import_module("hms_offline")
        except ImportError:
            if candidate is not None:
                sys.path.remove(str(candidate))
            continue
        log.info("hms_offline %s from %s", module.__version__, candidate or Path(module.__file__).parent)
        return module
    raise SystemExit(f"error: hms_offline is neither in {bundle_dir / WHEELS_DIR} nor installed")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    args = parse_args(argv)
    log.info("competition folder: %s", args.data_dir)
    log.info("bundle folder: %s", args.bundle_dir)
    log.info("Python %s; engine %s", sys.version.split()[0], args.engine)
    import_hms_offline(args.bundle_dir)
    from hms_offline.serving.inference import predict_competition

    installed = []
    try:
        report = predict_competition(
            data_dir=args.data_dir,
            bundle_dir=args.bundle_dir,
            output=args.output,
            batch_size=args.batch_size,
            workers=args.workers,
            strict=args.strict,
            engine=args.engine,
            prepare_keras=lambda: installed.extend(install_keras_stack(args.bundle_dir)),
        )
    except (ValueError, FileNotFoundError) as error:  # no model can predict, no test row, --strict
        log.error("%s", error)
        return 1
    print("=" * 60)
    print(f"submission: {report.submission}")
    print(f"installed offline: {len(installed)} package(s)" + (f" ({', '.join(installed)})" if installed else
                                                                  " (the image was left as it was)"))
    for line in report.lines():
        print(line)
    print(f"total: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    status = main()
    if status:  # a clean finish raises nothing: in a notebook cell even SystemExit(0) shows as an error
        sys.exit(status)
