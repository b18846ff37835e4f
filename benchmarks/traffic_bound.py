#!/usr/bin/env python3
"""A floor under the simulation's time: the memory traffic of its dense windows.

This engine materializes each neuron layer's window as a dense float32 (B, T, ...) tensor.
Its input currents are written by the layer before it (every step, zeros included) and read
by the neurons (up to the layer's quiet bound), and its spikes are written by the neurons:
up to three passes over B x T x N values. The first neurons read the static charge of the
image directly, so only their spikes are written. Computing `simulate`'s statistics adds one
more read of every spike. So, as long as windows are dense tensors in memory, the forward
pass cannot take less than that many bytes over the machine's memory bandwidth, before a
single multiply of a convolution. This script measures that bandwidth (one XLA pass
`a * x + b` over a tensor far larger than the caches, bytes read plus written per second),
times the folded QANN in the same interleaved rounds, and prints the floor as a ratio
R_min = floor / (T x QANN time), a lower bound of issue 13's ratio R, against the QANN
without and with XLA (the SNN's windows are dense either way).

    .venv/bin/python benchmarks/traffic_bound.py --models=small_cnn,resnet18,mobilenet_v1
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import flags  # noqa: E402

from benchmarks.workloads import MODELS, benchmark_images, calibrated_qat, check_names  # noqa: E402
from qffs_tf import cli  # noqa: E402

flags.DEFINE_list("models", list(MODELS), f"Models: {', '.join(MODELS)}.")
flags.DEFINE_integer("timesteps", 8, "Window length T.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Images per batch.", lower_bound=1)
flags.DEFINE_integer("activation_bits", 2, "Activation bits.", lower_bound=1, upper_bound=8)
flags.DEFINE_list("xla", ["off", "on"], "XLA settings of the QANN it is compared with: off, on.")
flags.DEFINE_integer("rounds", 7, "Timed rounds (the minimum is reported).", lower_bound=1)
flags.DEFINE_string("output", "benchmarks/results/traffic_bound.json", "Where to write the JSON.")
FLAGS = flags.FLAGS


def _interleaved_best_ms(runs: dict, rounds: int) -> dict:
    """Each callable's least time in ms over `rounds` rounds, each round calling every one
    once, so that load from other processes hits all of them alike."""
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            best[key] = min(best[key], time.perf_counter() - start)
    return {key: 1e3 * seconds for key, seconds in best.items()}


def main(argv: list[str]) -> None:
    del argv
    check_names(FLAGS.models)
    with cli.quiet_tensorflow():
        import numpy as np

        import qffs_tf
        from qffs_tf import io_utils
        from qffs_tf._keras import tf
        from qffs_tf.conversion import folded_qann
        from qffs_tf.evaluation.reports import markdown_table
        from qffs_tf.snn import SpikingNeurons, program_of

    # The bandwidth: one compiled elementwise pass over 256 MB, bytes read plus written.
    stream = tf.constant(np.ones(64 * 2**20, np.float32))
    scale = tf.function(lambda v: v * 2.0 + 1.0, jit_compile=True)
    runs = {"bandwidth": lambda: scale(stream).numpy()}
    neurons = {}
    for name in FLAGS.models:
        x = benchmark_images(name, FLAGS.batch_size)
        qat = calibrated_qat(name, x, FLAGS.activation_bits)
        snn = qffs_tf.convert(qat, FLAGS.timesteps)
        program = program_of(snn)
        # Per image, summed over neuron layers: neurons, those on the static input, and
        # neuron-windows moved by the forward pass (spikes written; unless the neurons read
        # the static charge directly, also currents written, and read up to the quiet bound).
        census = {"neurons": 0, "direct": 0, "forward_windows": 0.0}
        for layer, _ in program.graph:
            if not isinstance(layer, SpikingNeurons):
                continue
            size = int(np.prod(layer.neuron_shape))
            census["neurons"] += size
            if program.reads_static(layer.name):
                census["direct"] += size
                census["forward_windows"] += size
            else:
                read = min(FLAGS.timesteps, program.quiet_from.get(layer.name, FLAGS.timesteps))
                census["forward_windows"] += size * (2 + read / FLAGS.timesteps)
        neurons[name] = census
        qann, batch = folded_qann(qat), tf.constant(x)
        for xla in FLAGS.xla:
            forward = tf.function(lambda v, m=qann: m(v, training=False), jit_compile=xla == "on")
            runs[name, xla] = lambda f=forward, v=batch: f(v).numpy()
    best = _interleaved_best_ms(runs, FLAGS.rounds)
    bandwidth = 2 * 4 * stream.shape[0] / (best.pop("bandwidth") / 1e3)
    print(f"memory bandwidth (read + written): {bandwidth / 1e9:.1f} GB/s", flush=True)
    rows = []
    for (name, xla), qann_ms in best.items():
        census = neurons[name]
        bytes_per_neuron = 4 * FLAGS.batch_size * FLAGS.timesteps  # one float32 window
        window_bytes = bytes_per_neuron * census["neurons"]
        forward_ms = 1e3 * bytes_per_neuron * census["forward_windows"] / bandwidth
        simulation_ms = forward_ms + 1e3 * window_bytes / bandwidth  # statistics: one read
        budget_ms = FLAGS.timesteps * qann_ms
        rows.append(
            {
                "model": name,
                "xla": xla == "on",
                "neurons_per_image": census["neurons"],
                "neurons_on_the_static_input": census["direct"],
                "window_mb": window_bytes / 2**20,
                "qann_ms": qann_ms,
                "forward_floor_ms": forward_ms,
                "forward_r_min": forward_ms / budget_ms,
                "simulation_floor_ms": simulation_ms,
                "simulation_r_min": simulation_ms / budget_ms,
            }
        )
    print()
    print(
        markdown_table(
            [
                "model",
                "XLA",
                "neurons per image",
                "window MB",
                "QANN ms",
                "R_min forward",
                "R_min with statistics",
            ],
            [
                [
                    row["model"],
                    "on" if row["xla"] else "off",
                    str(row["neurons_per_image"]),
                    f"{row['window_mb']:.0f}",
                    f"{row['qann_ms']:.1f}",
                    f"{row['forward_r_min']:.2f}",
                    f"{row['simulation_r_min']:.2f}",
                ]
                for row in rows
            ],
            "llrrrrr",
        )
    )
    io_utils.write_json(
        FLAGS.output,
        {
            "batch_size": FLAGS.batch_size,
            "timesteps": FLAGS.timesteps,
            "activation_bits": FLAGS.activation_bits,
            "bandwidth_bytes_per_s": bandwidth,
            "rows": rows,
        },
    )
    print(f"JSON: {FLAGS.output}")


if __name__ == "__main__":
    cli.run(main)
