"""The hms_offline wheel: the packed sources and their git state, the commit-stamped
version, and the reproducible wheel build from a temporary copy."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .common import KERNEL_SCRIPT, LOG, PACKAGE, ZIP_EPOCH, BundleError, run
from .wheels import parse_wheel_filename


@dataclass(frozen=True)
class SourceState:
    commit: str
    commit_time: int
    dirty: bool  # the packed files differ from the commit


def git(repo: Path, *args: str) -> str:
    try:
        # --no-optional-locks: `git status` must not rewrite the index (read-only, and no
        # index.lock in the way of someone committing at the same time).
        result = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), *args], capture_output=True, text=True)
    except FileNotFoundError as error:
        raise BundleError("git is not installed: the bundle is stamped with the git commit") from error
    if result.returncode != 0:
        raise BundleError(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip()}")
    return result.stdout


def packed_source_paths() -> list[str]:
    """What the hms_offline wheel is built from (git pathspecs), plus the kernel script."""
    return ["pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "README*", "LICENSE*", PACKAGE,
            KERNEL_SCRIPT.as_posix()]


def read_source_state(repo: Path) -> SourceState:
    commit = git(repo, "rev-parse", "HEAD").strip()
    commit_time = int(git(repo, "log", "-1", "--format=%ct", "HEAD").strip())
    dirty = bool(git(repo, "status", "--porcelain", "--", *packed_source_paths()).strip())
    return SourceState(commit, commit_time, dirty)


def files_to_pack(repo: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files of the wheel's sources, as in the
    working tree (no __pycache__, no egg-info, nothing .gitignore excludes)."""
    listed = git(repo, "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--",
                 *packed_source_paths()[:-1]).split("\0")
    return sorted({name for name in listed if name and (repo / name).is_file()})


def local_version(base: str, source: SourceState) -> str:
    """0.1.0 -> 0.1.0+g<sha7>, and .dirty when the packed files differ from the commit."""
    return f"{base.split('+')[0]}+g{source.commit[:7]}" + (".dirty" if source.dirty else "")


VERSION_ASSIGNMENT = re.compile(r"""^(__version__\s*=\s*)(["'])([^"']*)\2""", re.MULTILINE)


def version_module(tree: Path, attr: str) -> Path:
    module = attr.rpartition(".")[0].replace(".", "/")
    for candidate in (tree / f"{module}.py", tree / module / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise BundleError(f"pyproject.toml takes the version from {attr}, but no such module is in the package")


def pyproject_table(text: str, table: str) -> str:
    """The body of one [table] of a TOML file (a regex reader: tomllib needs Python 3.11)."""
    match = re.search(rf"^\[{re.escape(table)}\][ \t]*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    return match.group(1) if match else ""


STATIC_VERSION = re.compile(r"""^(version\s*=\s*)(["'])([^"']*)\2""", re.MULTILINE)
VERSION_ATTR = re.compile(r"""^version\s*=\s*\{[^}]*\battr\s*=\s*["']([^"']+)["']""", re.MULTILINE)


def stamp_version(tree: Path, source: SourceState) -> str:
    """Write the commit-stamped version into the temporary source copy; returns it. The
    version is either static ([project] version = "...") or setuptools' dynamic attr
    (e.g. hms_offline.__version__); hms_offline/__init__.py's __version__ is stamped too."""
    pyproject_path = tree / "pyproject.toml"
    if not pyproject_path.is_file():
        raise BundleError("no pyproject.toml in the repo: the hms_offline wheel is built from it")
    text = pyproject_path.read_text(encoding="utf-8")
    project = pyproject_table(text, "project")
    static = STATIC_VERSION.search(project)
    init_path = tree / PACKAGE / "__init__.py"
    if static:
        version = local_version(static.group(3), source)
        stamped = STATIC_VERSION.sub(lambda m: f'{m.group(1)}"{version}"', project, count=1)
        pyproject_path.write_text(text.replace(project, stamped, 1), encoding="utf-8")
    else:
        attr = VERSION_ATTR.search(pyproject_table(text, "tool.setuptools.dynamic"))
        if not attr:
            raise BundleError("pyproject.toml has neither [project] version nor a setuptools dynamic version attr")
        init_path = version_module(tree, attr.group(1))
        match = VERSION_ASSIGNMENT.search(init_path.read_text(encoding="utf-8"))
        if not match:
            raise BundleError(f"no __version__ = '...' line in {init_path.relative_to(tree)}")
        version = local_version(match.group(3), source)
    if init_path.is_file() and VERSION_ASSIGNMENT.search(init_path.read_text(encoding="utf-8")):
        init_text = init_path.read_text(encoding="utf-8")
        init_path.write_text(VERSION_ASSIGNMENT.sub(lambda m: f'{m.group(1)}"{version}"', init_text, count=1),
                             encoding="utf-8")
    return version


def copy_source_tree(repo: Path, tree: Path) -> None:
    """A fixed-mode copy of the packed files: the build never writes into the repo."""
    for name in files_to_pack(repo):
        destination = tree / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo / name, destination)
        destination.chmod(0o644)


def build_package_wheel(repo: Path, source: SourceState, folder: Path) -> Path:
    """hms_offline as a wheel, version stamped with the commit; reproducible: a temporary
    source copy, SOURCE_DATE_EPOCH = commit time, no build isolation (no network)."""
    with tempfile.TemporaryDirectory(prefix="hms-offline-src-") as scratch:
        tree = Path(scratch) / "src"
        copy_source_tree(repo, tree)
        version = stamp_version(tree, source)
        LOG.info("building the %s wheel, version %s", PACKAGE, version)
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(max(source.commit_time, ZIP_EPOCH)),
                   PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
        out = Path(scratch) / "wheel"
        try:
            run([sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation",
                 "--no-index", "--disable-pip-version-check", "-q", "-w", str(out)],
                quiet=True, env=env, what=f"building the {PACKAGE} wheel")
        except BundleError as error:
            raise BundleError(f"{error}\n(--no-build-isolation needs setuptools and wheel installed in "
                              f"{sys.executable}: run `make setup`)", exit_code=1) from error
        built = sorted(out.glob("*.whl"))
        if len(built) != 1 or parse_wheel_filename(built[0].name).version != version:
            raise BundleError(f"expected one {PACKAGE} wheel of version {version}, pip made {[p.name for p in built]}",
                              exit_code=1)
        destination = folder / built[0].name
        shutil.copyfile(built[0], destination)
        return destination
