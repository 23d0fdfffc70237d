"""What every part of the bundle build shares: the repo's place, the log, the error that
stops a build, running a tool, JSON files, sizes and paths for display.

bundle/ imports only the standard library and hms_offline.digests (tests/test_layout.py), so
the few facts of the numpy side it needs are copies here and beside their use, each naming
its home; tests/test_one_home.py ties every copy to its home."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding build_bundle.py
LOG = logging.getLogger("build_bundle")

FORMAT_VERSION = 2  # of BUNDLE.json (2: versions.pythons, one lock per Python)
PACKAGE = "hms_offline"
KERNEL_SCRIPT = Path("kernel") / "inference.py"
MANIFEST_NAME = "weights_manifest.json"  # a copy of hms_offline.models.manifest.MANIFEST_NAME

# Zip archives cannot hold timestamps before 1980; also the fixed epoch of the wheels
# built from sdists, whose bytes then do not depend on when they were built.
ZIP_EPOCH = 315532800


class BundleError(Exception):
    """A build that cannot go on; the message says why and what to do."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def run(command: list[str], *, quiet: bool, env: dict | None = None, cwd: Path | None = None,
        what: str) -> subprocess.CompletedProcess:
    """Run a tool; on failure a BundleError (exit code 1) carrying its output."""
    LOG.debug("running: %s", shlex.join(command))
    result = subprocess.run(
        command, env=env, cwd=cwd, text=True,
        stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None,
    )
    if result.returncode != 0:
        output = f"\n{result.stdout[-4000:]}" if quiet and result.stdout else ""
        raise BundleError(f"{what} failed (exit code {result.returncode}): {shlex.join(command)}{output}", exit_code=1)
    return result


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def display_path(path: Path) -> str:
    """Relative to the current folder when inside it, else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
