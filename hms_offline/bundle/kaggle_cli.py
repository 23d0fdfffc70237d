"""The upload with the kaggle CLI: the commands printed after a build, and --push
(credentials, create or version the dataset, wait until Kaggle has processed it, push the kernel)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from .build import BuildResult
from .common import LOG, BundleError, display_path, run

DATASET_READY_TIMEOUT_SECONDS = 30 * 60
DATASET_READY_POLL_SECONDS = 20


def upload_commands(result: BuildResult, message: str) -> dict[str, list[str]]:
    dataset, kernel = display_path(result.dataset_dir), display_path(result.kernel_dir)
    return {
        "create": ["kaggle", "datasets", "create", "-p", dataset, "--dir-mode", "zip"],
        "version": ["kaggle", "datasets", "version", "-p", dataset, "-m", message, "--dir-mode", "zip"],
        "push": ["kaggle", "kernels", "push", "-p", kernel],
    }


def print_upload_commands(commands: dict[str, list[str]]) -> None:
    print("Upload with the kaggle CLI (--dir-mode zip: without it the CLI skips the subfolders):")
    print(f"  first upload of the dataset:  {shlex.join(commands['create'])}")
    print(f"  or, when it exists:           {shlex.join(commands['version'])}")
    print(f"  then the kernel:              {shlex.join(commands['push'])}")


def kaggle_credentials_present() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").is_file()


def push_bundle(user: str, slug: str, commands: dict[str, list[str]]) -> None:
    """Create or version the dataset, wait until Kaggle has processed it, push the kernel."""
    if shutil.which("kaggle") is None:
        raise BundleError("--push needs the kaggle CLI on PATH (pip install kaggle); "
                          "or upload with the commands printed above")
    if not kaggle_credentials_present():
        raise BundleError("--push needs Kaggle credentials: ~/.kaggle/kaggle.json (or $KAGGLE_CONFIG_DIR/"
                          "kaggle.json) or the KAGGLE_USERNAME and KAGGLE_KEY variables")
    dataset_id = f"{user}/{slug}"
    exists = subprocess.run(["kaggle", "datasets", "status", dataset_id], capture_output=True, text=True).returncode == 0
    LOG.info("dataset %s %s: uploading with `kaggle datasets %s`", dataset_id,
             "exists" if exists else "is new", "version" if exists else "create")
    run(commands["version" if exists else "create"], quiet=False, what="the dataset upload")
    wait_until_dataset_ready(dataset_id)
    run(commands["push"], quiet=False, what="kaggle kernels push")


def wait_until_dataset_ready(dataset_id: str) -> None:
    deadline = time.monotonic() + DATASET_READY_TIMEOUT_SECONDS
    while True:
        status = subprocess.run(["kaggle", "datasets", "status", dataset_id], capture_output=True, text=True)
        text = (status.stdout + status.stderr).strip().lower()
        if status.returncode == 0 and "ready" in text:
            LOG.info("dataset %s is ready", dataset_id)
            return
        if "error" in text or "fail" in text:
            raise BundleError(f"Kaggle could not process dataset {dataset_id}: {text}", exit_code=1)
        if time.monotonic() > deadline:
            raise BundleError(f"dataset {dataset_id} not ready after {DATASET_READY_TIMEOUT_SECONDS} s "
                              f"(last status: {text!r}); push the kernel later by hand", exit_code=1)
        LOG.info("waiting for Kaggle to process dataset %s (status: %s)", dataset_id, text or "?")
        time.sleep(DATASET_READY_POLL_SECONDS)
