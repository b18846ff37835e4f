#!/usr/bin/env python3
"""`make bench`: every benchmark in one run, results under benchmarks/results/.

1. Simulation speed and memory (bench_simulation.py): QANN vs SNN layerwise/stepwise,
   T = 1..16, XLA off/on, for the quickstart CNN, ResNet-18 (32x32) and MobileNet-v1 (64x64)
   -> benchmarks/results/simulation.json, and the ratio table on stdout.
2. TFLite latency (bench_tflite.py): qann_float, snn_full (batch 1 and 64) and snn_step, of
   the quickstart run when `make quickstart` has made it, else of the quickstart architecture
   with calibrated, untrained weights (latency does not depend on the weights' values)
   -> benchmarks/results/tflite/latency.json (and .md).
3. The memory-traffic floor (traffic_bound.py): the least time a simulation of dense float32
   windows can take on this machine's memory bandwidth, as a ratio to T x the QANN's time
   -> benchmarks/results/traffic_bound.json.

The results folder is git-ignored: the numbers belong to the machine that measured them;
BUILD.md keeps the tables that were measured for a change, with how they were measured.
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
    tflite = ["benchmarks/bench_tflite.py", "--output=benchmarks/results/tflite/latency"]
    if os.path.exists(os.path.join(ROOT, "runs", "quickstart", "qat_model.keras")):
        tflite.append("--run_dir=runs/quickstart")
    status |= run(*tflite)
    status |= run("benchmarks/traffic_bound.py", "--output=benchmarks/results/traffic_bound.json")
    return status


if __name__ == "__main__":
    sys.exit(main())
