#!/usr/bin/env python3
"""A/B: this checkout's simulation against an earlier commit's, interleaved in one process.

The earlier commit's `qffs_tf` is exported with `git archive` into a temporary folder and
renamed `qffs_base` (every `qffs_tf` in its sources replaced), so both versions load side by
side. Each timed round runs both versions' folded QANN and every SNN variant once, so that load
from other processes hits all of them alike; the minimum over rounds is reported (the run
least disturbed by other work), and each version's ratio R = SNN time / (T x QANN time)
uses its own QANN, timed in the same rounds.

    .venv/bin/python benchmarks/ab_simulation.py --baseline=be320a4 --models=small_cnn
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import flags  # noqa: E402

from benchmarks.baseline import baseline_package  # noqa: E402
from benchmarks.workloads import MODELS, benchmark_images, calibrated_qat, check_names  # noqa: E402
from qffs_tf import cli  # noqa: E402

MODES = ("predict", "layerwise", "stepwise")

flags.DEFINE_string("baseline", "HEAD", "Commit (or any git revision) to compare against.")
flags.DEFINE_list("models", list(MODELS), f"Models: {', '.join(MODELS)}.")
flags.DEFINE_list("modes", list(MODES), f"Runs: {', '.join(MODES)}.")
flags.DEFINE_list("xla", ["off", "on"], "XLA settings: off, on.")
flags.DEFINE_integer("timesteps", 8, "Window length T.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Images per batch.", lower_bound=1)
flags.DEFINE_integer("activation_bits", 2, "Activation bits.", lower_bound=1, upper_bound=8)
flags.DEFINE_integer("rounds", 5, "Timed rounds (the minimum is reported).", lower_bound=1)
flags.DEFINE_integer("threads", 0, "TensorFlow intra/inter-op threads (0: default).")
flags.DEFINE_string("output", "benchmarks/results/ab_simulation.json", "Where to write the JSON.")
FLAGS = flags.FLAGS


def _variants(package, name: str, x, jit: bool) -> dict:
    """The QANN and the SNN runs of one package, as callables ending on the host."""
    from qffs_tf._keras import tf

    qat = calibrated_qat(name, x, FLAGS.activation_bits, package)
    snn = package.convert(qat, FLAGS.timesteps)
    images = tf.constant(x)
    runs = {}
    if hasattr(package.conversion, "folded_qann"):
        qann = package.conversion.folded_qann(qat)
        function = tf.function(lambda v: qann(v, training=False), jit_compile=jit)
        runs["qann"] = lambda: function(images).numpy()
    for mode in FLAGS.modes:
        if mode == "predict":
            forward = tf.function(lambda v: snn(v), jit_compile=jit)
            runs[mode] = lambda f=forward: f(images).numpy()
        else:
            runs[mode] = lambda m=mode: (
                package.simulate(snn, images, mode=m, jit_compile=jit).logits
            )
    return runs


def main(argv: list[str]) -> None:
    del argv
    check_names(FLAGS.models)
    with cli.quiet_tensorflow():
        import qffs_tf
        from qffs_tf import io_utils
        from qffs_tf._keras import tf

        if FLAGS.threads:
            tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
            tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
        qffs_base = baseline_package(FLAGS.baseline)
        for module in ("models", "conversion"):
            __import__(f"qffs_tf.{module}")
    started = os.getloadavg()
    rows = []
    for name in FLAGS.models:
        x = benchmark_images(name, FLAGS.batch_size)
        for xla in FLAGS.xla:
            jit = xla == "on"
            runs = {f"before {k}": v for k, v in _variants(qffs_base, name, x, jit).items()}
            runs.update({f"after {k}": v for k, v in _variants(qffs_tf, name, x, jit).items()})
            for run in runs.values():  # compile, warm up
                run()
                run()
            best = dict.fromkeys(runs, float("inf"))
            for _ in range(FLAGS.rounds):
                for key, run in runs.items():
                    start = time.perf_counter()
                    run()
                    best[key] = min(best[key], time.perf_counter() - start)
            row = {"model": name, "xla": jit, "timesteps": FLAGS.timesteps}
            for version in ("before", "after"):
                qann = best[f"{version} qann"]
                row[f"{version}_qann_ms"] = 1e3 * qann
                for mode in FLAGS.modes:
                    seconds = best[f"{version} {mode}"]
                    row[f"{version}_{mode}_ms"] = 1e3 * seconds
                    row[f"{version}_{mode}_ratio"] = seconds / (FLAGS.timesteps * qann)
            rows.append(row)
            print(_format(row), flush=True)
    result = {
        "baseline": FLAGS.baseline,
        "batch_size": FLAGS.batch_size,
        "activation_bits": FLAGS.activation_bits,
        "threads": FLAGS.threads or "default",
        "load_average_start": started,
        "load_average_end": os.getloadavg(),
        "rows": rows,
    }
    io_utils.write_json(FLAGS.output, result)
    print(f"\n{_table(rows)}\n\nload average {started} -> {os.getloadavg()}; JSON: {FLAGS.output}")


def _format(row: dict) -> str:
    parts = [f"{row['model']} xla={'on' if row['xla'] else 'off'} T={row['timesteps']}"]
    for version in ("before", "after"):
        parts.append(f"{version}: QANN {row[f'{version}_qann_ms']:.1f} ms")
        for mode in FLAGS.modes:
            parts.append(f"{mode} R={row[f'{version}_{mode}_ratio']:.2f}")
    return " | ".join(parts)


def _table(rows: list[dict]) -> str:
    from qffs_tf.evaluation.reports import markdown_table

    modes = FLAGS.modes
    header = ["model", "XLA", "QANN ms before / after"]
    header += [f"{mode} R before / after" for mode in modes]
    cells = (
        [
            row["model"],
            "on" if row["xla"] else "off",
            f"{row['before_qann_ms']:.1f} / {row['after_qann_ms']:.1f}",
            *(f"{row[f'before_{m}_ratio']:.2f} / **{row[f'after_{m}_ratio']:.2f}**" for m in modes),
        ]
        for row in rows
    )
    return markdown_table(header, cells, "ll" + "r" * (len(header) - 2))


if __name__ == "__main__":
    cli.run(main)
