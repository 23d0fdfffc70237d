"""The layout's rules, asserted on the import graph of the source (hms_offline/layout.py):
serving/ never imports training/, bundle/ imports the standard library and
hms_offline.digests only, the kernel script is self-contained."""

import subprocess
import sys

import pytest

from hms_offline import layout

from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def graph() -> layout.Graph:
    return layout.read_graph(REPO_ROOT)


def test_every_import_keeps_the_rules(graph):
    assert graph.problems() == []


def test_serving_imports_the_core_features_and_models_never_training(graph):
    assert set(graph.edges()["serving"]) == {"core", "features", "models"}


def test_bundle_imports_the_standard_library_and_hms_offline_digests_only(graph):
    assert graph.edges()["bundle"] == {"core": {"hms_offline.digests"}}
    assert graph.outside()["bundle"] == set()


def test_the_kernel_script_imports_the_standard_library_and_serving_only(graph):
    """Kaggle runs it as one file: everything else comes from the bundle's hms_offline wheel."""
    assert graph.edges()["kernel"] == {"serving": {"hms_offline.serving.inference"}}
    assert graph.outside()["kernel"] == set()
    assert graph.edges()["build_bundle"].keys() == {"bundle"} and graph.outside()["build_bundle"] == set()


def test_every_folder_of_the_package_has_a_rule(graph):
    folders = {path.parent.name for path in (REPO_ROOT / "hms_offline").glob("*/__init__.py")}
    assert folders == {"features", "models", "serving", "training", "synthetic", "bundle", "bench"}
    assert folders <= set(layout.MAY_IMPORT) and set(graph.nodes.values()) <= set(layout.MAY_IMPORT)


def test_imports_resolve_to_modules_relative_and_from_packages_too(graph):
    imported = {(item.source, item.target) for item in graph.imports}
    assert ("hms_offline.bundle.build", "hms_offline.bundle.common") in imported  # from .common import ...
    assert ("hms_offline.features.views", "hms_offline.features.spectrogram") in imported  # from package import module
    assert ("hms_offline.models.engines", "tensorflow") in imported  # inside a function
    assert layout.node_of("hms_offline.cli") == "cli" and layout.node_of("hms_offline") == "core"


def test_a_broken_rule_names_the_file_the_line_and_the_rule():
    graph = layout.read_graph(REPO_ROOT)
    graph.imports += [layout.Import("hms_offline.serving.inference", 7, "hms_offline.training.config"),
                      layout.Import("hms_offline.bundle.build", 3, "numpy"),
                      layout.Import("kernel/inference.py", 9, "hms_offline.models.manifest")]
    graph.nodes["hms_offline.plots.figure"] = "plots"
    assert graph.problems() == [
        "plots: a folder of the package without a rule in MAY_IMPORT",
        "hms_offline.serving.inference line 7 imports hms_offline.training.config: serving may import only core, "
        "features, models and itself",
        "hms_offline.bundle.build line 3 imports numpy: bundle imports only the standard library",
        "kernel/inference.py line 9 imports hms_offline.models.manifest: kernel may import only serving and itself",
    ]


def test_python_m_hms_offline_layout_prints_the_graph():
    result = subprocess.run([sys.executable, "-m", "hms_offline.layout"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[-1] == "rules (MAY_IMPORT, STANDARD_LIBRARY_ONLY): kept"
    assert any(line.split("|")[0].split() == ["serving", "->", "core,", "features,", "models"] for line in lines)
    assert any(line.startswith("  bundle ") and "core (hms_offline.digests)" in line for line in lines)
