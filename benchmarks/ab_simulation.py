#!/usr/bin/env python3
"""A/B: this checkout's simulation against an earlier commit's, interleaved in one process.

The earlier commit's `qffs_tf` is exported with `git archive` into a temporary folder and
renamed `qffs_base` (every `qffs_tf` in its sources replaced), so both versions load side by
side. Each timed round runs the folded QANN, then every SNN variant once, so that load from
other processes hits all of them alike; the minimum over rounds is reported (the run least
disturbed by other work), and every ratio R = SNN time / (T x QANN time) uses the QANN time
of the same process.

    .venv/bin/python benchmarks/ab_simulation.py --baseline=be320a4 --models=small_cnn
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import flags  # noqa: E402

from qffs_tf import cli  # noqa: E402

MODELS = {
    "small_cnn": ("small_cnn", (28, 28, 1), 10),
    "resnet18": ("resnet18", (32, 32, 3), 10),
    "mobilenet_v1": ("mobilenet_v1", (64, 64, 3), 100),
}
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
FLAGS = flags.FLAGS


def _export_baseline(revision: str, folder: str) -> None:
    """`git archive` the revision's qffs_tf into folder/qffs_base, renamed throughout."""
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", "--format=tar", revision, "qffs_tf"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    os.rename(os.path.join(folder, "qffs_tf"), os.path.join(folder, "qffs_base"))
    for directory, _, files in os.walk(os.path.join(folder, "qffs_base")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                with open(path) as f:
                    text = f.read()
                with open(path, "w") as f:
                    f.write(text.replace("qffs_tf", "qffs_base"))


def _variants(package, name: str, x, jit: bool) -> dict:
    """The QANN and the SNN runs of one package, as callables ending on the host."""
    from qffs_tf._keras import keras, tf

    zoo, shape, classes = MODELS[name]
    keras.utils.set_random_seed(0)
    model = package.models.build(zoo, input_shape=shape, num_classes=classes)
    qat = package.quantize_model(model, FLAGS.activation_bits, calibration_data=x)
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
    with cli.quiet_tensorflow():
        import numpy as np

        import qffs_tf
        from qffs_tf._keras import tf

        if FLAGS.threads:
            tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
            tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
        folder = tempfile.mkdtemp(prefix="qffs_ab_")
        _export_baseline(FLAGS.baseline, folder)
        sys.path.insert(0, folder)
        import qffs_base

        for package in (qffs_tf, qffs_base):
            for module in ("models", "conversion"):
                __import__(f"{package.__name__}.{module}")
    print(f"load average at start: {os.getloadavg()}")
    for name in FLAGS.models:
        x = (
            np.random.default_rng(0)
            .uniform(0, 1, (FLAGS.batch_size, *MODELS[name][1]))
            .astype(np.float32)
        )
        for xla in FLAGS.xla:
            jit = xla == "on"
            new = _variants(qffs_tf, name, x, jit)
            old = _variants(qffs_base, name, x, jit)
            runs = {"qann": new.pop("qann")}
            runs.update({f"before {k}": v for k, v in old.items() if k != "qann"})
            runs.update({f"after {k}": v for k, v in new.items()})
            for run in runs.values():  # compile, warm up
                run()
                run()
            best = dict.fromkeys(runs, float("inf"))
            for _ in range(FLAGS.rounds):
                for key, run in runs.items():
                    start = time.perf_counter()
                    run()
                    best[key] = min(best[key], time.perf_counter() - start)
            qann = best.pop("qann")
            parts = [f"{name} xla={xla} T={FLAGS.timesteps}: QANN {1e3 * qann:.1f} ms"]
            for key, seconds in best.items():
                parts.append(
                    f"{key} {1e3 * seconds:.0f} ms R={seconds / (FLAGS.timesteps * qann):.2f}"
                )
            print(" | ".join(parts), flush=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    cli.run(main)
