"""`python -m hms_offline export`: SavedModel and TFLite exports proven against Keras, cached.

The model exported here is a freshly initialised MobileNetV3 Large whose BatchNormalization
statistics are set from one batch and whose head is random: with keras-cv's initial
statistics (mean 0, variance 1) the backbone's features vanish (~1e-13) and such a model gives
the same probabilities for every input, which would make any comparison of engines hold
trivially. This one's outputs differ across images by far more than the tolerances.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import liven

import hms_offline.models.export as export
from hms_offline.cli import main as hms_offline_main
from hms_offline.digests import sha256_file, sha256_tree
from hms_offline.models.manifest import Manifest, make_entry, read_manifest, write_manifest

ARCH = "mobilenetv3_large"
NAME = "lively_mobilenetv3"


def save_lively_weights(folder: Path, arch: str = ARCH, seed: int = 0) -> Path:
    """Weights of a freshly initialised `arch` whose outputs depend on its input (`liven`)."""
    from hms_offline.models.registry import build_model

    model = build_model(arch)
    liven(model, seed)
    weights = folder / "weights" / f"{arch}_lively{seed}.weights.h5"
    weights.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(weights))
    entry = make_entry(weights, folder, arch=arch, fold=0, name=NAME)
    return write_manifest(Manifest(models=[entry]), folder / "weights_manifest.json")


@pytest.fixture(scope="module")
def lively_bundle(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lively_bundle")
    save_lively_weights(folder)
    return folder


@pytest.fixture(scope="module")
def first_export(lively_bundle, tmp_path_factory) -> tuple[dict, Path]:
    """The command run once (a cold cache of this module's own): its report and the cache."""
    cache = tmp_path_factory.mktemp("export_cache")
    out = tmp_path_factory.mktemp("report") / "exports.json"
    assert hms_offline_main(["export", str(lively_bundle), "--out", str(out), "--cache", str(cache)]) == 0
    return json.loads(out.read_text()), cache


def keras_model(bundle: Path):
    from hms_offline.models.registry import build_model

    (entry,) = read_manifest(bundle).models
    model = build_model(entry.arch, include_rescaling=entry.include_rescaling)
    model.load_weights(str(bundle / entry.file))
    return model


# ----------------------------------------------------------------------------- fast

def test_the_probe_looks_like_real_spectrograms_and_is_deterministic():
    spectrograms = export.probe_spectrograms()
    assert len(spectrograms) == export.PROBE_IMAGES == 4
    for spectrogram in spectrograms:
        assert spectrogram.shape == (400, 300) and spectrogram.dtype == np.float32
        assert (spectrogram > 0).all() and np.isfinite(spectrogram).all()
        assert 1e-3 < np.median(spectrogram) < 1e3 and spectrogram.max() > 100  # power, 0.01 .. thousands
        assert np.median(spectrogram[:10]) > 10 * np.median(spectrogram[90:100])  # falls with frequency
    batch = export.probe_batch()
    assert batch.shape == (4, 400, 300, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, export.probe_batch())
    assert not np.array_equal(batch[0], batch[1])
    assert np.allclose(batch.mean(axis=(1, 2, 3)), 0, atol=1e-4)  # THE preprocessing standardised them


def test_a_difference_past_the_tolerance_fails_naming_the_model():
    export.check_proof("m", {"saved_model": 0.0, "tflite": 1e-4})  # at the tolerance: passes
    with pytest.raises(export.ExportError, match=r"model 'm': its tflite export differs from the Keras model by "
                                                 r"0\.002 on the probe batch \(tolerance 0\.0001\)"):
        export.check_proof("m", {"saved_model": 0.0, "tflite": 2e-3})
    with pytest.raises(export.ExportError, match="saved_model export differs .* by nan"):
        export.check_proof("m", {"saved_model": float("nan"), "tflite": 0.0})


def fake_cache_entry(folder: Path, variant: dict) -> None:
    (folder / "saved_model" / "variables").mkdir(parents=True)
    (folder / "saved_model" / "saved_model.pb").write_bytes(b"graph")
    (folder / "model.tflite").write_bytes(b"TFL3")
    record = {"variant": variant, "seconds": {"total": 1.0},
              "saved_model": {"path": "saved_model", "sha256": sha256_tree(folder / "saved_model"), "max_difference": 0.0},
              "tflite": {"path": "model.tflite", "sha256": sha256_file(folder / "model.tflite"), "max_difference": 2e-6}}
    (folder / "export.json").write_text(json.dumps(record))


@pytest.mark.parametrize("damage, hit", [
    (lambda folder: None, True),
    (lambda folder: (folder / "model.tflite").write_bytes(b"TFL3 changed"), False),
    (lambda folder: (folder / "saved_model" / "saved_model.pb").unlink(), False),
    (lambda folder: (folder / "saved_model" / "extra").write_bytes(b""), False),
    (lambda folder: (folder / "export.json").write_text("{"), False),
    (lambda folder: (folder / "export.json").unlink(), False),
])
def test_a_cache_entry_is_used_only_while_its_files_match_its_record(tmp_path, damage, hit):
    variant = {"arch": ARCH, "tensorflow": "2.21.0"}
    fake_cache_entry(tmp_path / "entry", variant)
    damage(tmp_path / "entry")
    assert (export.cached_record(tmp_path / "entry", variant) is not None) == hit
    if hit:  # another variant (versions, arch, ...) is another export
        assert export.cached_record(tmp_path / "entry", {**variant, "tensorflow": "2.20.0"}) is None


def test_a_cached_export_past_todays_tolerance_is_not_used(tmp_path, monkeypatch):
    fake_cache_entry(tmp_path / "entry", {"v": 1})
    assert export.cached_record(tmp_path / "entry", {"v": 1}) is not None
    monkeypatch.setitem(export.TOLERANCES, "tflite", 1e-6)
    assert export.cached_record(tmp_path / "entry", {"v": 1}) is None


def test_the_command_imports_tensorflow_only_when_it_exports():
    code = ("import sys, hms_offline.cli, hms_offline.models.export, hms_offline.models.manifest\n"
            "hms_offline.cli.build_parser()\n"
            "print(sorted({'tensorflow', 'keras', 'keras_cv'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_weights_that_do_not_load_fail_naming_the_model(tmp_path, capsys):
    weights = tmp_path / "weights" / "broken.weights.h5"
    weights.parent.mkdir()
    weights.write_bytes(b"not hdf5")
    write_manifest(Manifest(models=[make_entry(weights, tmp_path, arch=ARCH, fold=0, name="broken_fold0")]),
                   tmp_path / "weights_manifest.json")
    out = tmp_path / "exports.json"
    assert hms_offline_main(["export", str(tmp_path), "--out", str(out), "--cache", str(tmp_path / "cache")]) == 1
    report = json.loads(out.read_text())
    assert report["models"] == {} and list(report["failed"]) == ["broken_fold0"]
    assert report["failed"]["broken_fold0"].startswith(f"model 'broken_fold0': cannot load {weights} as {ARCH}")
    assert "export failed: model 'broken_fold0': cannot load" in capsys.readouterr().err
    assert list((tmp_path / "cache").rglob("*.tflite")) == []  # nothing half-made left in the cache


def test_a_manifest_the_loader_refuses_is_an_error(tmp_path):
    (tmp_path / "weights_manifest.json").write_text('{"format_version": 9}')
    assert hms_offline_main(["export", str(tmp_path), "--out", str(tmp_path / "r.json")]) == 2
    assert not (tmp_path / "r.json").exists()


# ----------------------------------------------------------------------------- slow: real exports

@pytest.mark.slow
def test_exports_predict_like_the_keras_model(first_export, lively_bundle):
    import tensorflow as tf

    report, cache = first_export
    assert report["failed"] == {} and list(report["models"]) == [NAME]
    exported = report["models"][NAME]
    assert exported["cached"] is False and exported["arch"] == ARCH
    assert exported["saved_model"]["max_difference"] <= 1e-5 and exported["tflite"]["max_difference"] <= 1e-4
    saved_model, tflite = Path(exported["saved_model"]["path"]), Path(exported["tflite"]["path"])
    assert saved_model.is_relative_to(cache) and saved_model.parent == tflite.parent == Path(exported["folder"])
    assert sha256_tree(saved_model) == exported["saved_model"]["sha256"]
    assert sha256_file(tflite) == exported["tflite"]["sha256"]
    assert set(exported["export_seconds"]) == {"build", "saved_model", "tflite", "proof", "total"}

    # Checked again here, on other images than the probe's.
    images = export.probe_batch(3, seed=7)
    expected = keras_model(lively_bundle).predict_on_batch(images)
    assert np.ptp(expected, axis=0).max() > 0.01  # outputs depend on the input: the comparison means something
    loaded = tf.saved_model.load(str(saved_model))
    assert np.abs(np.asarray(loaded.serve(tf.constant(images))) - expected).max() <= 1e-5
    assert np.abs(export.run_tflite(tflite, images) - expected).max() <= 1e-4
    assert np.abs(export.run_tflite(tflite, images[:1]) - expected[:1]).max() <= 1e-4  # any batch size


@pytest.mark.slow
def test_the_saved_model_runs_without_keras_cv(first_export):
    """What the kernel's saved_model and tflite engines rely on: TensorFlow only."""
    exported = first_export[0]["models"][NAME]
    code = f"""
import sys
sys.modules["keras_cv"] = None  # any import of keras_cv fails
import numpy as np, tensorflow as tf
from hms_offline.models.export import probe_batch, run_tflite
images = probe_batch(2)
loaded = tf.saved_model.load({exported['saved_model']['path']!r})
a = np.asarray(loaded.serve(tf.constant(images)))
b = run_tflite({exported['tflite']['path']!r}, images)
print(a.shape, float(np.abs(a - b).max()) <= 1e-4, "keras_cv" in sys.modules and sys.modules["keras_cv"] is not None)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "(2, 6) True False"


@pytest.mark.slow
def test_a_second_export_of_the_same_weights_is_a_cache_hit(first_export, lively_bundle, tmp_path, monkeypatch):
    report, cache = first_export
    folder = Path(report["models"][NAME]["folder"])
    before = {path: path.stat().st_mtime_ns for path in [folder, *folder.rglob("*")]}

    def no_export(*args, **kwargs):
        raise AssertionError("exported again despite the cache")

    monkeypatch.setattr(export, "_export_fresh", no_export)
    out = tmp_path / "again.json"
    assert hms_offline_main(["export", str(lively_bundle), "--out", str(out), "--cache", str(cache)]) == 0
    again = json.loads(out.read_text())["models"][NAME]
    assert again["cached"] is True and again["seconds"] < 5
    assert {kind: again[kind] for kind in ("saved_model", "tflite")} == \
        {kind: report["models"][NAME][kind] for kind in ("saved_model", "tflite")}
    assert {path: path.stat().st_mtime_ns for path in [folder, *folder.rglob("*")]} == before
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left beside it


@pytest.mark.slow
def test_a_failing_proof_stops_naming_the_model_and_caches_nothing(first_export, lively_bundle, tmp_path,
                                                                    monkeypatch, capsys):
    """With a tolerance no export can meet, the cached export no longer counts, the model is
    exported again, its proof fails naming it, and the cache keeps only what it had."""
    report, cache = first_export
    folder = Path(report["models"][NAME]["folder"])
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    monkeypatch.setitem(export.TOLERANCES, "tflite", -1.0)
    out = tmp_path / "failed.json"
    assert hms_offline_main(["export", str(lively_bundle), "--out", str(out), "--cache", str(cache)]) == 1
    failed = json.loads(out.read_text())
    assert failed["models"] == {}
    assert failed["failed"][NAME].startswith(f"model {NAME!r}: its tflite export differs from the Keras model by ")
    assert failed["failed"][NAME].endswith("on the probe batch (tolerance -1)")
    assert f"export failed: model {NAME!r}: its tflite export differs" in capsys.readouterr().err
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before  # no temporary folder left either
    assert (folder / "export.json").is_file()
