"""Every model exported and proven before it ships: `python -m hms_offline export`, run by this
Python (the training venv's: the export needs TensorFlow and keras-cv, this package only the
standard library), on the manifests being bundled; its report's files are what the bundle
copies into `exports/` (hms_offline/bundle/weights.py)."""

from __future__ import annotations

import collections
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import LOG, PACKAGE, REPO_ROOT, BundleError

# Copies of hms_offline.models.manifest.EXPORT_KINDS and hms_offline.models.export.CACHE_ENV.
EXPORT_KINDS = ("saved_model", "tflite")
CACHE_ENV = "HMS_EXPORT_CACHE"


def default_export_cache() -> Path:
    """$HMS_EXPORT_CACHE, else .cache/exports/ in the repo (what `python -m hms_offline export` defaults to)."""
    return Path(os.environ.get(CACHE_ENV) or REPO_ROOT / ".cache" / "exports")


def export_command(paths: list[Path], out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", PACKAGE, "export", "--out", str(out), "--cache", str(cache), *map(str, paths)]


def export_models(paths: list[Path], repo: Path, cache: Path) -> dict[str, dict]:
    """Each model of the manifests `paths` -> its proven exports (the report's `models`: per
    name, `saved_model` and `tflite`, each with `path` (in the cache) and `sha256`, plus the
    measured differences and seconds). A model that cannot be exported, or whose export differs
    from its Keras model past the tolerance, stops the build naming it."""
    cache = Path(cache).resolve()
    with tempfile.TemporaryDirectory(prefix="hms-export-") as work:
        out = Path(work) / "exports.json"
        command = export_command(paths, out, cache)
        # Run from the repo so that `-m` imports the hms_offline it packs; leave no .pyc in it.
        env = {key: value for key, value in os.environ.items() if key != "PYTHONSAFEPATH"}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        LOG.info("exporting every model to a TF SavedModel and a TFLite file, each proven on a probe batch "
                 "(cached by the weights' sha256 in %s)", cache)
        code, tail = _run_streaming(command, repo, env)
        report = _read_report(out)
        if report is not None and report.get("failed"):
            failures = [reason if f"{name!r}" in reason else f"model {name!r}: {reason}"
                        for name, reason in report["failed"].items()]
            raise BundleError("the export of the models failed; nothing unproven is shipped:\n  " + "\n  ".join(failures),
                              exit_code=1)
        if code != 0 or report is None or not isinstance(report.get("models"), dict):
            raise BundleError(f"exporting the models failed (exit code {code}): {shlex.join(command)}\n"
                              + "\n".join(tail) + "\nRun build_bundle.py with the Python of the venv hms_offline "
                              "trains in (it needs TensorFlow and keras-cv).", exit_code=1)
    for name, exported in report["models"].items():
        LOG.info("exports of %s: %s, max |difference| to Keras: SavedModel %.3g, TFLite %.3g", name,
                 "from the cache" if exported.get("cached") else f"made in {exported.get('seconds', 0):.0f} s",
                 exported["saved_model"]["max_difference"], exported["tflite"]["max_difference"])
    return report["models"]


def _run_streaming(command: list[str], repo: Path, env: dict) -> tuple[int, list[str]]:
    """Run, passing the export's own log lines on as they come; the exit code and the last lines."""
    LOG.debug("running: %s", shlex.join(command))
    tail = collections.deque(maxlen=60)
    with subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace") as process:
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if " hms_offline" in line or line.startswith("export failed"):
                LOG.info("  %s", line)
            else:
                LOG.debug("  %s", line)
    return process.returncode, list(tail)


def _read_report(path: Path) -> dict | None:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def with_exports(manifest: dict, exported: dict[str, dict]) -> dict:
    """The manifest with each model's `exports` naming the exported files (paths absolute, in
    the cache; `copy_weights` copies them into the dataset and makes them relative to it)."""
    missing = [model["name"] for model in manifest["models"] if model["name"] not in exported]
    if missing:
        raise BundleError(f"the export report lists no exports for {missing}")
    return {**manifest, "models": [
        {**model, "exports": {kind: {"path": str(Path(exported[model["name"]][kind]["path"]).resolve()),
                                     "sha256": exported[model["name"]][kind]["sha256"]} for kind in EXPORT_KINDS}}
        for model in manifest["models"]]}
