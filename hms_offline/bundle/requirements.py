"""Enough of PEP 440 / 508 for the build's static check of a lock, standard library only:
versions and their order, specifiers (==, !=, <, <=, >, >=, ~=, ===, and .* prefixes),
requirement lines as wheels write them in Requires-Dist, environment markers, and a wheel's
METADATA read from inside the zip.

Simplified where the lock check does not need more: pre-releases are ordinary versions of
their own (no "exclude pre-releases unless asked"; the versions checked are pinned), a local version label (+abc) is ignored
unless the specifier names one, and python_full_version is the target's X.Y.0.
"""

from __future__ import annotations

import email.parser
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

VERSION_PATTERN = re.compile(
    r"v?(?:(?P<epoch>\d+)!)?(?P<release>\d+(?:\.\d+)*)"
    r"(?:[-_.]?(?P<pre_l>a|b|c|rc|alpha|beta|pre|preview)[-_.]?(?P<pre_n>\d+)?)?"
    r"(?:-(?P<post_n1>\d+)|[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>\d+)?)?"
    r"(?:[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>\d+)?)?"
    r"(?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?",
    re.IGNORECASE,
)
PRE_ORDER = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}


class RequirementError(ValueError):
    """A version, specifier, requirement or marker this module cannot read."""


@dataclass(frozen=True)
class Version:
    text: str
    epoch: int
    release: tuple[int, ...]
    key: tuple  # total order of PEP 440, local label left out
    local: str | None
    is_pre: bool = False  # a pre- or dev-release
    is_post: bool = False

    @property
    def base(self) -> tuple:
        return self.key[:2]

    @classmethod
    def parse(cls, text: str) -> "Version":
        match = VERSION_PATTERN.fullmatch(text.strip())
        if not match:
            raise RequirementError(f"not a version: {text!r}")
        epoch = int(match["epoch"] or 0)
        release = tuple(int(part) for part in match["release"].split("."))
        trimmed = list(release)
        while len(trimmed) > 1 and trimmed[-1] == 0:
            trimmed.pop()
        pre = (PRE_ORDER[match["pre_l"].lower()], int(match["pre_n"] or 0)) if match["pre_l"] else None
        post_number = match["post_n1"] or match["post_n2"]
        post = int(post_number or 0) if (match["post_l"] or match["post_n1"]) else None
        dev = int(match["dev_n"] or 0) if match["dev_l"] else None
        if pre is None and post is None and dev is not None:
            pre_key = (-1,)  # 1.0.dev0 sorts before 1.0a0
        else:
            pre_key = pre if pre is not None else (3,)
        key = (epoch, tuple(trimmed), pre_key, (-1,) if post is None else (post,), (1,) if dev is None else (0, dev))
        return cls(text.strip(), epoch, release, key, match["local"], pre is not None or dev is not None,
                   post is not None)


def prefix_matches(candidate: Version, prefix: str) -> bool:
    """`==prefix.*`: the candidate's epoch and first release parts are the prefix's."""
    wanted = Version.parse(prefix)
    padded = candidate.release + (0,) * max(0, len(wanted.release) - len(candidate.release))
    return candidate.epoch == wanted.epoch and padded[: len(wanted.release)] == wanted.release


def specifier_contains(specifier: str, version: str) -> bool:
    """Whether `version` satisfies every clause of `specifier` (">=1.9.1,<2"; "" for any)."""
    candidate = Version.parse(version)
    for clause in filter(None, (part.strip() for part in specifier.split(","))):
        match = re.fullmatch(r"(===|==|!=|~=|<=|>=|<|>)\s*(\S+)", clause)
        if not match:
            raise RequirementError(f"not a version specifier: {clause!r}")
        op, value = match.groups()
        if op == "===":
            ok = candidate.text == value
        elif op in ("==", "!=") and value.endswith(".*"):
            ok = prefix_matches(candidate, value[:-2]) == (op == "==")
        elif op in ("==", "!="):
            wanted = Version.parse(value)
            same = candidate.key == wanted.key and (wanted.local is None or candidate.local == wanted.local)
            ok = same == (op == "==")
        elif op == "~=":
            wanted = Version.parse(value)
            if len(wanted.release) < 2:
                raise RequirementError(f"~= needs at least two release parts: {clause!r}")
            prefix = ".".join(map(str, wanted.release[:-1]))
            ok = candidate.key >= wanted.key and prefix_matches(candidate, f"{wanted.epoch}!{prefix}")
        elif op == "<":  # not a pre-release of the version named, unless it names one
            wanted = Version.parse(value)
            ok = candidate.key < wanted.key and not (
                candidate.is_pre and not wanted.is_pre and candidate.base == wanted.base)
        elif op == ">":  # nor a post-release of it
            wanted = Version.parse(value)
            ok = candidate.key > wanted.key and not (
                candidate.is_post and not wanted.is_post and candidate.base == wanted.base)
        else:
            wanted = Version.parse(value).key
            ok = candidate.key <= wanted if op == "<=" else candidate.key >= wanted
        if not ok:
            return False
    return True


# ----------------------------------------------------------------------------- markers

MARKER_TOKEN = re.compile(r"""\s*(?:(?P<str>'[^']*'|"[^"]*")|(?P<op>===|==|!=|~=|<=|>=|<|>)|(?P<paren>[()])|"""
                          r"""(?P<word>[A-Za-z_][A-Za-z0-9_.]*))""")
VERSION_VARIABLES = {"python_version", "python_full_version", "implementation_version"}


def marker_tokens(marker: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(marker.rstrip()):
        match = MARKER_TOKEN.match(marker, position)
        if not match:
            raise RequirementError(f"cannot read the marker {marker!r} at {marker[position:]!r}")
        kind = match.lastgroup
        tokens.append((kind, match[kind]))
        position = match.end()
    return tokens


class MarkerParser:
    """PEP 508 markers: or / and / parentheses over `variable op value` comparisons."""

    def __init__(self, marker: str, environment: dict[str, str]):
        self.marker, self.tokens, self.at, self.environment = marker, marker_tokens(marker), 0, environment

    def evaluate(self) -> bool:
        result = self.disjunction()
        if self.at != len(self.tokens):
            raise RequirementError(f"cannot read the marker {self.marker!r}: unexpected {self.tokens[self.at][1]!r}")
        return result

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise RequirementError(f"cannot read the marker {self.marker!r}: it ends too early")
        self.at += 1
        return token

    def disjunction(self) -> bool:
        result = self.conjunction()
        while self.peek() == ("word", "or"):
            self.take()
            result = self.conjunction() or result
        return result

    def conjunction(self) -> bool:
        result = self.atom()
        while self.peek() == ("word", "and"):
            self.take()
            result = self.atom() and result
        return result

    def atom(self) -> bool:
        if self.peek() == ("paren", "("):
            self.take()
            result = self.disjunction()
            if self.take() != ("paren", ")"):
                raise RequirementError(f"cannot read the marker {self.marker!r}: unbalanced parentheses")
            return result
        left = self.value()
        kind, op = self.take()
        if (kind, op) == ("word", "not"):
            if self.take() != ("word", "in"):
                raise RequirementError(f"cannot read the marker {self.marker!r}: 'not' without 'in'")
            op = "not in"
        elif (kind, op) == ("word", "in"):
            op = "in"
        elif kind != "op":
            raise RequirementError(f"cannot read the marker {self.marker!r}: {op!r} is not a comparison")
        right = self.value()
        return compare(left, op, right)

    def value(self) -> tuple[str, str]:
        """(variable name or '', its value)."""
        kind, text = self.take()
        if kind == "str":
            return "", text[1:-1]
        if kind == "word":
            if text not in self.environment:
                raise RequirementError(f"the marker {self.marker!r} uses {text!r}, which the check does not know")
            return text, self.environment[text]
        raise RequirementError(f"cannot read the marker {self.marker!r}: unexpected {text!r}")


def compare(left: tuple[str, str], op: str, right: tuple[str, str]) -> bool:
    (left_name, a), (right_name, b) = left, right
    if "extra" in (left_name, right_name):
        a, b = canonical_name(a), canonical_name(b)
    if op in ("in", "not in"):
        return (a in b) == (op == "in")
    if left_name in VERSION_VARIABLES or right_name in VERSION_VARIABLES:
        try:
            variable_side = a if left_name in VERSION_VARIABLES else b
            other = b if left_name in VERSION_VARIABLES else a
            if left_name in VERSION_VARIABLES:
                return specifier_contains(f"{op}{other}", variable_side)
            flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
            return specifier_contains(f"{flipped}{other}", variable_side)
        except RequirementError:
            pass  # not versions on both sides: compared as strings
    if op == "==" or op == "===":
        return a == b
    if op == "!=":
        return a != b
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}.get(op, False)


def marker_holds(marker: str | None, environment: dict[str, str]) -> bool:
    return True if not marker else MarkerParser(marker, environment).evaluate()


# ----------------------------------------------------------------------------- requirements

def canonical_name(name: str) -> str:
    """PEP 503: lower case, runs of -_. as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Requirement:
    text: str
    name: str  # canonical
    extras: tuple[str, ...]  # canonical
    specifier: str  # "" for any version
    marker: str | None
    url: str | None = None

    def applies(self, environment: dict[str, str], extras: tuple[str, ...] = ()) -> bool:
        """Whether the requirement holds in `environment` when the requirer was asked for `extras`."""
        return any(marker_holds(self.marker, {**environment, "extra": extra}) for extra in ("", *extras))


REQUIREMENT = re.compile(r"\s*(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[(?P<extras>[^\]]*)\])?\s*"
                         r"(?:@\s*(?P<url>[^;\s]+)\s*|\(?(?P<spec>[^;()]*)\)?)\s*(?:;\s*(?P<marker>.+))?")


def parse_requirement(text: str) -> Requirement:
    match = REQUIREMENT.fullmatch(text.strip())
    if not match:
        raise RequirementError(f"not a requirement: {text!r}")
    extras = tuple(canonical_name(e.strip()) for e in (match["extras"] or "").split(",") if e.strip())
    specifier = re.sub(r"\s+", "", match["spec"] or "")
    if specifier:
        specifier_contains(specifier, "0")  # read it now: a bad one is an error here, not later
    return Requirement(text.strip(), canonical_name(match["name"]), extras, specifier,
                       (match["marker"] or "").strip() or None, match["url"])


@dataclass(frozen=True)
class WheelMetadata:
    name: str  # canonical
    version: str
    requires_python: str | None
    requires_dist: tuple[Requirement, ...]


def read_wheel_metadata(wheel: Path) -> WheelMetadata:
    """The METADATA of a wheel's top-level .dist-info, read from inside the zip."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            if len(names) != 1:
                raise RequirementError(f"{wheel.name}: expected one *.dist-info/METADATA, found {len(names)}")
            text = archive.read(names[0]).decode("utf-8")
    except (OSError, zipfile.BadZipFile) as error:
        raise RequirementError(f"{wheel.name}: not a readable wheel ({error})") from None
    message = email.parser.Parser().parsestr(text, headersonly=True)
    return WheelMetadata(
        canonical_name(message.get("Name", "")), (message.get("Version") or "").strip(),
        (message.get("Requires-Python") or "").strip() or None,
        tuple(parse_requirement(line) for line in message.get_all("Requires-Dist") or []),
    )


def target_environment(python_version: str, platform: str) -> dict[str, str]:
    """The marker variables of CPython `python_version` on a Linux wheel platform such as
    manylinux2014_x86_64."""
    machine = re.sub(r"^(manylinux\d*|manylinux_\d+_\d+|musllinux_\d+_\d+|linux)_", "", platform)
    return {
        "python_version": python_version, "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython", "implementation_version": f"{python_version}.0",
        "platform_python_implementation": "CPython", "os_name": "posix", "sys_platform": "linux",
        "platform_system": "Linux", "platform_machine": machine, "extra": "",
    }
