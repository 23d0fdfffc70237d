import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO_ROOT = Path(__file__).resolve().parents[1]
HMS_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "hms-sample"


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


def save_freshly_initialised_fold_weights(folder: Path, plan: dict[str, list[int]], seed: int = 0) -> Path:
    """TEST FIXTURE, not trained models: fold weights of freshly initialised models with a
    random head, saved with `save_weights`, and the weights manifest that lists them."""
    from hms_offline.manifest import Manifest, make_entry, write_manifest
    from hms_offline.model import build_model

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for arch, folds in plan.items():
        model = build_model(arch)
        for fold in folds:
            perturb_head(model, seed + fold)
            weights = folder / "weights" / f"{arch}_fold{fold}.weights.h5"
            weights.parent.mkdir(exist_ok=True)
            model.save_weights(str(weights))
            entries.append(make_entry(weights, folder, arch=arch, fold=fold, ensemble_weight=1.0 + fold))
    return write_manifest(Manifest(models=entries), folder / "weights_manifest.json")


@pytest.fixture(scope="session")
def freshly_initialised_bundle(tmp_path_factory) -> Path:
    """A bundle folder (weights_manifest.json + weights/) with fold weights of BOTH archs
    taken from freshly initialised models: a test fixture, not a trained ensemble."""
    folder = tmp_path_factory.mktemp("fixture_bundle")
    save_freshly_initialised_fold_weights(
        folder, {"mobilenetv3_large": [0, 1], "efficientnetv2_b2": [0]}
    )
    return folder


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
    from hms_offline.synthetic import write_competition

    return write_competition(tmp_path_factory.mktemp("synthetic") / "competition", n_train=60, n_test=12, seed=7)
