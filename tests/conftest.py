import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO_ROOT = Path(__file__).resolve().parents[1]
HMS_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "hms-sample"


@pytest.fixture(scope="session")
def kernel():
    """kernel/inference.py as a module (Kaggle runs it as a script)."""
    spec = importlib.util.spec_from_file_location("hms_kernel", REPO_ROOT / "kernel" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def package_wheel(tmp_path_factory) -> Path:
    """The hms_offline wheel of this checkout, as the bundle ships it (wheels/hms_offline-*.whl)."""
    from hms_offline.bundle.package import build_package_wheel, read_source_state

    folder = tmp_path_factory.mktemp("package_wheel") / "wheels"
    folder.mkdir()
    return build_package_wheel(REPO_ROOT, read_source_state(REPO_ROOT), folder)


@pytest.fixture(scope="session")
def hms_sample() -> Path:
    """The real public sample of the competition files, beside the repo in ../shared."""
    if not (HMS_SAMPLE / "test.csv").exists():
        pytest.skip(f"real competition sample not found at {HMS_SAMPLE}")
    return HMS_SAMPLE


def perturb_head(model, seed: int) -> None:
    """A freshly initialised keras-cv ImageClassifier outputs exactly 1/6 for every class;
    random head weights make its outputs depend on the input, so comparisons mean something."""
    import numpy as np

    rng = np.random.default_rng(seed)
    head = model.layers[-1]
    head.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in head.get_weights()])


def liven(model, seed: int) -> None:
    """Make a freshly initialised model's outputs depend on its input. Its BatchNormalization
    layers hold mean 0, variance 1, so at inference its features shrink to ~1e-13 and a
    random head alone gives the same probabilities for every image: set their statistics from
    one random batch (momentum 0 for one training-mode call), then randomise the head."""
    import keras

    from hms_offline.models.export import probe_batch

    norms = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(probe_batch(8, seed=1000 + seed), training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
    perturb_head(model, seed)


def save_freshly_initialised_fold_weights(folder: Path, plan: dict[str, list[int]], seed: int = 0,
                                          views: dict | None = None) -> Path:
    """TEST FIXTURE, not trained models: fold weights of freshly initialised models made
    input-dependent by `liven`, saved with `save_weights`, and the weights manifest that lists
    them; `views[(arch, fold)]` names an entry's input view (default: the Kaggle spectrogram's)."""
    from hms_offline.features.views import DEFAULT_VIEW, view_record
    from hms_offline.models.manifest import Manifest, make_entry, write_manifest
    from hms_offline.models.registry import build_model

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for arch, folds in plan.items():
        model = build_model(arch)
        for fold in folds:
            liven(model, seed + fold)
            weights = folder / "weights" / f"{arch}_fold{fold}.weights.h5"
            weights.parent.mkdir(exist_ok=True)
            model.save_weights(str(weights))
            view = (views or {}).get((arch, fold), DEFAULT_VIEW)
            entries.append(make_entry(weights, folder, arch=arch, fold=fold, ensemble_weight=1.0 + fold,
                                      input_view=view_record(view)))
    return write_manifest(Manifest(models=entries), folder / "weights_manifest.json")


@pytest.fixture(scope="session")
def freshly_initialised_bundle(tmp_path_factory) -> Path:
    """A bundle folder (weights_manifest.json + weights/) with fold weights of BOTH archs
    taken from freshly initialised models, one of them on the EEG view (so every kernel run on
    it converts and reads test EEGs too): a test fixture, not a trained ensemble."""
    folder = tmp_path_factory.mktemp("fixture_bundle")
    save_freshly_initialised_fold_weights(
        folder, {"mobilenetv3_large": [0, 1], "efficientnetv2_b2": [0]},
        views={("mobilenetv3_large", 1): "eeg_bipolar_stft"},
    )
    return folder


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory) -> Path:
    """One cache of proven exports for the whole session ($HMS_EXPORT_CACHE, which `python -m
    hms_offline export` and build_bundle.py read, subprocesses included): a model exported by
    one test is a cache hit for the next, and the repo's .cache/exports/ is left alone."""
    folder = tmp_path_factory.mktemp("export_cache")
    previous = os.environ.get("HMS_EXPORT_CACHE")
    os.environ["HMS_EXPORT_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("HMS_EXPORT_CACHE", None)
    else:
        os.environ["HMS_EXPORT_CACHE"] = previous


OFFLINE_GUARD = Path(__file__).resolve().parent / "offline_guard"


def unshare_available() -> bool:
    import shutil
    import subprocess

    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rn", "true"], capture_output=True
    ).returncode == 0


def run_offline(command: list[str], **kwargs):
    """Run `command` with the network blocked: in a fresh network namespace with no
    interfaces (`unshare -rn`) where the machine allows it, and always with a socket guard
    that makes every Python-level connection attempt raise."""
    import subprocess

    env = dict(os.environ, **kwargs.pop("env", {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(OFFLINE_GUARD), env.get("PYTHONPATH")]))
    if unshare_available():
        command = ["unshare", "-rn", *command]
    return subprocess.run(command, env=env, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="session")
def synthetic_competition(tmp_path_factory) -> Path:
    from hms_offline.synthetic.write import write_competition

    return write_competition(tmp_path_factory.mktemp("synthetic") / "competition", n_train=60, n_test=12, seed=7)


@pytest.fixture(scope="session")
def exported_bundle(tmp_path_factory, freshly_initialised_bundle, export_cache) -> Path:
    """The fixture's models as build_bundle.py ships them: weights plus their proven exports
    (SavedModel, TFLite) in a format-2 manifest, without the wheels."""
    from hms_offline.bundle.common import write_json
    from hms_offline.bundle.exports import export_models, with_exports
    from hms_offline.bundle.weights import as_format_2, copy_weights, read_weights_manifest

    manifest_path = freshly_initialised_bundle / "weights_manifest.json"
    exported = export_models([manifest_path], REPO_ROOT, export_cache)
    folder = tmp_path_factory.mktemp("exported_bundle")
    manifest = with_exports(as_format_2(read_weights_manifest(manifest_path)), exported)
    write_json(folder / "weights_manifest.json", copy_weights(manifest, freshly_initialised_bundle, folder))
    return folder
