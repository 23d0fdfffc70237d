"""`python -m hms_offline bench`: run the parts, print each as it is measured, write the JSON."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hms_offline.bench.measure import machine, machine_lines

PARTS = ("conversion", "kernel", "memory", "training")
JSON_FORMAT = 1


@dataclass(frozen=True)
class Settings:
    conversion_files: int
    conversion_workers: tuple[int, ...]
    conversion_rounds: int
    kernel_sizes: tuple[int, int]
    kernel_ensembles: tuple[int, ...]
    kernel_engines: tuple[str, ...]
    kernel_rounds: int
    memory_sizes: tuple[int, int]
    memory_engine: str
    training_windows: int
    training_batch_size: int
    training_archs: tuple[str, ...]
    training_step_batch: int
    training_steps: int
    training_rounds: int


def settings(quick: bool, engines: tuple[str, ...] | None = None, ensembles: tuple[int, ...] | None = None) -> Settings:
    """`quick`: what the test suite runs (small N, K = 1, the fastest engine, few rounds);
    `engines` and `ensembles` (K) limit part 2."""
    chosen = _settings(quick)
    return dataclasses.replace(chosen, kernel_engines=tuple(engines or chosen.kernel_engines),
                               kernel_ensembles=tuple(ensembles or chosen.kernel_ensembles))


def _settings(quick: bool) -> Settings:
    if quick:
        return Settings(conversion_files=20, conversion_workers=(1,), conversion_rounds=2,
                        kernel_sizes=(8, 24), kernel_ensembles=(1,), kernel_engines=("tflite",), kernel_rounds=2,
                        memory_sizes=(8, 32), memory_engine="tflite",
                        training_windows=64, training_batch_size=16, training_archs=("mobilenetv3_large",),
                        training_step_batch=4, training_steps=2, training_rounds=2)
    return Settings(conversion_files=150, conversion_workers=tuple(sorted({1, os.cpu_count() or 1})),
                    conversion_rounds=5,
                    kernel_sizes=(16, 48), kernel_ensembles=(1, 10), kernel_engines=("tflite", "saved_model", "keras"),
                    kernel_rounds=2, memory_sizes=(500, 5000), memory_engine="tflite",
                    training_windows=512, training_batch_size=32,
                    training_archs=("mobilenetv3_large", "efficientnetv2_b2"), training_step_batch=8,
                    training_steps=3, training_rounds=3)


def run_part(name: str, config: Settings, work: Path, cache: Path, data_dir: Path | None) -> list:
    if name == "conversion":
        from hms_offline.bench import conversion

        return conversion.run(work, config.conversion_files, config.conversion_workers, config.conversion_rounds,
                              data_dir)
    if name == "kernel":
        from hms_offline.bench import kernel

        return kernel.run(work, config.kernel_sizes, config.kernel_ensembles, config.kernel_engines,
                          config.kernel_rounds, cache, data_dir)
    if name == "memory":
        from hms_offline.bench import memory

        return memory.run(work, config.memory_sizes, config.memory_engine, cache)
    from hms_offline.bench import training

    return training.run(work, config.training_windows, config.training_batch_size, config.training_archs,
                        config.training_step_batch, config.training_steps, config.training_rounds)


def run_bench(quick: bool = False, json_path: Path | None = None, data_dir: Path | None = None,
              cache: Path | None = None, parts: tuple[str, ...] = PARTS, engines: tuple[str, ...] | None = None,
              ensembles: tuple[int, ...] | None = None) -> dict:
    """Every part asked for, printed as measured; the whole record (written to `json_path`)."""
    from hms_offline.bench.kernel import ENSEMBLES
    from hms_offline.bench.models import default_cache
    from hms_offline.models.engines import ENGINE_NAMES

    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        raise ValueError(f"unknown bench parts {unknown}; choose from {', '.join(PARTS)}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir} is not a folder")
    if engines and not set(engines) <= set(ENGINE_NAMES):
        raise ValueError(f"unknown engines {sorted(set(engines) - set(ENGINE_NAMES))}; choose from {', '.join(ENGINE_NAMES)}")
    if ensembles and not set(ensembles) <= set(ENSEMBLES):
        raise ValueError(f"ensembles of K = {', '.join(map(str, ENSEMBLES))} models only, got {list(ensembles)}")
    config = settings(quick, engines, ensembles)
    cache = Path(cache) if cache is not None else default_cache()
    command = " ".join(["bench", *(["--quick"] if quick else []), *([f"--data-dir {data_dir}"] if data_dir else []),
                        *([f"--parts {','.join(parts)}"] if tuple(parts) != PARTS else []),
                        *([f"--engines {','.join(engines)}"] if engines else []),
                        *([f"--ensembles {','.join(map(str, ensembles))}"] if ensembles else [])])
    record = {"format_version": JSON_FORMAT, "command": command,
              "machine": machine(), "settings": asdict(config), "data_dir": str(data_dir) if data_dir else None,
              "parts": {}, "part_seconds": {}}
    print("\n".join(machine_lines(record["machine"])), flush=True)
    work = Path(tempfile.mkdtemp(prefix="hms_bench_"))
    try:
        for name in parts:
            started = time.perf_counter()
            for part in run_part(name, config, work, cache, data_dir):
                record["parts"][part.name] = part.to_json()
                print("\n".join(part.lines()), flush=True)
            record["part_seconds"][name] = round(time.perf_counter() - started, 1)
            if json_path is not None:  # after every part: a long run interrupted keeps what it measured
                write_record(record, Path(json_path))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if json_path is not None:
        print(f"wrote {json_path}")
    return record


def write_record(record: dict, path: Path) -> Path:
    from hms_offline.atomic import write_text_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomically(path, json.dumps(record, indent=2) + "\n")
