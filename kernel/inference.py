#!/usr/bin/env python
"""hms-offline kernel: competition test files -> submission.csv, with the internet off.

On Kaggle (where /kaggle/input exists) it finds the competition folder (test.csv +
test_spectrograms/) and the bundle folder (weights_manifest.json) by their contents and
writes /kaggle/working/submission.csv. Elsewhere it is a local dry run:

    python kernel/inference.py --data-dir DIR --bundle-dir DIR --output submission.csv

It first installs, from the bundle's wheels/ and with `pip --no-index`, the packages of
wheels/lock.json that are missing or at another version (hms_offline among them), then
runs the fold ensemble. It never reaches for the network. This file is self-contained:
Kaggle runs it as a single script.
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
MANIFEST_NAME = "weights_manifest.json"
LOCK_FILE = Path("wheels") / "lock.json"
SEARCH_DEPTH = 4

log = logging.getLogger("hms_kernel")


def is_competition_dir(path: Path) -> bool:
    return (path / "test.csv").is_file() and (path / "test_spectrograms").is_dir()


def is_bundle_dir(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


def find_dir(root: Path, predicate, what: str) -> Path:
    """The first folder under `root` (breadth-first, sorted, a few levels deep) that `predicate` accepts."""
    level = [root]
    for _ in range(SEARCH_DEPTH + 1):
        for folder in level:
            if predicate(folder):
                return folder
        level = sorted(child for folder in level for child in _subdirs(folder))
    raise FileNotFoundError(f"no {what} found under {root} (searched {SEARCH_DEPTH} levels deep)")


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [child for child in folder.iterdir() if child.is_dir()]
    except OSError:
        return []


def parse_args(argv=None) -> argparse.Namespace:
    on_kaggle = KAGGLE_INPUT.is_dir()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="competition folder (found under /kaggle/input on Kaggle)")
    parser.add_argument("--bundle-dir", type=Path, help="folder with weights_manifest.json (found under /kaggle/input on Kaggle)")
    parser.add_argument("--output", type=Path, default=KAGGLE_WORKING / "submission.csv" if on_kaggle else None)
    parser.add_argument("--work-dir", type=Path,
                        help="scratch folder for converted test spectrograms (default: a temp dir, removed at the "
                             "end, so on Kaggle they do not land among the notebook's outputs in /kaggle/working)")
    parser.add_argument("--batch-size", type=int, default=16)
    # parse_known_args: run from a notebook cell, sys.argv holds ipykernel's own flags.
    args, ignored = parser.parse_known_args(argv)
    if ignored:
        log.info("ignoring arguments not meant for this script: %s", " ".join(ignored))
    if not on_kaggle and None in (args.data_dir, args.bundle_dir, args.output):
        parser.error("--data-dir, --bundle-dir and --output are required outside Kaggle (no /kaggle/input here)")
    args.data_dir = args.data_dir or find_dir(
        KAGGLE_INPUT, is_competition_dir, "competition folder (test.csv + test_spectrograms/)"
    )
    args.bundle_dir = args.bundle_dir or find_dir(KAGGLE_INPUT, is_bundle_dir, f"bundle folder ({MANIFEST_NAME})")
    return args


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
    return package.get("install_if", "missing_or_different") != "missing" and installed != package["version"]


def wheels_to_install(lock: dict) -> list[dict]:
    return [package for package in lock["packages"] if needs_install(package)]


def pip_install(wheel_dir: Path, files: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
               "--disable-pip-version-check", "--no-input", "--find-links", str(wheel_dir)]
    return subprocess.run(command + [str(wheel_dir / f) for f in files], capture_output=True, text=True)


def install_bundle_wheels(bundle_dir: Path) -> list[str]:
    """Install what the lock file pins and this environment lacks; returns what was installed."""
    lock_path = bundle_dir / LOCK_FILE
    if not lock_path.is_file():
        log.info("no %s in the bundle: using the installed packages", LOCK_FILE)
        return []
    lock = json.loads(lock_path.read_text())
    pending = wheels_to_install(lock)
    if not pending:
        log.info("all %d pinned packages already installed", len(lock["packages"]))
        return []
    log.info("installing %d wheel(s) offline: %s", len(pending), ", ".join(f"{p['name']}=={p['version']}" for p in pending))
    wheel_dir = lock_path.parent
    if pip_install(wheel_dir, [p["file"] for p in pending]).returncode != 0:
        for pkg in pending:
            result = pip_install(wheel_dir, [pkg["file"]])
            if result.returncode != 0:
                raise SystemExit(
                    f"error: installing {pkg['name']}=={pkg['version']} from {wheel_dir / pkg['file']} failed:\n"
                    f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
                )
    importlib.invalidate_caches()
    return [p["name"] for p in pending]


def import_hms_offline(bundle_dir: Path):
    """The installed hms_offline, else the one in the bundle or beside this script."""
    beside_script = [Path(globals()["__file__"]).resolve().parents[1]] if "__file__" in globals() else []
    for candidate in (None, bundle_dir, *beside_script):
        if candidate is not None:
            if not (candidate / "hms_offline" / "__init__.py").is_file():
                continue
            sys.path.insert(0, str(candidate))
        try:
            return importlib.import_module("hms_offline")
        except ImportError:
            continue
    raise SystemExit(f"error: hms_offline is neither installed nor in {bundle_dir}")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    args = parse_args(argv)
    log.info("competition folder: %s", args.data_dir)
    log.info("bundle folder: %s", args.bundle_dir)
    install_start = time.perf_counter()
    installed = install_bundle_wheels(args.bundle_dir)
    install_seconds = time.perf_counter() - install_start
    hms_offline = import_hms_offline(args.bundle_dir)
    log.info("hms_offline %s from %s", hms_offline.__version__, Path(hms_offline.__file__).parent)
    from hms_offline.inference import predict_competition

    try:
        summary = predict_competition(
            data_dir=args.data_dir,
            bundle_dir=args.bundle_dir,
            output=args.output,
            work_dir=args.work_dir,
            batch_size=args.batch_size,
        )
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        return 1
    print("=" * 60)
    print(f"submission: {args.output}")
    print(f"installed offline: {len(installed)} package(s)  ({install_seconds:.1f} s)")
    for line in summary.lines():
        print(line)
    print(f"total: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    status = main()
    if status:  # a clean finish raises nothing: in a notebook cell even SystemExit(0) shows as an error
        sys.exit(status)
