"""`python -m hms_offline study`: its flags and folder checks (fast, no TensorFlow), and one
tiny study end to end on synthetic data (slow, about 1.5 minutes on 2 cores: both archs,
fold 0 of 2, 2 epochs x 1 step of batch 2 on 40 rows, inference measured on 2 images; then
the same command again, which trains nothing and measures no speed)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hms_offline.cli import build_parser, main
from hms_offline.training.study import check_study, study_configs

TINY = ["--n-splits", "2", "--folds", "0", "--epochs", "2", "--steps-per-epoch", "1", "--batch-size", "2",
        "--warmup-epochs", "0", "--max-samples", "40", "--progress", "off", "--speed-images", "2"]
ARCHS = ("mobilenetv3_large", "efficientnetv2_b2")
PARAMETERS = {"mobilenetv3_large": (3_002_118, 2_977_718), "efficientnetv2_b2": (8_777_828, 8_695_540)}
STUDY_FILES = {"study.md", "study.csv", "study_epochs.csv", "study_losses.png", "study_gap.png"}


def study_arguments(*flags: str, out: str = "study"):
    return build_parser().parse_args(["study", "--data-dir", "comp", "--out", out, *flags])


def resolved_configs(out: Path, *flags: str):
    return [config.resolved() for config in study_configs(study_arguments(*flags, out=str(out)))]


@pytest.mark.parametrize("flags, message", [
    (["--arch", "efficientnetv2_b2"], "study trains both mobilenetv3_large and efficientnetv2_b2"),
    (["--arch"], "--arch is a `train` flag"),
    (["--pretrained", "presets/effnet"], "--pretrained-mobilenet DIR and/or --pretrained-efficientnet DIR"),
])
def test_the_cli_refuses_what_the_study_sets_itself(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--data-dir", "comp", "--out", "study", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_both_runs_get_the_recipe_and_the_flags_each_its_arch_folder_and_preset():
    mobilenet, efficientnet = study_configs(study_arguments(
        "--recipe", "starter", "--epochs", "3", "--pretrained-efficientnet", "presets/effnet", out="runs/study"))
    assert (mobilenet.arch, efficientnet.arch) == ARCHS
    assert (mobilenet.out, efficientnet.out) == (Path("runs/study/mobilenetv3_large"), Path("runs/study/efficientnetv2_b2"))
    assert (mobilenet.pretrained, efficientnet.pretrained) == (None, Path("presets/effnet"))
    assert (mobilenet.folds_file, efficientnet.folds_file) == (None, Path("runs/study/mobilenetv3_large/folds.csv"))
    for config in (mobilenet, efficientnet):  # the starter's, one flag over it
        assert (config.recipe, config.epochs, config.batch_size, config.folds, config.schedule) == (
            "starter", 3, 64, [0], "starter_staircase")
    assert study_configs(study_arguments("--pretrained-mobilenet", "p"))[0].pretrained == Path("p")


def test_the_study_folder_checks_run_before_anything_trains(tmp_path):
    out = tmp_path / "study"
    check_study(out, resolved_configs(out))  # nothing there yet
    (out / "mobilenetv3_large").mkdir(parents=True)
    (out / "mobilenetv3_large" / "train.log").write_text("a start that failed\n")
    check_study(out, resolved_configs(out))  # what a failed start leaves is fine
    (out / "efficientnetv2_b2").mkdir()
    (out / "efficientnetv2_b2" / "notes.txt").write_text("mine\n")
    with pytest.raises(ValueError, match=r"efficientnetv2_b2 is not a `train` run folder \(no config.json; it "
                                         r"holds notes.txt\)"):
        check_study(out, resolved_configs(out))
    (out / "efficientnetv2_b2" / "notes.txt").unlink()
    # a run folder of other settings: the study's efficientnet config written into the mobilenet's folder
    mobilenet, efficientnet = resolved_configs(out)
    (out / "mobilenetv3_large" / "config.json").write_text(efficientnet.to_json())
    with pytest.raises(ValueError, match="mobilenetv3_large holds a run with other settings .*arch: "
                                         "'efficientnetv2_b2' there, 'mobilenetv3_large' now"):
        check_study(out, [mobilenet, efficientnet])
    (out / "mobilenetv3_large" / "config.json").write_text(mobilenet.to_json())
    check_study(out, [mobilenet, efficientnet])  # the same settings: it resumes
    with pytest.raises(ValueError, match="epochs: 13 there, 2 now"):
        check_study(out, resolved_configs(out, "--epochs", "2", "--warmup-epochs", "1"))
    with pytest.raises(FileNotFoundError, match="--pretrained-efficientnet: .*presets/effnet/config.json not found"):
        check_study(out, resolved_configs(out, "--pretrained-efficientnet", str(tmp_path / "presets/effnet")))
    with pytest.raises(ValueError, match="it is a `train` run folder, not a study folder"):
        run_dir = out / "mobilenetv3_large"
        check_study(run_dir, resolved_configs(run_dir))


def test_study_help_starts_without_tensorflow():
    code = (
        "import sys; from hms_offline.cli import main\n"
        "try:\n    main(['study', '--help'])\nexcept SystemExit:\n    pass\n"
        "import hms_offline.training.study\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'keras_cv', 'sklearn', 'matplotlib') if m in sys.modules]\n"
        "print(heavy); sys.exit(bool(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--pretrained-mobilenet DIR" in result.stdout and "--speed-images" in result.stdout
    assert "--arch" not in result.stdout and "--pretrained PRETRAINED" not in result.stdout


@pytest.mark.slow
def test_a_tiny_study_writes_its_report_and_resumes_without_training(tmp_path):
    from hms_offline.synthetic.write import write_competition

    competition = write_competition(tmp_path / "competition", n_train=60, n_test=4, seed=11)
    out = tmp_path / "study"
    command = ["study", "--data-dir", str(competition), "--out", str(out), "--work-dir", str(tmp_path / "work"), *TINY]
    assert main(command) == 0

    assert STUDY_FILES | set(ARCHS) <= {path.name for path in out.iterdir()}
    runs = {arch: out / arch for arch in ARCHS}
    for arch, run_dir in runs.items():
        assert (run_dir / "cv.json").is_file() and (run_dir / "fold0" / "summary.json").is_file()
        assert not (run_dir / "fold1").exists()
    pd.testing.assert_frame_equal(pd.read_csv(runs[ARCHS[0]] / "folds.csv"), pd.read_csv(runs[ARCHS[1]] / "folds.csv"))

    table = pd.read_csv(out / "study.csv")
    assert table["arch"].tolist() == list(ARCHS)
    assert list(zip(table["parameters"], table["trainable_parameters"])) == [PARAMETERS[arch] for arch in ARCHS]
    assert (table["recipe"] == "default").all() and (table["initial_weights"] == "random").all()
    assert table["best_epochs"].isin([1, 2]).all() and table["folds"].astype(str).eq("0").all()
    assert (table["cv_kl"] > 0).all() and (table["prior_kl"] > 0).all()
    assert (table["train_samples_per_s"] > 0).all() and (table["inference_images_per_s"] > 0).all()

    epochs = pd.read_csv(out / "study_epochs.csv")
    for arch, run_dir in runs.items():
        history = pd.read_csv(run_dir / "fold0" / "history.csv")
        mine = epochs[epochs["arch"] == arch]
        assert mine["epoch"].tolist() == history["epoch"].tolist() == [1, 2]
        np.testing.assert_allclose(mine["gap"], history["val_loss"] - history["loss"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(mine["val_loss"], history["val_loss"], rtol=0, atol=0)
    for name in ("study_losses.png", "study_gap.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "study.md").read_text()
    assert markdown.startswith("# Study: mobilenetv3_large vs efficientnetv2_b2")
    assert "3,002,118" in markdown and "8,695,540" in markdown and "## Loss per epoch (fold 0)" in markdown

    weights = [runs[arch] / "fold0" / f"{arch}_fold0.weights.h5" for arch in ARCHS]
    before = [path.stat().st_mtime_ns for path in weights]
    (out / "study.md").unlink()
    # the same command again (the speed not measured again): nothing trained, the report rewritten
    assert main([*command, "--speed-images", "0"]) == 0
    assert [path.stat().st_mtime_ns for path in weights] == before
    assert (out / "study.md").read_text().startswith("# Study: mobilenetv3_large vs efficientnetv2_b2")
    assert "fold 0 is already finished in" in (runs[ARCHS[1]] / "train.log").read_text()
    assert pd.read_csv(out / "study.csv")["parameters"].tolist() == [PARAMETERS[arch][0] for arch in ARCHS]


def hand_made_run(run_dir: Path, arch: str, losses: dict[int, list[tuple[float, float]]]) -> Path:
    """A finished run folder as `train` leaves it, as far as the study reads it: config.json,
    cv.json, fold<k>/history.csv and summary.json."""
    config = study_configs(study_arguments("--n-splits", "3", "--folds", "0,1", "--epochs", "3", "--warmup-epochs",
                                           "1", out=str(run_dir.parent)))[list(ARCHS).index(arch)]
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(config.resolved().to_json())
    per_fold = []
    for fold, rows in losses.items():
        (run_dir / f"fold{fold}").mkdir()
        history = pd.DataFrame({"epoch": range(1, len(rows) + 1), "loss": [r[0] for r in rows],
                                "val_loss": [r[1] for r in rows], "train_samples_per_second": 10.0})
        history.to_csv(run_dir / f"fold{fold}" / "history.csv", index=False)
        best = int(history["val_loss"].idxmin())
        per_fold.append({"fold": fold, "best_val_loss": history["val_loss"][best], "best_epoch": best + 1})
        (run_dir / f"fold{fold}" / "summary.json").write_text(json.dumps({"fold": fold, "steps_per_epoch": 4}))
    (run_dir / "cv.json").write_text(json.dumps({
        "arch": arch, "input": "kaggle", "parameters": PARAMETERS[arch][0], "trainable_parameters": PARAMETERS[arch][1],
        "folds": list(losses), "cv_kl": 0.8, "prior_kl": 1.2, "per_fold": per_fold}))
    return run_dir


def test_with_several_folds_the_report_shows_the_mean_over_folds_per_epoch(tmp_path):
    from hms_offline.training.study import write_study

    out = tmp_path / "study"
    runs = [hand_made_run(out / ARCHS[0], ARCHS[0], {0: [(1.0, 1.5), (0.8, 1.2), (0.6, 1.3)],
                                                     1: [(1.2, 1.3), (0.6, 1.0), (0.4, 1.1)]}),
            hand_made_run(out / ARCHS[1], ARCHS[1], {0: [(1.1, 1.4), (0.9, 1.3), (0.5, 1.2)],
                                                     1: [(1.3, 1.6), (0.7, 1.1), (0.3, 1.2)]})]
    table = write_study(out, runs, speed_images=0)
    assert table["best_epochs"].tolist() == ["2 2", "3 2"] and "inference_images_per_s" not in table
    epochs = pd.read_csv(out / "study_epochs.csv")
    assert len(epochs) == 12
    np.testing.assert_allclose(epochs["gap"], epochs["val_loss"] - epochs["loss"])
    markdown = (out / "study.md").read_text()
    assert "## Loss per epoch (mean over folds 0, 1)" in markdown
    # mobilenet's epoch 2: train (0.8 + 0.6) / 2, validation (1.2 + 1.0) / 2, gap 0.4
    assert "| 2 | 0.7000 | 1.1000 | 0.4000 | 0.8000 | 1.2000 | 0.4000 |" in markdown
    assert "folds 0 1 of 3, 3 epochs x 4 steps/epoch x batch 64" in markdown
    for name in ("study_losses.png", "study_gap.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
