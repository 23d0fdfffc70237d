"""`python -m hms_offline <command>`: the package's command line.

Each command imports its module only when it runs, so `convert`, `score`, `synth` and
`ensemble` start without loading TensorFlow (`train` and `study` load it once they train).
"""

import argparse
import logging
import sys
from pathlib import Path


def _convert(args: argparse.Namespace) -> int:
    from hms_offline.convert import convert_tree

    convert_tree(args.src, args.dst, workers=args.workers)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from hms_offline.synthetic.write import write_competition

    write_competition(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    return 0


def _score(args: argparse.Namespace) -> int:
    from hms_offline.metric import score_files

    print(f"{score_files(args.solution, args.submission):.6f}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from hms_offline.serving.inference import predict_competition

    predict_competition(
        data_dir=args.data_dir,
        bundle_dir=args.bundle_dir,
        output=args.output,
        batch_size=args.batch_size,
        workers=args.workers,
        strict=args.strict,
        engine=args.engine,
    )
    return 0


def _check_manifest(args: argparse.Namespace) -> int:
    from hms_offline.models.manifest import manifest_problems

    problems = [problem for path in args.paths
                for problem in manifest_problems(path, require_exports=args.require_exports)]
    for problem in problems:
        print(problem)
    return 1 if problems else 0


def _export(args: argparse.Namespace) -> int:
    from hms_offline.models.export import export_manifests, write_report

    report = export_manifests(args.paths, cache=args.cache)
    write_report(report, args.out)
    for name, reason in report["failed"].items():
        print(f"export failed: {reason}" if name in reason else f"export failed: model {name!r}: {reason}",
              file=sys.stderr)
    return 1 if report["failed"] else 0


def _train(args: argparse.Namespace) -> int:
    from hms_offline.training.config import TrainConfig
    from hms_offline.training.run import train

    train(TrainConfig.from_arguments(args))
    return 0


def _study(args: argparse.Namespace) -> int:
    from hms_offline.training.study import study_from_arguments

    print(study_from_arguments(args).to_string(index=False))
    return 0


def _show(args: argparse.Namespace) -> int:
    from hms_offline.constants import CLASSES
    from hms_offline.features.show import draw_sample, find_sample

    sample = find_sample(args.data_dir, args.eeg_id, args.labels)
    predicted, models = None, ""
    if args.bundle_dir is not None:
        from hms_offline.serving.inference import predict_sample

        predicted, names = predict_sample(args.bundle_dir, lambda views: {v: sample.image(v) for v in views},
                                          args.engine)
        models = f"{len(names)} model(s)"
        print("predicted: " + ", ".join(f"{c} {p:.3f}" for c, p in zip(CLASSES, predicted)))
    print(f"wrote {draw_sample(sample, predicted, args.output, models)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from hms_offline.training.compare import compare_runs

    table = compare_runs(args.runs, args.out, speed_images=args.speed_images, speed_batch_size=args.speed_batch_size)
    print(table.to_string(index=False))
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from hms_offline.training.ensemble import ensemble_runs, ensemble_table

    record = ensemble_runs(args.runs, args.out)
    print(ensemble_table(record).to_string(index=False))
    return 0


def _bench(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not args.verbose:  # the report, not the log of every kernel run it times
        os.environ.setdefault("TQDM_DISABLE", "1")
        logging.getLogger("hms_offline").setLevel(logging.WARNING)
    from hms_offline.bench.run import run_bench

    run_bench(quick=args.quick, json_path=args.json, data_dir=args.data_dir, cache=args.cache,
              parts=tuple(args.parts.split(",")), engines=args.engines and tuple(args.engines.split(",")),
              ensembles=args.ensembles and tuple(int(k) for k in args.ensembles.split(",")))
    return 0


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hms_offline", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="parquet spectrograms / EEGs -> .npy")
    convert.add_argument("--src", type=Path, required=True,
                         help="a competition folder or a folder of parquet files")
    convert.add_argument("--dst", type=Path, required=True, help="where the .npy files go")
    convert.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    convert.set_defaults(handler=_convert)

    synth = commands.add_parser("synth", help="write synthetic competition-shaped data")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--n-train", type=int, default=200)
    synth.add_argument("--n-test", type=int, default=20)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_synth)

    score = commands.add_parser("score", help="KL divergence of a submission, Kaggle's metric")
    score.add_argument("--solution", type=Path, required=True)
    score.add_argument("--submission", type=Path, required=True)
    score.set_defaults(handler=_score)

    predict = commands.add_parser("predict", help="fold-ensemble inference -> submission.csv")
    predict.add_argument("--data-dir", type=Path, required=True,
                         help="competition folder: test.csv, sample_submission.csv, test_spectrograms/")
    predict.add_argument("--bundle-dir", type=Path, required=True,
                         help="folder holding weights_manifest.json")
    predict.add_argument("--output", type=Path, default=Path("submission.csv"))
    predict.add_argument("--workers", type=positive_int, default=None,
                         help="processes reading and preprocessing the test files ahead of the models "
                              "(default: one per core)")
    from hms_offline.models.engines import AUTO, ENGINE_NAMES
    from hms_offline.serving.inference import DEFAULT_BATCH_SIZE

    predict.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE)

    predict.add_argument("--engine", choices=(AUTO, *ENGINE_NAMES), default=AUTO,
                         help="what runs the models (default auto: per model tflite, then saved_model, then "
                              "keras; saved_model first where a GPU is visible)")
    predict.add_argument("--strict", action="store_true",
                         help="any fallback row, dropped model or set-aside test row is an error "
                              "(for dry runs and CI; on Kaggle the default writes the submission regardless)")
    predict.set_defaults(handler=_predict)

    check_manifest = commands.add_parser(
        "check-manifest", help="what the kernel would refuse in a weights manifest (exit 1 if anything)")
    check_manifest.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                                help="weights_manifest.json, or a folder holding one")
    check_manifest.add_argument("--require-exports", action="store_true",
                                help="also every model's SavedModel and TFLite export: listed, present, digest "
                                     "as listed (what build_bundle.py checks of the manifest it bundles)")
    check_manifest.set_defaults(handler=_check_manifest)

    export = commands.add_parser(
        "export", help="each model of a manifest as a TF SavedModel and a TFLite file, proven equal to Keras "
                       "on a probe batch, cached by the weights' sha256 (exit 1 if any model fails)")
    export.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                        help="weights_manifest.json, or a folder holding one")
    export.add_argument("--out", type=Path, required=True,
                        help="the JSON report: per model its exports, their digests, differences, seconds")
    export.add_argument("--cache", type=Path, default=None,
                        help="export cache folder (default: $HMS_EXPORT_CACHE, else .cache/exports/ of this checkout)")
    export.set_defaults(handler=_export)

    from hms_offline.training.config import add_arguments

    train = commands.add_parser("train", help="train fold models of one architecture (resumable)")
    add_arguments(train)
    train.set_defaults(handler=_train)

    from hms_offline.training.study import add_study_arguments

    study = commands.add_parser(
        "study", help="MobileNetV3 Large and EfficientNetV2 B2 trained on the same folds under one recipe, and "
                      "their report: parameters, losses and the gap per epoch, CV KL, throughput (resumable)")
    add_study_arguments(study)
    study.set_defaults(handler=_study)

    show = commands.add_parser(
        "show", help="one sample in one PNG: its Kaggle spectrogram window, its EEG view and 16 bipolar traces, "
                     "the ensemble's prediction beside the experts' votes")
    show.add_argument("--data-dir", type=Path, required=True,
                      help="competition folder: train.csv + train_*/ or test.csv + test_*/")
    show.add_argument("--eeg-id", type=int, required=True,
                      help="the sample: its first labelled row in train.csv, else its row of test.csv")
    show.add_argument("--labels", type=Path, default=None, help="train labels CSV (default: DATA_DIR/train.csv)")
    show.add_argument("--bundle-dir", type=Path, default=None,
                      help="folder holding weights_manifest.json: predict the sample with its ensemble")
    show.add_argument("--engine", choices=(AUTO, *ENGINE_NAMES), default=AUTO, help="what runs the models")
    show.add_argument("--output", type=Path, required=True, help="the PNG written")
    show.set_defaults(handler=_show)

    report = commands.add_parser("report", help="compare trained runs side by side")
    report.add_argument("runs", type=Path, nargs="+", help="run folders written by `train`")
    report.add_argument("--out", type=Path, required=True, help="where comparison.{md,csv,png} go")
    report.add_argument("--speed-images", type=int, default=32,
                        help="random images per arch for the inference images/s measurement (0: skip)")
    report.add_argument("--speed-batch-size", type=int, default=8)
    report.set_defaults(handler=_report)

    ensemble = commands.add_parser(
        "ensemble", help="one weight per run fitted on the runs' out-of-fold predictions (Kaggle's KL) -> "
                         "DIR/weights_manifest.json for build_bundle.py, ensemble.json, ensemble.md")
    ensemble.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                          help="run folders written by `train`, with the same out-of-fold rows")
    ensemble.add_argument("--out", type=Path, required=True,
                          help="where weights_manifest.json, ensemble.json and ensemble.md go (not a run folder)")
    ensemble.set_defaults(handler=_ensemble)

    bench = commands.add_parser(
        "bench", help="what conversion, the kernel, its memory and training cost on this machine, each beside the "
                      "route it is compared with, measured side by side (ratios); see README, Benchmark")
    bench.add_argument("--quick", action="store_true",
                       help="small N, K = 1, the TFLite engine, few rounds (what the test suite runs)")
    bench.add_argument("--json", type=Path, default=None, help="write every figure and ratio here")
    bench.add_argument("--data-dir", type=Path, default=None,
                       help="a competition folder: also measure conversion of its spectrograms and the kernel on "
                            "its test set")
    bench.add_argument("--parts", default="conversion,kernel,memory,training",
                       help="comma-separated parts to run (default: all four)")
    bench.add_argument("--engines", default=None,
                       help="part 2's engines, comma-separated (default: tflite,saved_model,keras; --quick: tflite)")
    bench.add_argument("--ensembles", default=None,
                       help="part 2's ensemble sizes K, comma-separated, of 1 and 10 (default: 1,10; --quick: 1)")
    bench.add_argument("--cache", type=Path, default=None,
                       help="the bench models' weights and exports (default: $HMS_BENCH_CACHE, else "
                            "~/.cache/hms_offline/bench)")
    bench.set_defaults(handler=_bench)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        logging.getLogger("hms_offline").error("%s", error)
        return 2
