"""Convert a trained QFFS QAT model into a spiking network and check it against the QANN.

Example:  bin/convert --run_dir=runs/quickstart --timesteps=8
          (also `qffs-convert ...` or `python -m qffs_tf.tools.convert ...`)
Reads <run_dir>/qat_model.keras (or --qat_model), converts it, writes the SNN to a temporary
file, verifies the SNN read back from that file on a few test images, and only then replaces
<run_dir>/snn.keras (or --output) and merges the result into <run_dir>/report.json. A
conversion or verification that fails leaves the previous snn.keras and report.json as they
were.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NoReturn

from absl import flags

from qffs_tf import cli

FLAGS = flags.FLAGS


def _define_flags() -> None:
    from qffs_tf.run_folder import DEFAULT_RUN_DIR

    flags.DEFINE_string("run_dir", DEFAULT_RUN_DIR, "Run folder written by bin/train.")
    flags.DEFINE_string(
        "qat_model", None, "QAT model to convert (default <run_dir>/qat_model.keras)."
    )
    flags.DEFINE_string("output", None, "Where to write the SNN (default <run_dir>/snn.keras).")
    flags.DEFINE_string(
        "timesteps", "8", "Time steps the SNN runs for, or 'auto': the smallest T at which "
        "--calibration_samples training images are quiet, plus 25 %.",
    )  # fmt: skip
    flags.DEFINE_enum(
        "arithmetic", "float", ["float", "integer"],
        "integer: bit-exact integer accumulation (needs a run trained with --weight_bits).",
    )  # fmt: skip
    flags.DEFINE_integer(
        "calibration_samples", 256, "Training images for --timesteps=auto.", lower_bound=1
    )
    flags.DEFINE_string(
        "neuron", "qffs", "Neuron model: qffs, plain_if, rate, or another registered name."
    )
    flags.DEFINE_bool("noise_suppression", None, "Older spelling: false means --neuron=plain_if.")
    flags.DEFINE_integer(
        "verify_samples", 64, "Test images used to verify the SNN against the QANN (0 = skip).",
        lower_bound=0,
    )  # fmt: skip
    flags.DEFINE_integer(
        "verify_timesteps", 64, "Steps of the verification run (enough to become quiet).",
        lower_bound=1,
    )  # fmt: skip
    flags.DEFINE_string(
        "dataset", None, "Data set of the verification images (default: the run's)."
    )
    flags.DEFINE_string("data_dir", None, "Folder of prepared TensorFlow Datasets.")


def _stored_path(path: str, run_dir: str) -> str:
    """`path` relative to the run folder when inside it, so a copied folder stays valid."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(run_dir))
    return path if relative.startswith(os.pardir) else relative


def _convert(argv: list[str]) -> None:
    del argv
    from qffs_tf.run_folder import RunFolder

    if os.path.isdir(FLAGS.run_dir):
        with RunFolder(FLAGS.run_dir).lock("bin/convert"):
            _convert_locked()
    else:
        _convert_locked()


def _convert_locked() -> None:
    with cli.quiet_tensorflow():
        import qffs_tf
        from qffs_tf import io_utils

    run_dir = FLAGS.run_dir
    qat_path = FLAGS.qat_model or os.path.join(run_dir, "qat_model.keras")
    output = FLAGS.output or os.path.join(run_dir, "snn.keras")
    if not output.endswith(".keras"):
        raise cli.UsageError(f"--output={output}: the SNN file name must end in .keras.")
    report_path = os.path.join(run_dir, "report.json")
    qat = cli.load_model(
        qat_path,
        "QAT model",
        "--qat_model" if FLAGS.qat_model else "--run_dir",
        f"train one first (bin/train --run_dir={run_dir}) or pass --qat_model",
    )
    from qffs_tf import data
    from qffs_tf.run_folder import RunFolder

    dataset = RunFolder(run_dir).dataset(FLAGS.dataset)
    timesteps = FLAGS.timesteps.strip().lower()
    calibration = None
    if timesteps == "auto":
        calibration, _ = data.numpy_split(
            dataset, "train", data_dir=FLAGS.data_dir, limit=FLAGS.calibration_samples
        )
    else:
        try:
            timesteps = int(timesteps)
        except ValueError:
            raise cli.UsageError(
                f"--timesteps={FLAGS.timesteps}: give a whole number >= 1 or 'auto'."
            ) from None
    images = None
    if FLAGS.verify_samples:
        images, _ = data.numpy_split(
            dataset, "test", data_dir=FLAGS.data_dir, limit=FLAGS.verify_samples
        )
    snn = qffs_tf.convert(
        qat, timesteps, neuron=FLAGS.neuron, noise_suppression=FLAGS.noise_suppression,
        arithmetic=FLAGS.arithmetic, calibration_data=calibration,
    )  # fmt: skip
    if timesteps == "auto":
        print(snn.qffs_timesteps_choice)
        timesteps = snn.qffs_timesteps_choice.timesteps
    updates = {
        "timesteps": timesteps,
        "snn_model": _stored_path(output, run_dir),
        "neuron": FLAGS.neuron if FLAGS.noise_suppression is None else None,
        "arithmetic": FLAGS.arithmetic,
    }
    report = None
    # Verify-then-swap: the new SNN replaces the old one only after the copy on disk passed.
    with io_utils.atomic_path(output) as temporary:
        snn.save(temporary)
        if images is not None:
            saved = qffs_tf.load_model(temporary)
            steps = max(FLAGS.verify_timesteps, timesteps)
            report = qffs_tf.verify(qat, saved, images, timesteps=steps)
            print(report)
            if not report.certified:
                raise qffs_tf.ConversionError(
                    f"verification found mismatches no float32 tie explains ({report.verdict}); "
                    f"{output} and report.json are left as they were. Report this as a bug."
                )
            updates["conversion_exact"] = report.exact
            updates["conversion_certified"] = report.certified
            updates["conversion_verdict"] = report.verdict
            updates["conversion_quiet_fraction"] = report.quiet_fraction
    if os.path.isdir(run_dir):
        io_utils.update_json(report_path, updates)
    print(f"SNN with {timesteps} time steps -> {output}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the convert tool (``bin/convert``, ``qffs-convert``).

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments, without the program name (default: the command line).

    Raises
    ------
    SystemExit
        Always: 0 on success, 2 with a one-line ``convert: error: ...`` for a failure the
        user can fix, 1 for an internal error.

    Example
    -------
    >>> from qffs_tf.tools import convert
    >>> convert.main(["--run_dir=runs/quickstart", "--timesteps=8"])  # doctest: +SKIP
    """
    command_line = None if argv is None else ["convert", *argv]
    cli.run(_convert, command_line, define_flags=_define_flags)


if __name__ == "__main__":
    main()
