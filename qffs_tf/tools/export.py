"""Export a run's QANN and SNN to TFLite (LiteRT) and check each file against Keras.

Example:  bin/export --run_dir=runs/quickstart
          (also `qffs-export ...` or `python -m qffs_tf.tools.export ...`)
Reads <run_dir>/qat_model.keras and <run_dir>/snn.keras (converted here with --timesteps if
absent); writes <run_dir>/tflite/{qann_float,qann_int8,snn_full,snn_step}.tflite; runs each
file with the LiteRT interpreter on --parity_samples test images; merges `tflite_parity` and
`tflite_files` into <run_dir>/report.json and prints a table. Exits with status 1 when a
parity check fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import NoReturn

from absl import flags

from qffs_tf import cli

KINDS = ("qann_float", "qann_int8", "snn_full", "snn_step")
FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string(
        "run_dir", "runs/default", "Run folder with qat_model.keras (and snn.keras)."
    )
    flags.DEFINE_string(
        "dataset", None, "Data set of the test/calibration images (default: the run's report.json)."
    )
    flags.DEFINE_string(
        "data_dir", None, "Folder of prepared TensorFlow Datasets (not for mnist5k)."
    )
    flags.DEFINE_integer(
        "timesteps", 8, "SNN time steps when snn.keras is absent (converted here).", lower_bound=1
    )
    flags.DEFINE_integer(
        "parity_samples", 256, "Test images for the parity checks (0 = skip checks).",
        lower_bound=0,
    )  # fmt: skip
    flags.DEFINE_integer(
        "calibration_samples", 256, "Training images for int8 calibration.", lower_bound=1
    )
    flags.DEFINE_list("kinds", list(KINDS), f"Kinds to export, a subset of {','.join(KINDS)}.")
    flags.DEFINE_bool("int8_io", True, "qann_int8: int8 input/output tensors (else float32 I/O).")
    flags.DEFINE_bool(
        "snn_int8_weights",
        False,
        "snn_full, snn_step: int8 weights (dynamic-range quantization), faster on XNNPACK but "
        "an approximation of the SNN; parity then reports accuracy, not exactness.",
    )
    flags.DEFINE_integer(
        "step_batch_size", 1, "Fixed batch size of the streaming snn_step model.", lower_bound=1
    )


def _dataset(run_dir: str) -> str:
    from qffs_tf.run_folder import RunFolder

    return RunFolder(run_dir).dataset(FLAGS.dataset)


def _export(argv: list[str]) -> int | None:
    del argv
    from qffs_tf.run_folder import RunFolder

    if not os.path.isdir(FLAGS.run_dir):
        return _export_locked()
    with RunFolder(FLAGS.run_dir).lock("bin/export"):
        return _export_locked()


def _export_locked() -> int | None:
    unknown = [kind for kind in FLAGS.kinds if kind not in KINDS]
    if unknown or not FLAGS.kinds:
        raise cli.UsageError(f"--kinds={','.join(FLAGS.kinds)}: choose from {','.join(KINDS)}.")
    kinds = tuple(kind for kind in KINDS if kind in FLAGS.kinds)
    run_dir = FLAGS.run_dir
    started = time.perf_counter()
    with cli.quiet_tensorflow():
        import qffs_tf
        from qffs_tf import data
        from qffs_tf.export import parity as export_parity
        from qffs_tf.io_utils import update_json

    qat = cli.load_model(
        os.path.join(run_dir, "qat_model.keras"),
        "QAT model",
        "--run_dir",
        f"train one first (bin/train --run_dir={run_dir})",
    )
    snn_path = os.path.join(run_dir, "snn.keras")
    if os.path.exists(snn_path):
        snn = cli.load_model(snn_path, "SNN", "--run_dir", "run bin/convert")
        snn_source = "snn.keras"
    else:
        snn = qffs_tf.convert(qat, timesteps=FLAGS.timesteps)
        snn_source = f"converted here (timesteps={FLAGS.timesteps})"
    dataset = _dataset(run_dir)
    train_images, _ = data.numpy_split(
        dataset, "train", data_dir=FLAGS.data_dir, limit=FLAGS.calibration_samples
    )
    out_dir = os.path.join(run_dir, "tflite")
    files = export_parity.export_all(
        qat,
        snn,
        out_dir,
        train_images,
        kinds=kinds,
        step_batch_size=FLAGS.step_batch_size,
        int8_io=FLAGS.int8_io,
        snn_int8_weights=FLAGS.snn_int8_weights,
    )
    export_seconds = time.perf_counter() - started
    parity = {}
    if FLAGS.parity_samples > 0:
        images, labels = data.numpy_split(
            dataset, "test", data_dir=FLAGS.data_dir, limit=FLAGS.parity_samples
        )
        parity = export_parity.check_parity(files, qat, snn, images, labels)
    total = time.perf_counter() - started
    update_json(
        os.path.join(run_dir, "report.json"),
        {
            "tflite_parity": parity,
            "tflite_files": {
                kind: {
                    "path": os.path.relpath(result.path, run_dir),
                    "bytes": result.bytes,
                    "batch_size": result.batch_size,
                    "timesteps": result.timesteps,
                    "signatures": result.signatures,
                    "operators": result.operators,
                    "weights": result.weights,
                }
                for kind, result in files.items()
            },
            "tflite_seconds": {"export": export_seconds, "total": total},
        },
    )
    print(f"SNN: {snn_source}; dataset {dataset}; {FLAGS.parity_samples} parity samples")
    print(export_parity.format_table(files, parity))
    failed = [kind for kind, p in parity.items() if p.get("passed") is False]
    print(f"export {export_seconds:.1f} s, total {total:.1f} s -> {out_dir}/")
    if failed:
        print(f"parity outside tolerance for: {', '.join(failed)}")
        return 1
    return None


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the export tool (``bin/export``, ``qffs-export``).

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments, without the program name (default: the command line).

    Raises
    ------
    SystemExit
        Always: 0 on success, 1 when a parity check fails (or for an internal error), 2 with
        a one-line ``export: error: ...`` for a failure the user can fix.

    Example
    -------
    >>> from qffs_tf.tools import export
    >>> export.main(["--run_dir=runs/quickstart"])  # doctest: +SKIP
    """
    command_line = None if argv is None else ["export", *argv]
    cli.run(_export, command_line, define_flags=_define_flags)


if __name__ == "__main__":
    main()
