#!/usr/bin/env python3
"""Simulation speed and memory: SNN time for T steps against T x the QANN forward time.

For each model: QANN forward time; SNN layerwise (what snn.predict runs) and stepwise
(streaming, one step at a time) for several T; XLA on and off; peak memory of each run.
Prints a table and writes JSON. Run by hand or with `make bench`; numbers are machine
dependent, so compare ratios measured on the same machine in the same run.

    .venv/bin/python benchmarks/bench_simulation.py --models=small_cnn --timesteps=1,8
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from qffs_tf import cli  # noqa: E402

MODELS = {
    # name: (zoo name, input shape, classes)
    "small_cnn": ("small_cnn", (28, 28, 1), 10),
    "resnet18": ("resnet18", (32, 32, 3), 10),
    "mobilenet_v1": ("mobilenet_v1", (64, 64, 3), 100),
}

flags.DEFINE_list("models", list(MODELS), f"Models to measure: {', '.join(MODELS)}.")
flags.DEFINE_list("timesteps", ["1", "2", "4", "8", "16"], "Window lengths T.")
flags.DEFINE_list("xla", ["off", "on"], "XLA settings to measure: off, on.")
flags.DEFINE_list("modes", ["layerwise", "stepwise"], "SNN modes: layerwise, stepwise.")
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


def main(argv: list[str]) -> None:
    del argv
    unknown = [name for name in FLAGS.models if name not in MODELS]
    if unknown:
        raise cli.UsageError(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    with cli.quiet_tensorflow():
        import numpy as np

        import qffs_tf
        from qffs_tf import export, io_utils, models
        from qffs_tf._keras import keras, tf
        from qffs_tf.simulation import _program

    rows = []
    for name in FLAGS.models:
        zoo, shape, classes = MODELS[name]
        keras.utils.set_random_seed(0)
        model = models.build(zoo, input_shape=shape, num_classes=classes, width=FLAGS.width)
        x = np.random.default_rng(0).uniform(0, 1, (FLAGS.batch_size, *shape)).astype(np.float32)
        qat = qffs_tf.quantize_model(model, FLAGS.activation_bits, calibration_data=x)
        for xla in FLAGS.xla:
            jit = xla == "on"
            # Baseline: the inference-only QANN (BatchNorm folded, constant step sizes), the
            # fastest honest QANN; the tfmot QAT model's own forward time is reported beside it.
            folded, _ = export._qann_function(qat, export._quantizer_float)
            qann = tf.function(lambda images, f=folded: f(images)["logits"], jit_compile=jit)
            qann_s, qann_mem = _measure(lambda f=qann, x=x: f(x).numpy(), FLAGS.repeats)
            qat_fn = tf.function(lambda images, m=qat: m(images, training=False), jit_compile=jit)
            qat_s, _ = _measure(lambda f=qat_fn, x=x: f(x).numpy(), FLAGS.repeats)
            for steps in map(int, FLAGS.timesteps):
                snn = qffs_tf.convert(qat, steps)
                row = {
                    "model": name,
                    "xla": jit,
                    "timesteps": steps,
                    "batch": FLAGS.batch_size,
                    "qann_ms": 1e3 * qann_s,
                    "qann_peak_mib": qann_mem,
                }
                if "layerwise" in FLAGS.modes:
                    forward = tf.function(lambda images, m=snn: m(images), jit_compile=jit)
                    seconds, memory = _measure(lambda f=forward, x=x: f(x).numpy(), FLAGS.repeats)
                    row.update(
                        layerwise_ms=1e3 * seconds,
                        layerwise_peak_mib=memory,
                        layerwise_ratio=seconds / (steps * qann_s),
                    )
                if "stepwise" in FLAGS.modes:
                    program = _program(snn, steps, jit)
                    images = tf.constant(x)

                    def stepwise(p=program, n=steps, images=images):
                        states = p.initial_states(FLAGS.batch_size)
                        out, states = p.first_step(images, states)
                        for _ in range(n - 1):
                            out, states = p.next_step(images, states)
                        return out["logits"].numpy()

                    seconds, memory = _measure(stepwise, FLAGS.repeats)
                    row.update(
                        stepwise_ms=1e3 * seconds,
                        stepwise_peak_mib=memory,
                        stepwise_ratio=seconds / (steps * qann_s),
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
    for mode in ("layerwise", "stepwise"):
        if f"{mode}_ms" in row:
            parts.append(
                f"{mode} {row[f'{mode}_ms']:9.2f} ms (x{row[f'{mode}_ratio']:.2f} "
                f"of T*QANN, +{row[f'{mode}_peak_mib']:.0f} MiB)"
            )
    return "  ".join(parts)


def _table(rows: list[dict]) -> str:
    lines = [
        "| model | XLA | T | QANN ms | layerwise ms | ratio | peak MiB | stepwise ms | "
        "ratio | peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [
            row["model"],
            "on" if row["xla"] else "off",
            str(row["timesteps"]),
            f"{row['qann_ms']:.2f}",
        ]
        for mode in ("layerwise", "stepwise"):
            if f"{mode}_ms" in row:
                cells += [
                    f"{row[f'{mode}_ms']:.2f}",
                    f"{row[f'{mode}_ratio']:.2f}",
                    f"{row[f'{mode}_peak_mib']:.0f}",
                ]
            else:
                cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    cli.run(main)
