#!/usr/bin/env python3
"""Simulation speed and memory: SNN time for T steps against T x the QANN forward time.

For each model: the folded QANN's forward time (`qffs_tf.conversion.folded_qann`); the SNN
through `qffs_tf.simulate` layerwise (the whole window at once, what evaluation runs) and
stepwise (streaming, one step at a time), with every statistic simulate records, for several
T; XLA on and off; peak memory of each run. Prints a table and writes JSON. Run by hand or
with `make bench`; numbers are machine dependent, so compare ratios measured on the same
machine in the same run.

    .venv/bin/python benchmarks/bench_simulation.py --models=small_cnn --timesteps=1,8
"""

from __future__ import annotations

import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from benchmarks.workloads import MODELS, benchmark_images, calibrated_qat, check_names  # noqa: E402
from qffs_tf import cli  # noqa: E402

flags.DEFINE_list("models", list(MODELS), f"Models to measure: {', '.join(MODELS)}.")
flags.DEFINE_list("timesteps", ["1", "2", "4", "8", "16"], "Window lengths T.")
flags.DEFINE_list("xla", ["off", "on"], "XLA settings to measure: off, on.")
MODES = ("layerwise", "stepwise", "predict")
flags.DEFINE_list(
    "modes",
    ["layerwise", "stepwise"],
    "SNN runs to time: layerwise and stepwise (qffs_tf.simulate, with its statistics), "
    "predict (the Keras model's own call, logits only).",
)
flags.DEFINE_integer("batch_size", 64, "Images per batch.", lower_bound=1)
flags.DEFINE_float("width", 1.0, "Width multiplier of the models.", lower_bound=1e-3)
flags.DEFINE_integer("activation_bits", 2, "Activation bits.", lower_bound=1, upper_bound=8)
flags.DEFINE_integer(
    "repeats", 5, "Timed runs per measurement (the median is reported).", lower_bound=1
)
flags.DEFINE_string("output", "benchmarks/results/simulation.json", "Where to write the JSON.")
FLAGS = flags.FLAGS


def _measure(fn, repeats: int) -> tuple[float, float]:
    """(median seconds, peak TensorFlow CPU memory above the start, MiB) after two warm-ups.

    Memory is what TensorFlow's CPU allocator hands out; XLA-compiled clusters keep some
    buffers of their own, so under XLA the figure is a lower bound.
    """
    from qffs_tf._keras import tf

    fn()
    fn()
    tf.config.experimental.reset_memory_stats("CPU:0")
    baseline = tf.config.experimental.get_memory_info("CPU:0")["current"]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    return times[len(times) // 2], max(0, peak - baseline) / 2**20


def _forward(model, images, jit: bool):
    """A Keras model's inference call on `images`, compiled once, ending on the host."""
    from qffs_tf._keras import tf

    function = tf.function(lambda x: model(x, training=False), jit_compile=jit)
    return lambda: function(images).numpy()


def main(argv: list[str]) -> None:
    del argv
    check_names(FLAGS.models)
    unknown = [mode for mode in FLAGS.modes if mode not in MODES]
    if unknown:
        raise cli.UsageError(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    with cli.quiet_tensorflow():
        import qffs_tf
        from qffs_tf import io_utils
        from qffs_tf._keras import tf
        from qffs_tf.conversion import folded_qann

    rows = []
    for name in FLAGS.models:
        x = benchmark_images(name, FLAGS.batch_size)
        qat = calibrated_qat(name, x, FLAGS.activation_bits, width=FLAGS.width)
        # Baseline: the inference-only QANN (BatchNorm folded, constant step sizes), the
        # fastest honest QANN; the tfmot QAT model's own forward time is reported beside it.
        folded = folded_qann(qat)
        images = tf.constant(x)
        for xla in FLAGS.xla:
            jit = xla == "on"
            qann_s, qann_mem = _measure(_forward(folded, images, jit), FLAGS.repeats)
            qat_s, _ = _measure(_forward(qat, images, jit), FLAGS.repeats)
            for steps in map(int, FLAGS.timesteps):
                snn = qffs_tf.convert(qat, steps)
                row = {
                    "model": name,
                    "xla": jit,
                    "timesteps": steps,
                    "batch": FLAGS.batch_size,
                    "qann_ms": 1e3 * qann_s,
                    "qann_peak_mib": qann_mem,
                    "qat_ms": 1e3 * qat_s,
                }
                for mode in FLAGS.modes:
                    if mode == "predict":
                        run = _forward(snn, images, jit)
                    else:
                        run = functools.partial(
                            qffs_tf.simulate, snn, images, mode=mode, jit_compile=jit
                        )
                    seconds, memory = _measure(run, FLAGS.repeats)
                    row.update(
                        {
                            f"{mode}_ms": 1e3 * seconds,
                            f"{mode}_peak_mib": memory,
                            f"{mode}_ratio": seconds / (steps * qann_s),
                        }
                    )
                rows.append(row)
                print(_format_row(row), flush=True)
    result = {
        "batch_size": FLAGS.batch_size,
        "width": FLAGS.width,
        "activation_bits": FLAGS.activation_bits,
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "rows": rows,
    }
    io_utils.write_json(FLAGS.output, result)
    print(f"\n{_table(rows)}\n\nJSON: {FLAGS.output}")


def _format_row(row: dict) -> str:
    parts = [
        f"{row['model']:<13} xla={'on ' if row['xla'] else 'off'} T={row['timesteps']:<3}",
        f"qann {row['qann_ms']:8.2f} ms",
    ]
    for mode in MODES:
        if f"{mode}_ms" in row:
            parts.append(
                f"{mode} {row[f'{mode}_ms']:9.2f} ms (x{row[f'{mode}_ratio']:.2f} "
                f"of T*QANN, +{row[f'{mode}_peak_mib']:.0f} MiB)"
            )
    return "  ".join(parts)


def _table(rows: list[dict]) -> str:
    from qffs_tf.evaluation.reports import markdown_table

    modes = [mode for mode in MODES if any(f"{mode}_ms" in row for row in rows)]
    header = ["model", "XLA", "T", "QANN ms"]
    for mode in modes:
        header += [f"{mode} ms", "ratio", "peak MiB"]
    table = []
    for row in rows:
        cells = [
            row["model"],
            "on" if row["xla"] else "off",
            str(row["timesteps"]),
            f"{row['qann_ms']:.2f}",
        ]
        for mode in modes:
            if f"{mode}_ms" in row:
                cells += [
                    f"{row[f'{mode}_ms']:.2f}",
                    f"{row[f'{mode}_ratio']:.2f}",
                    f"{row[f'{mode}_peak_mib']:.0f}",
                ]
            else:
                cells += ["-", "-", "-"]
        table.append(cells)
    return markdown_table(header, table, "ll" + "r" * (len(header) - 2))


if __name__ == "__main__":
    cli.run(main)
