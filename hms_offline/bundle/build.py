"""The build itself: the dataset and kernel folders, their Kaggle metadata, the dataset's
README.md and BUNDLE.json, assembled in a staging folder and moved into place."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hms_offline.digests import sha256_file

from .common import FORMAT_VERSION, KERNEL_SCRIPT, LOG, MANIFEST_NAME, REPO_ROOT, BundleError, human_size, write_json
from .package import SourceState, build_package_wheel, read_source_state
from .exports import default_export_cache, export_models, with_exports
from .weights import as_format_2, check_with_kernel_loader, copy_weights, merged_manifest
from .wheels import (KERNEL_WHEEL_PINS, LOCK_FORMAT_VERSION, WHEELS_DIR, Target, check_pins_against_image,
                     check_wheel_sets, ensure_wheel_sets, parse_pin, parse_wheel_filename, ship_wheels, wheel_lock)

# The competition on Kaggle: the kernel's source beside the dataset. kernel/inference.py keeps a copy
# (it finds the competition folder by it); tests/test_one_home.py ties the two.
COMPETITION_SLUG = "hms-harmful-brain-activity-classification"
DEFAULT_DATASET_SLUG = "hms-offline-bundle"
# The kernel's one line that the build rewrites to name the dataset it ships with.
DATASET_ID_LINE = re.compile(r"^BUNDLE_DATASET = None  # build_bundle\.py replaces this line\b[^\r\n]*$", re.MULTILINE)

# Kaggle's limit on one dataset. Kaggle's own documentation could not be consulted from
# this workplace: 100 GB is an assumed figure (a private-dataset quota "over 100 GB" is
# all a secondary source says). Check kaggle.com/docs/datasets before relying on it.
KAGGLE_DATASET_LIMIT_BYTES = 100 * 10**9
KAGGLE_DATASET_LIMIT_SOURCE = "assumed 100 GB per dataset (not confirmed from Kaggle's docs)"


def dataset_title(slug: str) -> str:
    """6-50 characters, from the slug: hms-offline-bundle -> 'hms offline bundle'."""
    title = slug.replace("-", " ")
    return title if len(title) >= 6 else f"{title} bundle"


def kernel_slug(slug: str) -> str:
    return f"{slug}-inference"


def dataset_metadata(user: str, slug: str) -> dict:
    return {"title": dataset_title(slug), "id": f"{user}/{slug}", "licenses": [{"name": "CC0-1.0"}]}


def kernel_metadata(user: str, slug: str, gpu: bool) -> dict:
    # Kaggle derives a kernel's slug from its title: keep the two in step.
    return {
        "id": f"{user}/{kernel_slug(slug)}",
        "title": kernel_slug(slug).replace("-", " "),
        "code_file": "inference.py",
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": gpu,
        "enable_internet": False,
        "dataset_sources": [f"{user}/{slug}"],
        "competition_sources": [COMPETITION_SLUG],
    }


def built_kernel_script(kernel_script: Path, dataset_id: str) -> bytes:
    """The kernel script with the dataset id written into its marked line (and nothing else
    changed), so that on Kaggle it finds its own bundle first."""
    if not kernel_script.is_file():
        raise BundleError(f"the kernel script {kernel_script} is missing")
    text = kernel_script.read_bytes().decode("utf-8")
    marked = DATASET_ID_LINE.findall(text)
    if len(marked) != 1:
        raise BundleError(f"{kernel_script}: expected one line `BUNDLE_DATASET = None  # build_bundle.py replaces "
                          f"this line ...` to write the dataset id into, found {len(marked)}")
    built = f"BUNDLE_DATASET = {json.dumps(dataset_id)}  # written by build_bundle.py: the dataset it built"
    return DATASET_ID_LINE.sub(built, text).encode("utf-8")


def dataset_readme(user: str, slug: str, version: str, source: SourceState, targets: tuple[Target, ...],
                   manifest: dict) -> str:
    lines = [
        f"# {dataset_title(slug)}",
        "",
        "Offline inference bundle for the Kaggle competition *HMS - Harmful Brain Activity Classification*,",
        "built by `build_bundle.py` of hms-offline. Attach it, with the competition data, to the kernel",
        f"`{user}/{kernel_slug(slug)}` (internet off): its `inference.py` imports hms_offline from its wheel in",
        "`wheels/` (nothing installed) and writes `submission.csv`. Only a model that falls back to the keras",
        "engine makes it install, from `wheels/lock-cp3XY.json` of its Python, what the image lacks.",
        "",
        f"- hms_offline {version} (commit {source.commit}{', with uncommitted changes' if source.dirty else ''})",
        f"- the keras engine's wheels for CPython {', '.join(t.python_version for t in targets)} on "
        f"{targets[0].platform} (one lock each): " + ", ".join(KERNEL_WHEEL_PINS),
        f"- {len(manifest['models'])} model(s), listed in `weights_manifest.json`:",
        "",
        "| name | arch | fold | ensemble weight | CV KL |",
        "|---|---|---|---|---|",
    ]
    for model in manifest["models"]:
        lines.append(f"| {model['name']} | {model.get('arch', '')} | {model.get('fold', '')} | "
                     f"{model.get('ensemble_weight', '')} | {model.get('cv_kl', '')} |")
    lines += ["", "`BUNDLE.json` lists every file with its size and sha256.", ""]
    return "\n".join(lines)


def file_inventory(folder: Path, skip: tuple[str, ...] = ()) -> list[dict]:
    return [
        {"path": path.relative_to(folder).as_posix(), "size": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(p for p in folder.rglob("*") if p.is_file())
        if path.relative_to(folder).as_posix() not in skip
    ]


def bundle_record(dataset: Path, kernel: Path, source: SourceState, version: str, targets: tuple[Target, ...],
                  user: str, slug: str, built_at: str) -> dict:
    files = file_inventory(dataset, skip=("BUNDLE.json",))
    return {
        "format_version": FORMAT_VERSION,
        "built_at": built_at,  # the only field that differs between two builds of the same inputs
        "git": {"commit": source.commit, "commit_time": source.commit_time, "dirty": source.dirty},
        "dataset": f"{user}/{slug}",
        "kernel": f"{user}/{kernel_slug(slug)}",
        "versions": {
            "pythons": [target.python_version for target in targets],  # one wheels/lock-cp3XY.json each
            "platform": targets[0].platform,
            "lock_format": LOCK_FORMAT_VERSION,
            "hms_offline": version,
            "pins": dict(parse_pin(pin) for pin in KERNEL_WHEEL_PINS),
        },
        "total_size": sum(item["size"] for item in files),
        "files": files,
        "kernel_files": file_inventory(kernel),
    }


@dataclass
class BuildOptions:
    kaggle_user: str
    manifests: list[Path]  # several: their models ship as one ensemble
    out: Path
    dataset_slug: str
    targets: tuple[Target, ...]  # a lock (wheels/lock-cp3XY.json) for each
    gpu: bool
    wheel_cache: Path
    offline: bool
    repo: Path = REPO_ROOT
    # Proven exports by weights sha256 (python -m hms_offline export --cache).
    export_cache: Path = field(default_factory=default_export_cache)


@dataclass
class BuildResult:
    dataset_dir: Path
    kernel_dir: Path
    version: str
    total_size: int
    warnings: list[str] = field(default_factory=list)


def check_names(user: str, slug: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", user or ""):
        raise BundleError(f"--kaggle-user must be a Kaggle user name (letters, digits, - or _), not {user!r}")
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{1,48})[a-z0-9]", slug):
        raise BundleError(f"--dataset-slug must be 3-50 lower-case letters, digits and hyphens, not {slug!r}")
    if slug == "kernel":
        raise BundleError("--dataset-slug 'kernel' would clash with the kernel folder beside the dataset")
    if not 6 <= len(dataset_title(slug)) <= 50:
        raise BundleError(f"the dataset title {dataset_title(slug)!r} must be 6-50 characters")


def build_bundle(options: BuildOptions) -> BuildResult:
    """Everything but the upload: checks first (cheap, no network), then the slow parts,
    all in a staging folder that replaces the previous dist only when complete."""
    check_names(options.kaggle_user, options.dataset_slug)
    check_pins_against_image()
    kernel_script = built_kernel_script(options.repo / KERNEL_SCRIPT, f"{options.kaggle_user}/{options.dataset_slug}")
    manifest_paths = [path.resolve() for path in options.manifests]
    check_with_kernel_loader(manifest_paths, options.repo)
    manifest_dir = manifest_paths[0].parent
    manifest = merged_manifest(manifest_paths, manifest_dir)
    source = read_source_state(options.repo)
    if source.dirty:
        LOG.warning("the working tree has uncommitted changes to the packed files: the version says .dirty")
    wheel_sets = ensure_wheel_sets(options.wheel_cache, options.targets, offline=options.offline)
    check_wheel_sets(wheel_sets)  # static: each lock installs on its Python, every requirement met
    # Every model as a SavedModel and a TFLite file, proven against its Keras model (cached).
    manifest = with_exports(as_format_2(manifest), export_models(manifest_paths, options.repo, options.export_cache))

    options.out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=options.out))
    try:
        dataset = staging / options.dataset_slug
        kernel = staging / "kernel"
        (dataset / WHEELS_DIR).mkdir(parents=True)
        kernel.mkdir()
        version, bundled = assemble_dataset(options, manifest, manifest_dir, source, wheel_sets, dataset)
        # The manifest as bundled, with its exports, as the kernel's loader reads it.
        check_with_kernel_loader([dataset / MANIFEST_NAME], options.repo, require_exports=True)
        (kernel / "inference.py").write_bytes(kernel_script)
        write_json(kernel / "kernel-metadata.json", kernel_metadata(options.kaggle_user, options.dataset_slug, options.gpu))
        built_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record = bundle_record(dataset, kernel, source, version, options.targets, options.kaggle_user,
                               options.dataset_slug, built_at)
        write_json(dataset / "BUNDLE.json", record)
        final_dataset = move_into_place(dataset, options.out / options.dataset_slug, staging)
        final_kernel = move_into_place(kernel, options.out / "kernel", staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    total = record["total_size"]
    result = BuildResult(final_dataset, final_kernel, version, total)
    LOG.info("dataset %s: %d files, %s (%d wheels, %d model files)", final_dataset, len(record["files"]),
             human_size(total), len(bundled), len(manifest["models"]))
    if total > KAGGLE_DATASET_LIMIT_BYTES:
        message = (f"the dataset is {human_size(total)}, past Kaggle's limit of "
                   f"{human_size(KAGGLE_DATASET_LIMIT_BYTES)} ({KAGGLE_DATASET_LIMIT_SOURCE}): the upload will fail")
        LOG.warning(message)
        result.warnings.append(message)
    return result


def assemble_dataset(options: BuildOptions, manifest: dict, manifest_dir: Path, source: SourceState,
                     wheel_sets: dict[Target, dict[str, Path]], dataset: Path) -> tuple[str, list[Path]]:
    wheel_dir = dataset / WHEELS_DIR
    shipped = ship_wheels(wheel_sets, wheel_dir)  # pure wheels once, binary ones per Python
    for target, files in shipped.items():
        write_json(wheel_dir / target.lock_name, wheel_lock(files, target))
    # Not in any lock: the kernel puts it on sys.path (zipimport), it never pip-installs it.
    package_wheel = build_package_wheel(options.repo, source, wheel_dir)
    bundled = sorted(wheel_dir.glob("*.whl"))
    version = parse_wheel_filename(package_wheel.name).version
    bundled_manifest = copy_weights(manifest, manifest_dir, dataset)
    write_json(dataset / MANIFEST_NAME, bundled_manifest)
    write_json(dataset / "dataset-metadata.json", dataset_metadata(options.kaggle_user, options.dataset_slug))
    (dataset / "README.md").write_text(
        dataset_readme(options.kaggle_user, options.dataset_slug, version, source, options.targets, bundled_manifest),
        encoding="utf-8")
    return version, bundled


def move_into_place(built: Path, final: Path, staging: Path) -> Path:
    """Swap the complete folder in; the previous one goes to the staging folder (deleted)."""
    if final.exists():
        os.replace(final, staging / f"previous-{final.name}")
    os.replace(built, final)
    return final
