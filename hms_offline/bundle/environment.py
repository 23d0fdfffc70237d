"""Where --verify runs the kernel: a fresh, throwaway venv layered on the Kaggle-base venv,
the checks of what it imports from where, and the network block."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .common import LOG, REPO_ROOT, BundleError, run
from .wheels import Target, parse_target

# The environment Kaggle's base image is sure to provide, made once by `make kaggle-base`:
# Python with tensorflow (and the keras it requires), numpy, pandas, pyarrow and
# scikit-learn; no keras-cv, no hms_offline. Every verification puts a fresh, throwaway
# venv on top of it, so the base itself is never changed.
DEFAULT_KAGGLE_BASE = REPO_ROOT / ".venv-kaggle-base"
KAGGLE_BASE_SETUP = "make kaggle-base"
# What only the bundle's wheels provide: absent from the fresh environment before the
# kernel runs (else the verification would prove nothing), installed into it after.
MODULES_FROM_THE_BUNDLE = ("keras_cv", "hms_offline")
KERNEL_TIMEOUT_SECONDS = 60 * 60

SOCKET_GUARD = '''\
"""Written by build_bundle.py --verify: any attempt to open a network connection raises."""
import socket


def _refuse(*args, **kwargs):
    raise OSError("network access blocked by build_bundle.py --verify")


socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
'''


def local_target(python_version: str) -> Target:
    """The wheels this machine's own CPython runs: what the local verification installs."""
    if not sys.platform.startswith("linux"):
        raise BundleError(f"--verify runs the kernel as Kaggle does, on Linux; this machine is {sys.platform}")
    return parse_target(python_version, f"manylinux2014_{os.uname().machine}")


def ask_python(python: Path, expression: str):
    """The JSON value of `expression` in another interpreter, in isolated mode (no PYTHON*
    variables, no user site, no current folder on sys.path)."""
    code = f"import importlib.util, json, sys, sysconfig; print(json.dumps({expression}))"
    return json.loads(run([str(python), "-I", "-c", code], quiet=True, what=f"running {python}").stdout)


def python_version_of(python: Path) -> str:
    return ask_python(python, "'%d.%d' % sys.version_info[:2]")


def site_packages_of(python: Path) -> list[str]:
    return ask_python(python, "sorted({sysconfig.get_path('purelib'), sysconfig.get_path('platlib')})")


def module_origins(python: Path, modules: tuple[str, ...] = MODULES_FROM_THE_BUNDLE) -> dict[str, str | None]:
    """Where each top-level module would be imported from (None: not importable); nothing is imported."""
    return ask_python(python, f"{{name: getattr(importlib.util.find_spec(name), 'origin', None) for name in {list(modules)!r}}}")


def kaggle_base_python(kaggle_base: Path) -> Path:
    python = kaggle_base / "bin" / "python"
    if not python.is_file():
        raise BundleError(f"no Kaggle-base environment at {kaggle_base}: create it once (needs PyPI) with "
                          f"`{KAGGLE_BASE_SETUP}` (a venv with only tensorflow-cpu, numpy, pandas, pyarrow, scikit-learn)")
    return python


def make_fresh_env(base_python: Path, folder: Path) -> Path:
    """A new venv whose site-packages also holds the base's (a .pth file) and that installs
    into its own: pip sees the base's packages as installed, a wheel of another version
    shadows the base's copy without uninstalling it, and the base stays as it was. Its pip
    is the base's (--without-pip), as on Kaggle. Returns its python."""
    run([str(base_python), "-m", "venv", "--without-pip", str(folder)], quiet=True,
        what="creating the fresh environment")
    python = folder / "bin" / "python"
    lines = [f"import site; site.addsitedir({path!r})\n" for path in site_packages_of(base_python)]
    (Path(site_packages_of(python)[0]) / "kaggle_base.pth").write_text("".join(lines), encoding="utf-8")
    return python


def require_absent_before_install(python: Path) -> None:
    present = {name: origin for name, origin in module_origins(python).items() if origin}
    if present:
        raise BundleError(f"the fresh environment already imports {present} before the kernel installs anything: "
                          f"the Kaggle-base environment must hold neither keras-cv nor hms_offline "
                          f"(recreate it: rm -rf .venv-kaggle-base && {KAGGLE_BASE_SETUP})")


def require_installed_from_bundle(python: Path, env: Path) -> None:
    elsewhere = {name: origin for name, origin in module_origins(python).items()
                 if not origin or not Path(origin).resolve().is_relative_to(env.resolve())}
    if elsewhere:
        raise BundleError(f"after the kernel ran, these are not installed in the fresh environment {env}: {elsewhere}",
                          exit_code=1)


def unshare_works() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rn", "true"], capture_output=True).returncode == 0


def offline_environment(guard_dir: Path) -> dict[str, str]:
    """The caller's variables without those that reach outside the bundle (PYTHON*, PIP_*, an
    active virtualenv), plus the socket guard; pip reads no configuration file."""
    kept = {name: value for name, value in os.environ.items()
            if not name.startswith(("PYTHON", "PIP_")) and name != "VIRTUAL_ENV"}
    return {**kept, "PYTHONPATH": str(guard_dir), "PYTHONNOUSERSITE": "1", "PIP_CONFIG_FILE": os.devnull,
            "TF_CPP_MIN_LOG_LEVEL": "2"}


@dataclass(frozen=True)
class NetworkBlock:
    """How verification runs are cut off from the network: a network namespace without
    interfaces (`unshare -rn`) where the machine allows it, and always a socket guard
    (a sitecustomize.py on PYTHONPATH) that makes every Python connection attempt raise."""

    guard_dir: Path
    namespace: bool

    @classmethod
    def install(cls, guard_dir: Path) -> "NetworkBlock":
        guard_dir.mkdir(parents=True, exist_ok=True)
        (guard_dir / "sitecustomize.py").write_text(SOCKET_GUARD, encoding="utf-8")
        return cls(guard_dir, unshare_works())

    def describe(self) -> str:
        if self.namespace:
            return "network namespace without interfaces (unshare -rn) + socket guard"
        return "socket guard only (unshare -rn is not permitted on this machine)"

    def run(self, command: list[str], cwd: Path, timeout: float = KERNEL_TIMEOUT_SECONDS) -> subprocess.CompletedProcess:
        prefix = ["unshare", "-rn"] if self.namespace else []
        LOG.debug("running offline: %s", shlex.join(prefix + command))
        try:
            return subprocess.run(prefix + command, cwd=cwd, env=offline_environment(self.guard_dir), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise BundleError(f"{shlex.join(command)} did not finish within {timeout:.0f} s", exit_code=1) from error
