"""Where --verify runs the kernel: a fresh, throwaway venv layered on the Kaggle-shaped base
venv, the checks of what it imports from where and of what is installed (`pip list`), and the
guards of its runs: the network block, and keras-cv made unimportable."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .common import LOG, REPO_ROOT, BundleError, run

# Kaggle's image, shaped here once by `make kaggle-base`: the image's Python (3.12) with its
# pins (hms_offline/bundle/kaggle_image.txt: tensorflow 2.20.0, keras 3.13.2, keras-cv 0.9.0,
# tensorflow-datasets 4.9.9, dm-tree 0.1.10, numpy 2.0.2, ...), and no hms_offline. Every
# verification puts a fresh, throwaway venv on top of it, so the base itself is never changed.
DEFAULT_KAGGLE_BASE = REPO_ROOT / ".venv-kaggle-base"
KAGGLE_BASE_SETUP = "make kaggle-base"
# What only the bundle provides: absent from the fresh environment before the kernel runs
# (else the verification would prove nothing), and never installed by it (the kernel
# imports it from its wheel in the bundle, on sys.path).
MODULES_FROM_THE_BUNDLE = ("hms_offline",)
KERNEL_TIMEOUT_SECONDS = 60 * 60

# A sitecustomize.py on PYTHONPATH: every attempt to open a network connection raises, naming
# who blocked it. The one text of the guard: tests/offline_guard/sitecustomize.py (the tests' and
# `make kaggle-base`'s) is socket_guard(*TESTS_GUARD), tied by tests/test_one_home.py.
SOCKET_GUARD = '''\
"""{origin}: any attempt to open a network connection raises."""
import socket


def _refuse(*args, **kwargs):
    raise OSError("network access blocked by {blocker}")


socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
'''

# A meta-path finder, put first by the guard's sitecustomize.py: importing a blocked
# top-level module (or anything under it) raises ImportError, as if it were not installed.
IMPORT_GUARD = '''

import sys


class _Unimportable:
    """Written by build_bundle.py --verify: these modules cannot be imported in this run."""

    blocked = {blocked!r}

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {{name!r}} (made unimportable by build_bundle.py --verify)",
                                      name=name)
        return None


sys.meta_path.insert(0, _Unimportable())
'''
VERIFY_GUARD = ("Written by build_bundle.py --verify", "build_bundle.py --verify")
TESTS_GUARD = ("Put on PYTHONPATH by the tests and `make kaggle-base`", "the hms-offline tests")


def socket_guard(origin: str, blocker: str) -> str:
    """The socket guard's text: its docstring says where it came from, its error who blocked the network."""
    return SOCKET_GUARD.format(origin=origin, blocker=blocker)


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
        raise BundleError(f"no Kaggle-shaped base environment at {kaggle_base}: create it once (needs PyPI and a "
                          f"CPython 3.12) with `{KAGGLE_BASE_SETUP}` (the image's Python and pins, from "
                          f"hms_offline/bundle/kaggle_image.txt)")
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
        raise BundleError(f"the fresh environment already imports {present} before the kernel runs: the Kaggle-shaped "
                          f"base must not hold hms_offline (recreate it: rm -rf .venv-kaggle-base && "
                          f"{KAGGLE_BASE_SETUP})")


def require_not_installed(python: Path, env: Path) -> None:
    """After the kernel ran: hms_offline was imported from the bundle's wheel, not installed."""
    installed = {name: origin for name, origin in module_origins(python).items() if origin}
    if installed:
        raise BundleError(f"after the kernel ran, the fresh environment {env} holds {installed}: the kernel must import "
                          f"hms_offline from the bundle's wheel, never install it", exit_code=1)


def pip_list(python: Path) -> list[dict]:
    """`pip list --format=json` of an environment (a fresh one sees the base's packages too),
    sorted; pip reads no configuration file and asks no index."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("PYTHON", "PIP_"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    listed = run([str(python), "-I", "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                 quiet=True, env=env, what=f"pip list in {python}").stdout
    start = listed.find("[")  # past any warning pip prints first
    return sorted(json.loads(listed[start:]), key=lambda package: package["name"].lower())


def pip_list_changes(before: list[dict], after: list[dict]) -> list[str]:
    """What was installed, removed or replaced between two `pip list`s, one line each."""
    old = {package["name"].lower(): package["version"] for package in before}
    new = {package["name"].lower(): package["version"] for package in after}
    return ([f"installed {name} {new[name]}" for name in sorted(new.keys() - old.keys())]
            + [f"removed {name} {old[name]}" for name in sorted(old.keys() - new.keys())]
            + [f"replaced {name} {old[name]} by {new[name]}" for name in sorted(old.keys() & new.keys())
               if old[name] != new[name]])


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
    unimportable: tuple[str, ...] = ()  # top-level modules the runs cannot import

    @classmethod
    def install(cls, guard_dir: Path, unimportable: tuple[str, ...] = ()) -> "NetworkBlock":
        """The guard folder, written; `unimportable` modules (e.g. keras_cv) raise ImportError there."""
        guard_dir.mkdir(parents=True, exist_ok=True)
        guard = socket_guard(*VERIFY_GUARD) + (IMPORT_GUARD.format(blocked=set(unimportable)) if unimportable else "")
        (guard_dir / "sitecustomize.py").write_text(guard, encoding="utf-8")
        return cls(guard_dir, unshare_works(), tuple(unimportable))

    def describe(self) -> str:
        if self.namespace:
            described = "network namespace without interfaces (unshare -rn) + socket guard"
        else:
            described = "socket guard only (unshare -rn is not permitted on this machine)"
        return described + (f"; {', '.join(self.unimportable)} unimportable" if self.unimportable else "")

    def run(self, command: list[str], cwd: Path, timeout: float = KERNEL_TIMEOUT_SECONDS) -> subprocess.CompletedProcess:
        prefix = ["unshare", "-rn"] if self.namespace else []
        LOG.debug("running offline: %s", shlex.join(prefix + command))
        try:
            return subprocess.run(prefix + command, cwd=cwd, env=offline_environment(self.guard_dir), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise BundleError(f"{shlex.join(command)} did not finish within {timeout:.0f} s", exit_code=1) from error
