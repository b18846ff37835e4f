#!/usr/bin/env python3
"""TFLite (LiteRT + XNNPACK) latency of the QANN and both SNN programs, optionally A/B.

Exports, for one model, `qann_float` and `snn_full` (dynamic batch) and `snn_step` (batch 1)
with this checkout's `export_tflite` (and, with --baseline, with an earlier commit's too;
with --int8_weights, the SNN files also with int8 weights, an approximation),
then times them in interleaved rounds in one process: `qann_float` and `snn_full` per image
at each batch size, `snn_step` per step at batch 1 (whole T-step windows, divided by T).
The minimum over rounds of each block's median is reported, and every SNN time is also
given relative to `qann_float` of the same version and batch. The streaming file is timed
through `StreamingRunner` (Python: each call sets inputs and reads outputs) and as bare
invokes (what a device pays); `qann_float` as a bare invoke and with the Python I/O, so
that each way has its like to compare with. Second interpreters of two of the files, timed
the same way, give the run's noise floor. Writes JSON and a markdown table under
benchmarks/results/tflite/.

    .venv/bin/python benchmarks/bench_tflite.py --run_dir=runs/quickstart --baseline=be320a4
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import flags  # noqa: E402

from benchmarks.baseline import baseline_package  # noqa: E402
from qffs_tf import cli  # noqa: E402

flags.DEFINE_string(
    "run_dir",
    None,
    "Run folder with qat_model.keras (bin/train). Default: the quickstart architecture "
    "(small_cnn, 28x28x1) untrained with calibrated 2-bit steps; latency does not depend on "
    "the weights' values.",
)
flags.DEFINE_integer("timesteps", 8, "Window length T of snn_full.", lower_bound=1)
flags.DEFINE_list("batch_sizes", ["1", "64"], "Batch sizes for qann_float and snn_full.")
flags.DEFINE_integer("num_threads", 2, "Interpreter threads.", lower_bound=1)
flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds.", lower_bound=1)
flags.DEFINE_integer("invokes", 20, "Timed invocations per block (per round).", lower_bound=1)
flags.DEFINE_string("baseline", None, "Also export and time an earlier commit's files.")
flags.DEFINE_bool(
    "int8_weights", True, "Also time this checkout's SNN files with int8 weights (approximate)."
)
flags.DEFINE_string("output", "benchmarks/results/tflite/latency", "Output prefix (.json, .md).")
FLAGS = flags.FLAGS
IO_QANN = "qann_float, Python I/O"


def _qat_model(package):
    import numpy as np

    from qffs_tf._keras import keras

    if FLAGS.run_dir:
        return package.load_model(os.path.join(FLAGS.run_dir, "qat_model.keras"))
    keras.utils.set_random_seed(0)
    model = package.models.build("small_cnn", input_shape=(28, 28, 1), num_classes=10)
    x = np.random.default_rng(0).uniform(0, 1, (64, 28, 28, 1)).astype(np.float32)
    return package.quantize_model(model, 2, calibration_data=x)


def _export(package, folder: str, int8_weights: bool = False) -> dict[str, str]:
    qat = _qat_model(package)
    snn = package.convert(qat, FLAGS.timesteps)
    paths = {}
    for kind, model in (("qann_float", qat), ("snn_full", snn), ("snn_step", snn)):
        paths[kind] = os.path.join(folder, f"{kind}.tflite")
        options = {"timesteps": FLAGS.timesteps} if kind == "snn_full" else {}
        if int8_weights and kind != "qann_float":
            options["int8_weights"] = True
        package.export_tflite(model, paths[kind], kind, **options)
    return paths


class _Single:
    """One single-signature file at one batch size: invoke() runs it once; with `io`, it
    also sets the input and reads the output, as a Python caller does (`runtime.predict`)."""

    def __init__(self, path: str, batch: int, image, io: bool = False):
        import numpy as np

        from qffs_tf.export import runtime

        self.runtime = runtime.interpreter(path, FLAGS.num_threads)
        detail = self.runtime.get_input_details()[0]
        self.runtime.resize_tensor_input(detail["index"], [batch, *image.shape])
        self.runtime.allocate_tensors()
        self.batch = np.repeat(image[None], batch, axis=0)
        self.runtime.set_tensor(detail["index"], self.batch)
        self.input, self.output = detail["index"], self.runtime.get_output_details()[0]["index"]
        self.io = io
        self.per = batch

    def invoke(self):
        if self.io:
            self.runtime.set_tensor(self.input, self.batch)
        self.runtime.invoke()
        if self.io:
            self.runtime.get_tensor(self.output)


class _BareSignatures:
    """A LiteRT interpreter whose signature runners, after a first real call, only invoke
    their subgraph: no input set, no output read, as a C++ program that keeps its buffers
    does. `StreamingRunner` takes it for an interpreter, so the bare way steps the window
    exactly as the Python way. LiteRT's Python API has no public invoke of one signature
    without I/O, hence its internals here (benchmark only)."""

    def __init__(self, runtime):
        self.runtime = runtime

    def get_signature_list(self):
        return self.runtime.get_signature_list()

    def get_signature_runner(self, name: str):
        runner = self.runtime.get_signature_runner(name)
        if name == "step":  # the runner only reads its input details
            return runner
        wrapper, subgraph = runner._interpreter_wrapper, runner._subgraph_index
        outputs = {}

        def bare(**inputs):
            if not outputs:
                outputs.update(runner(**inputs))  # allocates; start's quiet_from is constant
            else:
                wrapper.Invoke(subgraph)
            return dict(outputs)

        return bare


class _Stream:
    """A snn_step file: invoke() runs one whole T-step window (`StreamingRunner`: `start`
    then `advance` (and `advance_quiet` where the file has it, unless `skip_quiet` is
    False), or with `image_every_step` `reset` then `step(image)`); `per` = T, so the time
    reported is the mean over a window's steps, what a device pays per step. (Timing single
    steps and taking their median, as this script did before, reports whichever kind of
    step is the more common in the block, not the mean.)"""

    def __init__(
        self,
        path: str,
        image,
        image_every_step: bool,
        skip_quiet: bool = True,
        bare: bool = False,
    ):
        from qffs_tf.export import runtime

        interpreter = runtime.interpreter(path, FLAGS.num_threads)
        if bare:
            interpreter = _BareSignatures(interpreter)
        self.runner = runtime.StreamingRunner(interpreter, image_every_step, skip_quiet)
        self.image = image[None].astype("float32")
        self.per = FLAGS.timesteps

    def invoke(self):
        self.runner.window(self.image, FLAGS.timesteps)


def main(argv: list[str]) -> None:
    del argv
    with cli.quiet_tensorflow():
        import numpy as np

        import qffs_tf
        from qffs_tf import io_utils
        from qffs_tf.evaluation.reports import markdown_table

        folder = tempfile.mkdtemp(prefix="qffs_tflite_")
        versions = {"after": _export(qffs_tf, os.path.join(folder, "after"))}
        if FLAGS.int8_weights:
            versions["after, int8 weights"] = _export(
                qffs_tf, os.path.join(folder, "int8_weights"), int8_weights=True
            )
        if FLAGS.baseline:
            base = baseline_package(FLAGS.baseline)
            versions["before"] = _export(base, os.path.join(folder, "before"))
    shape = _qat_model(qffs_tf).input_shape[1:]
    image = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
    runners = {}
    for version, paths in versions.items():
        for batch in map(int, FLAGS.batch_sizes):
            for kind in ("qann_float", "snn_full"):
                runners[(version, kind, batch)] = _Single(paths[kind], batch, image)
        # The Python way pays for inputs, outputs and the runner on every call, on either
        # side: the QANN is timed both ways, the streaming SNN too (bare: what a device pays).
        runners[(version, IO_QANN, 1)] = _Single(paths["qann_float"], 1, image, io=True)
        stream = _Stream(paths["snn_step"], image, image_every_step=False)
        # Files from before `start` / `advance` have only the masked way.
        if not stream.runner.masked:
            runners[(version, "snn_step start/advance", 1)] = stream
            runners[(version, "snn_step start/advance, bare invokes", 1)] = _Stream(
                paths["snn_step"], image, image_every_step=False, bare=True
            )
        if stream.runner.skips_quiet:  # the same file without `advance_quiet`, to compare
            runners[(version, "snn_step start/advance, no advance_quiet", 1)] = _Stream(
                paths["snn_step"], image, image_every_step=False, skip_quiet=False
            )
        runners[(version, "snn_step reset/step", 1)] = _Stream(
            paths["snn_step"], image, image_every_step=True
        )
    # The noise floor: second interpreters of two of this checkout's files, timed like the
    # rest. Two interpreters of one file have differed by up to 30 % here.
    twins = {
        "qann_float": _Single(versions["after"]["qann_float"], 1, image),
        "snn_step start/advance": _Stream(versions["after"]["snn_step"], image, False),
    }
    for kind, runner in twins.items():
        runners[("after", f"{kind} (second interpreter)", 1)] = runner
    for runner in runners.values():  # warm up (XNNPACK packs weights on first use)
        for _ in range(3):
            runner.invoke()
    best = dict.fromkeys(runners, float("inf"))
    order = list(runners)
    for round_ in range(FLAGS.rounds):
        # Alternate the order so that no file always runs right after another one.
        for key in order if round_ % 2 == 0 else order[::-1]:
            runner = runners[key]
            seconds = []
            for _ in range(FLAGS.invokes):
                start = time.perf_counter()
                runner.invoke()
                seconds.append(time.perf_counter() - start)
            best[key] = min(best[key], float(np.median(seconds)) / runner.per)
    rows = []
    for (version, kind, batch), seconds in best.items():
        qann = best[(version, "qann_float", batch)]
        with_io = best.get((version, IO_QANN, batch))
        rows.append(
            {
                "version": version,
                "model": kind,
                "batch": batch,
                "ms_per_image": 1e3 * seconds,
                "relative_to_qann_float": seconds / qann,
                "relative_to_qann_float_with_io": None if with_io is None else seconds / with_io,
                "timesteps": FLAGS.timesteps if kind == "snn_full" else None,
            }
        )
    setup = {
        "num_threads": FLAGS.num_threads,
        "rounds": FLAGS.rounds,
        "invokes": FLAGS.invokes,
        "timesteps": FLAGS.timesteps,
        "run_dir": FLAGS.run_dir,
        "baseline": FLAGS.baseline,
        "load_average": os.getloadavg(),
    }
    io_utils.write_json(f"{FLAGS.output}.json", {"setup": setup, "results": rows})
    lines = [
        f"LiteRT + XNNPACK, {FLAGS.num_threads} thread(s); per image (snn_step: per step); "
        f"minimum over {FLAGS.rounds} interleaved rounds of the median of {FLAGS.invokes} "
        f"invocations; snn_full runs T = {FLAGS.timesteps}.",
        "",
        markdown_table(
            ["version", "file", "batch", "ms per image", "x qann_float", f"x {IO_QANN}"],
            (
                [
                    row["version"],
                    row["model"],
                    row["batch"],
                    f"{row['ms_per_image']:.4f}",
                    f"{row['relative_to_qann_float']:.2f}",
                    "-"
                    if row["relative_to_qann_float_with_io"] is None
                    else f"{row['relative_to_qann_float_with_io']:.2f}",
                ]
                for row in rows
            ),
            "llrrrr",
        ),
    ]
    spreads = [
        abs(best[("after", f"{kind} (second interpreter)", 1)] / best[("after", kind, 1)] - 1)
        for kind in twins
    ]
    lines += [
        "",
        f"Two interpreters of one file differed by {100 * spreads[0]:.0f} % (qann_float) and "
        f"{100 * spreads[1]:.0f} % (snn_step) in this run: smaller differences are noise.",
    ]
    table = "\n".join(lines) + "\n"
    io_utils.atomic_write_text(f"{FLAGS.output}.md", table)
    print(table + f"-> {FLAGS.output}.md, {FLAGS.output}.json")


if __name__ == "__main__":
    cli.run(main)
