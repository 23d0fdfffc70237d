"""How the bench measures and reports: routes timed in interleaved rounds (so machine noise
hits every side alike), figures and the ratios made of them, the machine, the printed report."""

from __future__ import annotations

import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

# What the report names the version of -> the distributions that may provide it (the first
# installed counts; absent: None).
VERSIONED = {"numpy": ("numpy",), "pandas": ("pandas",), "pyarrow": ("pyarrow",),
             "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly"), "keras": ("keras",),
             "keras-cv": ("keras-cv",), "ai-edge-litert": ("ai-edge-litert",)}

Route = Callable[[Path], object]  # run once in a fresh scratch folder; its wall time is measured


def interleaved(routes: dict[str, Route], rounds: int) -> dict[str, list[float]]:
    """Seconds of each route in each round. Every round runs every route once, in an order
    rotated by one per round (no route always runs first, on a cold cache or after another's
    garbage); each run gets a fresh scratch folder, made and removed outside its timing."""
    seconds = {name: [] for name in routes}
    names = list(routes)
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            scratch = Path(tempfile.mkdtemp(prefix=f"hms_bench_{name}_"))
            try:
                started = time.perf_counter()
                routes[name](scratch)
                seconds[name].append(time.perf_counter() - started)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    return seconds


def interleaved_items(routes: dict[str, Callable[[object, Path], object]], items: list,
                      rounds: int) -> dict[str, list[float]]:
    """Seconds of each route over all `items` in each round, the routes interleaved per item
    (the order rotated per item): for routes of milliseconds, noise of seconds (other jobs
    starting, stopping) then hits every route alike. Each route gets one scratch folder per
    round, made and removed outside its timing."""
    seconds = {name: [] for name in routes}
    names = list(routes)
    for index in range(rounds):
        scratch = {name: Path(tempfile.mkdtemp(prefix=f"hms_bench_{name}_")) for name in names}
        totals = dict.fromkeys(names, 0.0)
        try:
            for position, item in enumerate(items):
                shift = (index + position) % len(names)
                for name in names[shift:] + names[:shift]:
                    started = time.perf_counter()
                    routes[name](item, scratch[name])
                    totals[name] += time.perf_counter() - started
        finally:
            for folder in scratch.values():
                shutil.rmtree(folder, ignore_errors=True)
        for name in names:
            seconds[name].append(totals[name])
    return seconds


def best(seconds: list[float]) -> float:
    """The figure of a route: its fastest round (noise only ever adds time)."""
    return min(seconds)


@dataclass
class Part:
    """One part's figures (name -> value, with units), the ratios made of them, the targets
    some ratios are held to, and what was measured (files, sizes, settings)."""

    name: str
    title: str
    figures: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    ratios: dict[str, dict] = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    rounds: dict[str, list[float]] = field(default_factory=dict)

    def figure(self, name: str, value: float, unit: str) -> float:
        self.figures[name], self.units[name] = float(value), unit
        return float(value)

    def ratio(self, name: str, numerator: str, denominator: str, target: tuple[str, float] | None = None) -> float:
        """figures[numerator] / figures[denominator]; `target` ("at_least" | "at_most", bound)."""
        value = self.figures[numerator] / self.figures[denominator]
        entry = {"numerator": numerator, "denominator": denominator, "value": value}
        if target is not None:
            bound, limit = target
            entry.update(target={bound: limit}, met=bool(value >= limit if bound == "at_least" else value <= limit))
        self.ratios[name] = entry
        return value

    def to_json(self) -> dict:
        return {"title": self.title, "figures": self.figures, "units": self.units, "ratios": self.ratios,
                "data": self.data, "rounds_seconds": self.rounds}

    def lines(self) -> list[str]:
        lines = [f"== {self.title}"]
        width = max(map(len, self.figures), default=0)
        lines += [f"  {name:<{width}}  {value:12.3f} {self.units[name]}" for name, value in self.figures.items()]
        for name, entry in self.ratios.items():
            target = ""
            if "target" in entry:
                (bound, limit), = entry["target"].items()
                target = f"   target {'>=' if bound == 'at_least' else '<='} {limit:g}: {'met' if entry['met'] else 'NOT met'}"
            lines.append(f"  {name}: {entry['value']:.2f}x  ({entry['numerator']} / {entry['denominator']}){target}")
        return lines


def finite_positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Cores, CPU model, Python and the versions of what the figures depend on (without importing them)."""
    versions = {name: next(filter(None, map(_version, distributions)), None)
                for name, distributions in VERSIONED.items()}
    tflite = (f"ai-edge-litert {versions['ai-edge-litert']}" if versions["ai-edge-litert"]
              else f"tf.lite of tensorflow {versions['tensorflow']}")
    return {"cores": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions, "tflite": tflite}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_lines(info: dict) -> list[str]:
    versions = ", ".join(f"{name} {version}" for name, version in info["versions"].items() if version)
    return [f"machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}", f"  {versions}",
            f"  tflite: {info['tflite']}"]
