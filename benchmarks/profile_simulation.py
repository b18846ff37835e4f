#!/usr/bin/env python3
"""Where simulation time goes: one traced run per (model, mode, XLA), summed per op.

Runs `qffs_tf.simulate` (or the folded QANN, mode "qann") under the TensorFlow profiler and
reads the trace (the XSpace protobuf the profiler writes) directly: the time of every
TensorFlow op, grouped by layer and by op type, and of every XLA-compiled kernel (fusion,
convolution) that ran inside a compiled cluster. Op times are summed over threads, so they
can exceed the wall time when ops run in parallel.

    .venv/bin/python benchmarks/profile_simulation.py --models=small_cnn --modes=layerwise
"""

from __future__ import annotations

import collections
import functools
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from benchmarks.workloads import MODELS, benchmark_images, calibrated_qat, check_names  # noqa: E402
from qffs_tf import cli  # noqa: E402

MODES = ("qann", "layerwise", "stepwise")

flags.DEFINE_list("models", ["small_cnn"], f"Models: {', '.join(MODELS)}.")
flags.DEFINE_list("modes", ["qann", "layerwise", "stepwise"], f"Runs: {', '.join(MODES)}.")
flags.DEFINE_list("xla", ["off", "on"], "XLA settings: off, on.")
flags.DEFINE_integer("timesteps", 8, "Window length T.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Images per batch.", lower_bound=1)
flags.DEFINE_integer("activation_bits", 2, "Activation bits.", lower_bound=1, upper_bound=8)
flags.DEFINE_integer("top", 15, "Rows per table.", lower_bound=1)
flags.DEFINE_integer(
    "threads",
    0,
    "TensorFlow intra- and inter-op threads (0: TensorFlow's default). One thread gives stable "
    "per-op times on a machine shared with other work.",
    lower_bound=0,
)
FLAGS = flags.FLAGS

# Events of the TensorFlow runtime itself, not of an op or kernel.
_RUNTIME = (
    "ThreadpoolListener",
    "ExecutorState",
    "EagerExecute",
    "EagerLocalExecute",
    "ThunkExecutor",  # the parent of every kernel of an XLA cluster
    "SlinkyThreadPool",
)


def _trace(fn) -> tuple[float, float, list[tuple[str, str, float]]]:
    """(wall seconds, CPU seconds, [(thread kind, event name, ms)]) of one call of `fn`,
    traced."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from qffs_tf._keras import tf

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        tf.profiler.experimental.stop()
        path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            kind = "tf" if line.name.startswith("tf_Compute") else line.name.split("/")[0]
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if name.startswith(_RUNTIME) or event.duration_ps == 0:
                    continue
                events.append((kind, name, event.duration_ps / 1e9))
    return wall, cpu, events


def _summary(events, top: int) -> str:
    by_layer, by_type, by_kernel = (collections.Counter() for _ in range(3))
    for kind, name, ms in events:
        if kind == "tf" and ":" in name:  # a TensorFlow op: "scope/name:Type"
            scope, op_type = name.rsplit(":", 1)
            by_type[op_type] += ms
            by_layer[scope.split("/")[0] if "/" in scope else scope] += ms
        elif "Eigen" in kind and not name.startswith("end:"):  # an XLA kernel
            by_kernel[name.split(".")[0]] += ms
    lines = []
    for title, counter in (("op type", by_type), ("layer", by_layer), ("XLA kernel", by_kernel)):
        if not counter:
            continue
        lines.append(f"  by {title} (ms, summed over threads):")
        for key, ms in counter.most_common(top):
            lines.append(f"    {ms:9.2f}  {key}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    check_names(FLAGS.models)
    with cli.quiet_tensorflow():
        import qffs_tf
        from qffs_tf._keras import tf
        from qffs_tf.conversion import folded_qann

        if FLAGS.threads:
            tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
            tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)

    for name in FLAGS.models:
        x = benchmark_images(name, FLAGS.batch_size)
        qat = calibrated_qat(name, x, FLAGS.activation_bits)
        snn = qffs_tf.convert(qat, FLAGS.timesteps)
        qann = folded_qann(qat)
        images = tf.constant(x)
        for xla in FLAGS.xla:
            jit = xla == "on"
            for mode in FLAGS.modes:
                if mode == "qann":
                    function = tf.function(lambda v, m=qann: m(v, training=False), jit_compile=jit)
                    run = functools.partial(lambda f, v: f(v).numpy(), function, images)
                else:
                    run = functools.partial(
                        qffs_tf.simulate, snn, images, mode=mode, jit_compile=jit
                    )

                run()
                run()
                wall, cpu, events = _trace(run)
                print(
                    f"\n== {name} {mode} xla={xla} T={FLAGS.timesteps}: {1e3 * wall:.1f} ms wall, "
                    f"{1e3 * cpu:.1f} ms CPU"
                )
                print(_summary(events, FLAGS.top), flush=True)


if __name__ == "__main__":
    cli.run(main)
