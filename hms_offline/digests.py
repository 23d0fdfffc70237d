"""Content digests of files and folders: the sha256 the weights manifest, the exports and the
bundle record. Standard library only, so `hms_offline/bundle/` (which must start without numpy)
imports it too.

A folder's digest (a TF SavedModel is a folder) is the sha256 of the text made of one line
`relative/posix/path<TAB>sha256-of-file\\n` per file under it, sorted by path: it changes when
any file's bytes, name or place change, or when a file is added or removed, and does not
depend on timestamps, permissions or the order the file system lists them in. Empty folders
do not count.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def copy_with_sha256(source: Path, destination: Path) -> str:
    """Copy a file's bytes and return their hex sha256, from the one read: the digest is of
    what was written, so a file that changes while it is copied cannot pass as its old self."""
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(destination, "wb") as writer:
        for chunk in iter(lambda: reader.read(CHUNK), b""):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """The hex sha256 of one file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_listing(folder: Path) -> str:
    """The text whose sha256 is the folder's digest: `path<TAB>sha256\\n` per file, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    files = sorted((path.relative_to(folder).as_posix(), path) for path in folder.rglob("*") if path.is_file())
    return "".join(f"{relative}\t{sha256_file(path)}\n" for relative, path in files)


def sha256_tree(folder: Path) -> str:
    """The hex digest of a folder's files (see the module's docstring)."""
    return hashlib.sha256(tree_listing(folder).encode("utf-8")).hexdigest()


def sha256_path(path: Path) -> str:
    """`sha256_tree` of a folder, `sha256_file` of anything else."""
    return sha256_tree(path) if Path(path).is_dir() else sha256_file(path)
