"""One home per fact. Where the kernel script (one file, run before it has found hms_offline)
or bundle/ (standard library only: it cannot import the numpy side) needs a fact of the
package, it keeps a copy that names its home; each copy is tied to its home here."""

import re
import sys

import pytest

from hms_offline.bundle import build, common, demo, environment, exports, submission_check, verify, weights, wheels
from hms_offline.bundle.requirements import specifier_contains
from hms_offline.models import engines, export, manifest
from hms_offline.serving import inference, inference_report, submission
from hms_offline.training import run_folder

from conftest import OFFLINE_GUARD, REPO_ROOT


def test_the_kernels_copies(kernel):
    assert kernel.MANIFEST_NAME == manifest.MANIFEST_NAME
    assert kernel.COMPETITION_SLUG == build.COMPETITION_SLUG
    assert kernel.ENGINES == (engines.AUTO, *engines.ENGINE_NAMES)
    assert kernel.DEFAULT_BATCH_SIZE == inference.DEFAULT_BATCH_SIZE
    assert kernel.WHEELS_DIR.as_posix() == wheels.WHEELS_DIR
    assert set(kernel.INSTALL_RULES) == set(wheels.INSTALL_RULES)
    assert kernel.DEFAULT_INSTALL_RULE == wheels.REPLACE_OTHER_VERSION  # an entry without `install_if` (format 1)


def test_the_kernel_reads_the_lock_and_the_wheel_the_build_writes(kernel, tmp_path, package_wheel):
    target = wheels.Target(f"{sys.version_info.major}.{sys.version_info.minor}", wheels.DEFAULT_PLATFORM)
    (tmp_path / wheels.WHEELS_DIR).mkdir()
    lock = tmp_path / wheels.WHEELS_DIR / target.lock_name
    lock.write_text("{}")
    assert kernel.lock_for_this_python(tmp_path) == lock
    assert package_wheel.match(kernel.PACKAGE_WHEEL_GLOB)
    entry = wheels.wheel_lock([package_wheel], target)["packages"][0]
    assert kernel.lock_entry_problem(entry) is None and set(kernel.LOCK_FIELDS) <= set(entry)


def test_bundles_copies():
    assert common.MANIFEST_NAME == manifest.MANIFEST_NAME
    assert weights.MANIFEST_FORMAT == manifest.FORMAT_VERSION
    assert exports.EXPORT_KINDS == manifest.EXPORT_KINDS
    assert exports.CACHE_ENV == export.CACHE_ENV
    assert submission_check.SUM_TOLERANCE == submission.SUM_TOLERANCE
    assert verify.REPORT_NAME == inference_report.REPORT_NAME
    assert verify.VERIFY_ENGINES == (engines.AUTO, *engines.ENGINE_NAMES)
    assert (demo.FOLDS_NAME, demo.CV_NAME) == (run_folder.FOLDS_NAME, run_folder.CV_NAME)


def test_the_export_cache_defaults_to_the_same_folder(monkeypatch):
    monkeypatch.delenv(export.CACHE_ENV, raising=False)
    assert exports.default_export_cache() == export.default_cache() == REPO_ROOT / ".cache" / "exports"


def test_the_tests_socket_guard_is_the_bundles(tmp_path):
    """tests/offline_guard/sitecustomize.py (the tests' and `make kaggle-base`'s) is the guard
    --verify writes, with its own name; regenerate it with
    python -c "from hms_offline.bundle.environment import *; print(socket_guard(*TESTS_GUARD), end='')"
    """
    assert (OFFLINE_GUARD / "sitecustomize.py").read_text() == environment.socket_guard(*environment.TESTS_GUARD)
    block = environment.NetworkBlock.install(tmp_path)
    assert (tmp_path / "sitecustomize.py").read_text() == environment.socket_guard(*environment.VERIFY_GUARD)
    assert "tests/offline_guard" in (REPO_ROOT / "Makefile").read_text() and block.guard_dir == tmp_path


def pins(requirements: list[str]) -> dict[str, str]:
    """{canonical name: requirement after the name} of requirement lines."""
    split = [re.match(r"([A-Za-z0-9._-]+)\s*(.*)", line).groups() for line in requirements]
    return {wheels.canonical_name(name): rest for name, rest in split}


def test_version_pins_agree_between_pyproject_and_the_kernels_wheels():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    model, model_cpu = pins(extras["model"]), pins(extras["model-cpu"])
    assert model.pop("tensorflow") == model_cpu.pop("tensorflow-cpu") and model == model_cpu
    shipped = dict(wheels.parse_pin(pin) for pin in wheels.KERNEL_WHEEL_PINS)
    for name, requirement in model.items():  # what trains is what the keras engine ships
        assert name not in shipped or requirement == f"=={shipped[name]}", name
    assert shipped.keys() & model.keys() == {"keras", "keras-cv"}
    for name, requirement in pins(project["dependencies"]).items():  # ranges the shipped pins must meet
        assert name not in shipped or specifier_contains(requirement, shipped[name]), (name, requirement)
    assert "==" not in (REPO_ROOT / "Makefile").read_text()  # it pins nothing: it reads both files above
