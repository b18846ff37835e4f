#!/usr/bin/env python3
"""`make bench`: every benchmark in one run, results under benchmarks/results/.

1. Simulation speed and memory (bench_simulation.py): QANN vs SNN layerwise/stepwise,
   T = 1..16, XLA off/on, for the quickstart CNN, ResNet-18 (32x32) and MobileNet-v1 (64x64).
2. TFLite latency (bin/benchmark_tflite) of the quickstart run's exported files, when
   `make quickstart` has produced them.
"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args: str) -> int:
    print("$", " ".join(args), flush=True)
    return subprocess.call([sys.executable, *args], cwd=ROOT)


def main() -> int:
    status = run("benchmarks/bench_simulation.py", "--output=benchmarks/results/simulation.json")
    quickstart = os.path.join(ROOT, "runs", "quickstart")
    if os.path.exists(os.path.join(quickstart, "tflite", "snn_full.tflite")):
        status |= run(
            "bin/benchmark_tflite",
            "--run_dir=runs/quickstart",
            "--num_threads=2",
            "--out=benchmarks/results/tflite",
        )
    else:
        print("skipping the TFLite benchmark: run `make quickstart` first to export the files")
    return status


if __name__ == "__main__":
    sys.exit(main())
