"""hms_offline/bundle/package.py: the hms_offline wheel the kernel imports from."""

import zipfile

from conftest import REPO_ROOT


def test_the_wheel_holds_every_module_and_data_file_of_the_source_tree(package_wheel):
    """pyproject.toml finds the packages (a new folder needs no entry); the pins file
    bundle/kaggle_image.py reads beside itself is package data."""
    source = {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "hms_offline").rglob("*")
              if path.is_file() and "__pycache__" not in path.parts}
    with zipfile.ZipFile(package_wheel) as wheel:
        packed = {name for name in wheel.namelist() if name.startswith("hms_offline/")}
    assert packed == source
    assert {"hms_offline/serving/inference.py", "hms_offline/bundle/kaggle_image.txt"} <= packed
