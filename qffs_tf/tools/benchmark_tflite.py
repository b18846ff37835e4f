"""Latency of a run's TFLite files with the LiteRT interpreter (XNNPACK, its default delegate).

Example:  bin/benchmark_tflite --run_dir=runs/quickstart --num_threads=2
          (also `qffs-benchmark-tflite ...` or `python -m qffs_tf.tools.benchmark_tflite ...`)
Measures, at batch 1, the QANN (float, int8: <run_dir>/tflite/qann_*.tflite from bin/export),
the SNN over a full window for T = 1..--max_timesteps (one file per T, written to
<run_dir>/tflite/bench/) and the streaming SNN per step (the mean over windows of
--max_timesteps steps). Writes benchmark.md and
benchmark.json (default into <run_dir>/tflite/).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import NoReturn

from absl import flags

from qffs_tf import cli

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("run_dir", "runs/default", "Run folder (bin/export has written tflite/).")
    flags.DEFINE_integer("num_threads", 1, "Interpreter threads.", lower_bound=1)
    flags.DEFINE_integer("warmup", 5, "Untimed invocations first.", lower_bound=0)
    flags.DEFINE_integer(
        "runs", 50, "Timed invocations per file (streaming: whole windows).", lower_bound=1
    )
    flags.DEFINE_integer("max_timesteps", 8, "Full-window SNN files for T = 1..N.", lower_bound=1)
    flags.DEFINE_string("out", None, "Output prefix (default <run_dir>/tflite/benchmark).")


def _stats(seconds: list[float]) -> dict[str, float]:
    import numpy as np

    ms = np.asarray(seconds) * 1e3
    p10, p25, p50, p75, p90 = np.percentile(ms, [10, 25, 50, 75, 90])
    return {"median_ms": p50, "p10_ms": p10, "p90_ms": p90, "iqr_ms": p75 - p25, "runs": len(ms)}


def _time_single(path: str, image) -> dict[str, float]:
    """Invoke a single-signature file at batch 1."""
    import numpy as np

    from qffs_tf.export import runtime as export_runtime

    runtime = export_runtime.interpreter(path, FLAGS.num_threads)
    detail = runtime.get_input_details()[0]
    runtime.resize_tensor_input(detail["index"], [1, *image.shape])
    runtime.allocate_tensors()
    detail = runtime.get_input_details()[0]
    if detail["dtype"] == np.float32:
        value = image[None].astype(np.float32)
    else:
        scale, zero_point = detail["quantization"]
        value = np.clip(np.round(image[None] / scale + zero_point), -128, 127).astype(np.int8)
    runtime.set_tensor(detail["index"], value)
    for _ in range(FLAGS.warmup):
        runtime.invoke()
    seconds = []
    for _ in range(FLAGS.runs):
        start = time.perf_counter()
        runtime.invoke()
        seconds.append(time.perf_counter() - start)
    return _stats(seconds)


def _time_steps(path: str, image, timesteps: int, image_every_step: bool) -> dict[str, float]:
    """Per-step latency of a snn_step file: whole windows of `timesteps` steps (`start`,
    then `advance` or an `advance_quiet*` signature; or `reset` then `step(image)` at every
    step), each divided by `timesteps`. The steps of a window differ in cost (step 0 runs the
    image's layers, later ones skip quiet layers), so the mean is what a device pays per
    step; the median of single steps would be the commoner kind of step."""
    from qffs_tf.export import runtime as export_runtime

    runner = export_runtime.StreamingRunner(
        export_runtime.interpreter(path, FLAGS.num_threads), image_every_step
    )
    value = image[None].astype("float32")
    seconds = []
    for i in range(FLAGS.warmup + FLAGS.runs):
        start = time.perf_counter()
        runner.window(value, timesteps)
        if i >= FLAGS.warmup:
            seconds.append((time.perf_counter() - start) / timesteps)
    return _stats(seconds)


def _benchmark(argv: list[str]) -> None:
    del argv
    run_dir = FLAGS.run_dir
    tflite_dir = os.path.join(run_dir, "tflite")
    missing = [
        kind
        for kind in ("qann_float", "qann_int8")
        if not os.path.exists(os.path.join(tflite_dir, f"{kind}.tflite"))
    ]
    if missing:
        raise cli.UsageError(
            f"No {', '.join(missing)} file in '{tflite_dir}' (--run_dir): run bin/export "
            f"--run_dir={run_dir} first."
        )
    with cli.quiet_tensorflow():
        import numpy as np

        import qffs_tf
        from qffs_tf.evaluation.reports import markdown_table
        from qffs_tf.export import export_tflite
        from qffs_tf.io_utils import atomic_write_text, write_json

    qat = cli.load_model(
        os.path.join(run_dir, "qat_model.keras"), "QAT model", "--run_dir", "run bin/train"
    )
    snn_path = os.path.join(run_dir, "snn.keras")
    if os.path.exists(snn_path):
        snn = cli.load_model(snn_path, "SNN", "--run_dir", "run bin/convert")
    else:
        snn = qffs_tf.convert(qat)
    shape = tuple(int(d) for d in qat.input_shape[1:])
    # Latency does not depend on pixel values (dense ops); a fixed random image is enough.
    image = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
    rows = []

    def add(name: str, path: str, stats: dict[str, float], **extra) -> None:
        rows.append({"model": name, "bytes": os.path.getsize(path), **extra, **stats})

    for kind in ("qann_float", "qann_int8"):
        path = os.path.join(tflite_dir, f"{kind}.tflite")
        add(kind, path, _time_single(path, image))
    bench_dir = os.path.join(tflite_dir, "bench")
    for t in range(1, FLAGS.max_timesteps + 1):
        path = os.path.join(bench_dir, f"snn_full_T{t}.tflite")
        export_tflite(snn, path, "snn_full", timesteps=t, batch_size=1)
        add(f"snn_full T={t}", path, _time_single(path, image), timesteps=t)
    path = os.path.join(bench_dir, "snn_step.tflite")
    # Its `advance_quiet*` signatures are chosen for the window timed below.
    export_tflite(snn, path, "snn_step", batch_size=1, timesteps=FLAGS.max_timesteps)
    for label, every_step in (("start/advance", False), ("reset/step", True)):
        stats = _time_steps(path, image, FLAGS.max_timesteps, every_step)
        add(f"snn_step {label} (per step)", path, stats)

    out = FLAGS.out or os.path.join(tflite_dir, "benchmark")
    setup = {"num_threads": FLAGS.num_threads, "warmup": FLAGS.warmup, "runs": FLAGS.runs}
    write_json(f"{out}.json", {"setup": setup, "results": rows})
    lines = [
        f"LiteRT interpreter (XNNPACK), batch 1, {FLAGS.num_threads} thread(s), "
        f"{FLAGS.warmup} warm-up + {FLAGS.runs} timed runs.",
        "",
        markdown_table(
            ["model", "size (KiB)", "median (ms)", "p10 (ms)", "p90 (ms)"],
            (
                [
                    row["model"],
                    f"{row['bytes'] / 1024:.1f}",
                    f"{row['median_ms']:.3f}",
                    f"{row['p10_ms']:.3f}",
                    f"{row['p90_ms']:.3f}",
                ]
                for row in rows
            ),
            "lrrrr",
        ),
    ]
    table = "\n".join(lines) + "\n"
    atomic_write_text(f"{out}.md", table)
    print(table + f"-> {out}.md, {out}.json")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the TFLite latency benchmark (``bin/benchmark_tflite``, ``qffs-benchmark-tflite``).

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments, without the program name (default: the command line).

    Raises
    ------
    SystemExit
        Always: 0 on success, 2 with a one-line ``benchmark_tflite: error: ...`` for a
        failure the user can fix, 1 for an internal error.

    Example
    -------
    >>> from qffs_tf.tools import benchmark_tflite
    >>> benchmark_tflite.main(["--run_dir=runs/quickstart"])  # doctest: +SKIP
    """
    command_line = None if argv is None else ["benchmark_tflite", *argv]
    cli.run(_benchmark, command_line, define_flags=_define_flags)


if __name__ == "__main__":
    main()
