"""Kaggle's notebook image as the bundle sees it: its pins (kaggle_image.txt beside this
file, the one place they live), and the CPython it runs, found on this machine to build the
Kaggle-shaped base venv from (`make kaggle-base`).

Standard library only, and nothing else of hms_offline: the Makefile runs it with whatever
`python3` there is, before any venv exists:

    python3 -m hms_offline.bundle.kaggle_image python [--python PATH]   # the interpreter, or exit 1 saying why
    python3 -m hms_offline.bundle.kaggle_image pins install|no-deps     # name==version, one a line
    python3 -m hms_offline.bundle.kaggle_image constraints              # every pinned line (pip -c)
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

KAGGLE_IMAGE_PINS = Path(__file__).resolve().with_name("kaggle_image.txt")
KINDS = ("install", "no-deps", "resolved")
# Where else than PATH a CPython of a given minor version is looked for ({v}: "3.12").
PYTHON_SEARCH = (
    "{pyenv}/versions/{v}*/bin/python{v}",
    "/usr/bin/python{v}",
    "/usr/local/bin/python{v}",
    "/opt/python/{v}*/bin/python{v}",
    "/opt/conda/envs/*/bin/python{v}",
    "{home}/.local/share/uv/python/cpython-{v}.*/bin/python{v}",
)
PYTHON_OVERRIDE = "KAGGLE_PYTHON"  # the Makefile's variable of the same name, or the environment's


class PinsError(ValueError):
    """kaggle_image.txt cannot be read as documented in its header."""


def canonical(name: str) -> str:
    """PEP 503: lower case, runs of -_. as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class ImagePin:
    kind: str  # install, no-deps, resolved
    name: str  # canonical
    version: str | None  # None: present, at a version we do not know

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}" if self.version else self.name


@dataclass(frozen=True)
class ImagePins:
    python_version: str  # "3.12"
    pins: tuple[ImagePin, ...]
    source: Path

    def of_kind(self, kind: str) -> list[ImagePin]:
        return [pin for pin in self.pins if pin.kind == kind]

    def by_name(self) -> dict[str, ImagePin]:
        return {pin.name: pin for pin in self.pins}

    @property
    def python_tag(self) -> str:
        return "cp" + self.python_version.replace(".", "")


def read_image_pins(path: Path = KAGGLE_IMAGE_PINS) -> ImagePins:
    python_version, pins, seen = None, [], {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise PinsError(f"cannot read the Kaggle image's pins {path}: {error}") from None
    for number, raw in enumerate(lines, 1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{path}, line {number}"
        if len(fields) != 2:
            raise PinsError(f"{where}: expected '<kind> <name>[==<version>]', got {raw.strip()!r}")
        kind, value = fields
        if kind == "python":
            if python_version or not re.fullmatch(r"3\.\d{1,2}", value):
                raise PinsError(f"{where}: one 'python 3.X' line, not {raw.strip()!r}")
            python_version = value
            continue
        if kind not in KINDS:
            raise PinsError(f"{where}: unknown kind {kind!r} (known: python, {', '.join(KINDS)})")
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:==([A-Za-z0-9.+!_-]+))?", value)
        if not match:
            raise PinsError(f"{where}: not a name or name==version: {value!r}")
        name = canonical(match.group(1))
        if name in seen:
            raise PinsError(f"{where}: {name} is listed twice (first on line {seen[name]})")
        seen[name] = number
        pins.append(ImagePin(kind, name, match.group(2)))
    if not python_version:
        raise PinsError(f"{path}: no 'python 3.X' line")
    return ImagePins(python_version, tuple(pins), path)


# ----------------------------------------------------------------------------- the interpreter

def python_reports(python: str, version: str) -> bool:
    """`python` runs, is CPython `version` and can make a venv with pip (Debian's python3.X
    without python3.X-venv cannot)."""
    code = ("import sys, platform, venv, ensurepip; "
            "print('%d.%d' % sys.version_info[:2], platform.python_implementation())")
    try:
        result = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and result.stdout.split() == [version, "CPython"]


def version_key(path: str) -> tuple:
    return tuple(int(part) for part in re.findall(r"\d+", path))


def python_candidates(version: str) -> list[str]:
    """PATH first, then pyenv's versions (newest patch first) and the usual install places."""
    candidates = [found for found in (shutil.which(f"python{version}"),) if found]
    pyenv_roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")]
    if shutil.which("pyenv"):
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True)
        pyenv_roots.insert(0, root.stdout.strip() if root.returncode == 0 else None)
    for pattern in PYTHON_SEARCH:
        roots = dict.fromkeys(filter(None, pyenv_roots)) if "{pyenv}" in pattern else [None]
        for root in roots:
            expanded = pattern.format(pyenv=root, v=version, home=Path.home())
            candidates += sorted(glob.glob(expanded), key=version_key, reverse=True)
    return list(dict.fromkeys(candidates))


def find_python(version: str, explicit: str | None = None) -> tuple[str | None, list[str]]:
    """The first working CPython `version`, and every candidate looked at. `explicit` (or
    $KAGGLE_PYTHON) is the only one tried when given."""
    explicit = explicit or os.environ.get(PYTHON_OVERRIDE)
    candidates = [explicit] if explicit else python_candidates(version)
    return next((c for c in candidates if python_reports(c, version)), None), candidates


def no_python_message(version: str, explicit: str | None, looked_at: list[str]) -> str:
    if explicit:
        return (f"{explicit} is not a working CPython {version} with venv and ensurepip: the Kaggle-shaped base "
                f"must run the image's Python, {version}")
    places = ", ".join(looked_at) if looked_at else "none found"
    return (f"no CPython {version} found (the Kaggle image's Python; the Kaggle-shaped base needs it). Looked for "
            f"python{version} on PATH, in pyenv's versions and in /usr/bin, /usr/local/bin, /opt/python, uv's "
            f"folder; candidates tried: {places}. Install one (e.g. `pyenv install {version}`, or your system's "
            f"python{version} and python{version}-venv packages), or name it: "
            f"make kaggle-base {PYTHON_OVERRIDE}=/path/to/python{version}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pins", type=Path, default=KAGGLE_IMAGE_PINS, help="the pins file (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    python = commands.add_parser("python", help="print the path of a CPython of the image's version, or exit 1")
    python.add_argument("--python", help=f"use this interpreter only (default: ${PYTHON_OVERRIDE}, else a search)")
    pins = commands.add_parser("pins", help="print the pins of one kind, one a line")
    pins.add_argument("kind", choices=KINDS)
    commands.add_parser("constraints", help="print every pinned name==version (a pip constraints file)")
    args = parser.parse_args(argv)
    try:
        image = read_image_pins(args.pins)
    except PinsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "python":
        found, looked_at = find_python(image.python_version, args.python)
        if not found:
            print(f"error: {no_python_message(image.python_version, args.python or os.environ.get(PYTHON_OVERRIDE), looked_at)}",
                  file=sys.stderr)
            return 1
        print(found)
    elif args.command == "pins":
        print("\n".join(pin.requirement for pin in image.of_kind(args.kind)))
    else:
        print("\n".join(pin.requirement for pin in image.pins if pin.version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
