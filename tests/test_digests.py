"""hms_offline.digests: the sha256 of a file, of a folder, and of a copy."""

import hashlib
import os

import pytest

from hms_offline.digests import copy_with_sha256, sha256_file, sha256_path, sha256_tree, tree_listing


def test_the_tree_digest_is_the_sha256_of_its_sorted_listing(tmp_path):
    folder = tmp_path / "saved_model"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "variables.index").write_bytes(b"index")
    (folder / "assets").mkdir()  # empty folders do not count
    listing = (f"saved_model.pb\t{hashlib.sha256(b'graph').hexdigest()}\n"
               f"variables/variables.index\t{hashlib.sha256(b'index').hexdigest()}\n")
    assert tree_listing(folder) == listing
    digest = sha256_tree(folder)
    assert digest == hashlib.sha256(listing.encode()).hexdigest()
    os.utime(folder / "saved_model.pb", (0, 0))  # timestamps do not count
    assert sha256_tree(folder) == digest
    (folder / "variables" / "variables.index").rename(folder / "variables.index")  # places do
    assert sha256_tree(folder) != digest
    with pytest.raises(NotADirectoryError):
        sha256_tree(folder / "saved_model.pb")


def test_a_copy_is_hashed_as_written_and_a_path_by_its_kind(tmp_path):
    (tmp_path / "folder").mkdir()
    source = tmp_path / "folder" / "weights.h5"
    source.write_bytes(b"weights" * 100_000)
    digest = copy_with_sha256(source, tmp_path / "copy.h5")
    assert digest == hashlib.sha256(source.read_bytes()).hexdigest() == sha256_file(tmp_path / "copy.h5")
    assert (tmp_path / "copy.h5").read_bytes() == source.read_bytes()
    assert sha256_path(source) == digest and sha256_path(tmp_path / "folder") == sha256_tree(tmp_path / "folder")
