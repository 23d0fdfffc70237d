#!/usr/bin/env python
"""Pack hms_offline, the wheels the kernel needs and the trained weights for Kaggle.

    python build_bundle.py --kaggle-user USER [--manifest weights_manifest.json ...] [--out dist]
        [--dataset-slug hms-offline-bundle] [--python-version 3.11 --python-version 3.12 ...]
        [--platform manylinux2014_x86_64] [--gpu] [--push]
    python build_bundle.py --fetch-wheels [--python-version 3.12 ...] [--platform ...]

writes two folders under --out:

    <dataset-slug>/        the Kaggle *dataset*
        wheels/            hms_offline's own wheel (the kernel imports it from there; never installed), the
                           keras engine's pinned wheels (KERNEL_WHEEL_PINS) for CPython 3.11, 3.12 and 3.13
                           (pure ones once, binary ones per Python), and lock-cp311.json, lock-cp312.json,
                           lock-cp313.json: what the kernel may install on that Python, and when
        weights/           the model files of the manifest
        exports/           each model as a TF SavedModel (<name>/saved_model/) and a TFLite file (<name>.tflite)
        weights_manifest.json (format 2, listing the exports), dataset-metadata.json, README.md, BUNDLE.json
    kernel/                the Kaggle *kernel*: inference.py, kernel-metadata.json

and prints the `kaggle` commands that upload them (`--push` runs them). Every --manifest is
first checked by the kernel's own loader (`python -m hms_offline check-manifest`, run by this
Python): a bundle the kernel would refuse is never built. Then every model is exported
(`python -m hms_offline export`, by this Python too) and each export proven on a probe batch
against its Keras model (SavedModel within 1e-5, TFLite within 1e-4), else the build stops
naming the model; exports are cached by the weights' sha256 (--export-cache, default
.cache/exports/), so a rebuild of the same weights does not export again. The kernel's
inference.py gets the dataset id written into its BUNDLE_DATASET line, so that on Kaggle it
finds its own bundle.

Wheels are downloaded once into a cache (--wheel-cache, default .cache/wheels/, one
folder per target <python-version>-<platform>), so a rebuild needs no network;
`--fetch-wheels` only fills that cache (the set-up step), `--offline` forbids downloading.
Before any slow work the build checks each lock statically: every wheel installs on its
Python (tags, Requires-Python), and every Requires-Dist (markers evaluated for that Python)
is met by the lock or by the Kaggle image's pins (hms_offline/bundle/kaggle_image.txt);
else it stops naming the lock, the wheel and the requirement.
Both folders are built in a temporary folder inside --out and renamed into place at the
end: a failed build leaves the previous dist as it was. Two builds from the same inputs
give byte-identical files; only BUNDLE.json's `built_at` differs.

    python build_bundle.py --verify DIST [--verify-data DIR] [--kaggle-base .venv-kaggle-base]
        [--verify-engine auto|tflite|saved_model|keras]

runs the dataset built in DIST exactly as built on sample test data (default: a small
synthetic competition), with the network blocked, in a fresh venv layered on the
Kaggle-shaped base (`make kaggle-base`: the image's Python 3.12 and pins), and checks: the
submission against sample_submission.csv (and its KL when the data has a
test_solution.csv); that the kernel installed and replaced nothing (`pip list` before and
after); that its predictions equal the training stack's Keras predictions on the same
weights within 1e-4; and that, with keras-cv made unimportable, a second run (--engine
auto) still predicts. It prints which engine ran each model and its wall time.

    python build_bundle.py --demo

the whole product on a fresh machine, in runs/demo/: synthetic data, a small fold ensemble
of both architectures trained with `python -m hms_offline train`, the bundle (Kaggle user
"demo"), its verification, and the submission's KL beside the class-prior baseline's.

This file is the command line; the work is done in hms_offline/bundle/, one module per
concern. Only the standard library and those modules are imported, so it starts fast and
runs anywhere.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hms_offline.bundle.build import DEFAULT_DATASET_SLUG, BuildOptions, build_bundle
from hms_offline.bundle.common import LOG, MANIFEST_NAME, REPO_ROOT, BundleError, display_path, human_size
from hms_offline.bundle.demo import (DEMO_DIR, DEMO_KAGGLE_USER, DEMO_SYNTHETIC, ENSEMBLE_DIR, class_prior_submission,
                                     describe_run, fit_demo_ensemble, score_locally, train_demo_runs)
from hms_offline.bundle.environment import DEFAULT_KAGGLE_BASE, KAGGLE_BASE_SETUP
from hms_offline.bundle.exports import default_export_cache
from hms_offline.bundle.kaggle_cli import print_upload_commands, push_bundle, upload_commands
from hms_offline.bundle.verify import VERIFY_ENGINES, print_verification, synthesize_competition, verify_bundle
from hms_offline.bundle.weights import read_weights_manifest
from hms_offline.bundle.wheels import (DEFAULT_PLATFORM, DEFAULT_PYTHON_VERSIONS, DEFAULT_WHEEL_CACHE,
                                       check_pins_against_image, check_wheel_sets, ensure_wheel_sets, parse_targets)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kaggle-user", help="your Kaggle user name (owner of the dataset and kernel)")
    parser.add_argument("--manifest", type=Path, action="append",
                        help=f"weights manifest of the ensemble to ship (default: the repo's {MANIFEST_NAME}); "
                             "repeat it to ship the models of several runs as one ensemble")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--dataset-slug", default=DEFAULT_DATASET_SLUG, help="Kaggle dataset slug")
    parser.add_argument("--python-version", action="append", metavar="3.X",
                        help="a CPython to ship the keras engine's wheels for, one lock each; repeat it "
                             f"(default: {' '.join(DEFAULT_PYTHON_VERSIONS)})")
    parser.add_argument("--platform", default=DEFAULT_PLATFORM, help="wheel platform tag of the Kaggle image")
    parser.add_argument("--gpu", action="store_true", help="kernel with a GPU accelerator")
    parser.add_argument("--push", action="store_true", help="upload with the kaggle CLI after building")
    parser.add_argument("--wheel-cache", type=Path, default=DEFAULT_WHEEL_CACHE,
                        help="downloaded wheels, one folder per target (default: .cache/wheels/)")
    parser.add_argument("--offline", action="store_true",
                        help="never download: every pinned wheel must be in the cache already")
    parser.add_argument("--export-cache", type=Path, default=None,
                        help="proven SavedModel / TFLite exports by weights sha256 "
                             "(default: $HMS_EXPORT_CACHE, else .cache/exports/)")
    commands = parser.add_mutually_exclusive_group()
    commands.add_argument("--fetch-wheels", action="store_true",
                          help="only fill the wheel cache for the target (the set-up step), then exit")
    commands.add_argument("--verify", type=Path, metavar="DIST",
                          help="run the kernel built in DIST on sample test data in a fresh environment holding only "
                               "the Kaggle base, network blocked, and check the submission")
    commands.add_argument("--demo", action="store_true",
                          help=f"synthetic data -> train both architectures -> bundle -> verify, in "
                               f"{DEMO_DIR.relative_to(REPO_ROOT)}/")
    parser.add_argument("--verify-engine", choices=VERIFY_ENGINES, default="auto",
                        help="the engine of --verify's first kernel run (default auto, as on Kaggle; keras runs the "
                             "fallback, which must install nothing on the Kaggle-shaped base either)")
    parser.add_argument("--verify-data", type=Path, metavar="DIR",
                        help="competition-shaped test data for --verify (default: a small synthetic competition)")
    parser.add_argument("--kaggle-base", type=Path, default=DEFAULT_KAGGLE_BASE,
                        help=f"venv with only what Kaggle's image surely has, for --verify and --demo "
                             f"(default: {DEFAULT_KAGGLE_BASE.name}/, made by `{KAGGLE_BASE_SETUP}`)")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT,
                        help="git checkout to pack hms_offline and kernel/inference.py from (default: this one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def targets_of(args: argparse.Namespace):
    return parse_targets(args.python_version or DEFAULT_PYTHON_VERSIONS, args.platform)


def fetch_wheels_command(args: argparse.Namespace) -> int:
    targets = targets_of(args)
    check_pins_against_image()
    wheel_sets = ensure_wheel_sets(args.wheel_cache, targets, offline=args.offline)
    check_wheel_sets(wheel_sets)
    for target, wheels in wheel_sets.items():
        total = sum(path.stat().st_size for path in wheels.values())
        print(f"{len(wheels)} wheels for CPython {target.python_version} on {target.platform} "
              f"({human_size(total)}) in {args.wheel_cache / target.cache_name}")
    return 0


def verify_command(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="hms-verify-") as work:
        result = verify_bundle(args.verify.resolve(), Path(work), data_dir=args.verify_data,
                               kaggle_base=args.kaggle_base.resolve(), dataset_slug=args.dataset_slug,
                               engine=args.verify_engine)
        print_verification(result)
    return 0


def build_command(args: argparse.Namespace) -> int:
    if not args.kaggle_user:
        raise BundleError("--kaggle-user is required to build a bundle")
    result = build_bundle(BuildOptions(
        kaggle_user=args.kaggle_user, manifests=args.manifest or [args.repo / MANIFEST_NAME], out=args.out.resolve(),
        dataset_slug=args.dataset_slug, targets=targets_of(args),
        gpu=args.gpu, wheel_cache=args.wheel_cache.resolve(), offline=args.offline, repo=args.repo.resolve(),
        export_cache=(args.export_cache or default_export_cache()).resolve(),
    ))
    print(f"Built {display_path(result.dataset_dir)} ({human_size(result.total_size)}) and "
          f"{display_path(result.kernel_dir)}; hms_offline {result.version}")
    commands = upload_commands(result, f"hms-offline {result.version}")
    print_upload_commands(commands)
    if args.push:
        push_bundle(args.kaggle_user, args.dataset_slug, commands)
    return 0


def demo_command(args: argparse.Namespace) -> int:
    """Synthetic data -> a small fold ensemble of both architectures -> bundle -> offline verification."""
    started = time.monotonic()
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    data = synthesize_competition(DEMO_DIR / "data", **DEMO_SYNTHETIC)
    runs = train_demo_runs(data, DEMO_DIR)
    manifest = fit_demo_ensemble(runs, ENSEMBLE_DIR)
    built = build_bundle(BuildOptions(
        kaggle_user=DEMO_KAGGLE_USER, manifests=[manifest], out=DEMO_DIR / "dist", dataset_slug=args.dataset_slug,
        targets=targets_of(args), gpu=False, wheel_cache=args.wheel_cache.resolve(),
        offline=args.offline, repo=args.repo.resolve(), export_cache=(args.export_cache or default_export_cache()).resolve(),
    ))
    verification = verify_bundle(DEMO_DIR / "dist", DEMO_DIR / "verify", data_dir=data,
                                 kaggle_base=args.kaggle_base.resolve(), dataset_slug=args.dataset_slug,
                                 engine=args.verify_engine)
    baseline = score_locally(data / "test_solution.csv", class_prior_submission(data, DEMO_DIR / "class_prior.csv"))
    print()
    print(f"hms-offline demo on synthetic data ({display_path(data)}: {DEMO_SYNTHETIC['n_train']} train rows, "
          f"{DEMO_SYNTHETIC['n_test']} test rows), trained with python -m hms_offline train:")
    for run_dir in runs:
        print(f"  {describe_run(run_dir)}")
    print(f"Bundle: {display_path(built.dataset_dir)} ({human_size(built.total_size)}, "
          f"{len(read_weights_manifest(manifest)['models'])} models) and {display_path(built.kernel_dir)}")
    print_verification(verification)
    print(f"On the {verification.rows} synthetic test rows: ensemble KL {verification.kl:.4f}, "
          f"class-prior baseline KL {baseline:.4f} (mean train vote fractions for every row)")
    print(f"Submission: {display_path(verification.submission)}. Demo done in {(time.monotonic() - started) / 60:.1f} min.")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(message)s", stream=sys.stderr)
    if args.fetch_wheels:
        command = fetch_wheels_command
    elif args.verify:
        command = verify_command
    elif args.demo:
        command = demo_command
    else:
        command = build_command
    try:
        return command(args)
    except BundleError as error:
        LOG.error("%s", error)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
