"""Evaluate a converted SNN: accuracy at every time step, agreement, spikes, energy.

Example:  bin/evaluate --run_dir=runs/quickstart
          (also `qffs-evaluate ...` or `python -m qffs_tf.tools.evaluate ...`)
Runs `qffs_tf.analyze` over the test split: the QANN, the SNN and, for comparison, the same QAT
model converted with plain IF neurons (the ablation) and with conventional rate coding (the
baseline); then writes report.json (merged), evaluation.md and plots/*.png into the run folder.

--strategy: the step-by-step SNN simulation is not sharded across replicas (it is a loop of
small stateful steps; splitting the images would save little next to training), so it runs
on one device of the chief: mirrored uses the first of --devices (or the first GPU), tpu and
multi_worker run on the chief's host, and a non-chief multi_worker task exits at once.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from typing import NoReturn

from absl import flags

from qffs_tf import cli

FLAGS = flags.FLAGS


def _define_flags() -> None:
    from qffs_tf.run_folder import DEFAULT_RUN_DIR

    flags.DEFINE_string("run_dir", DEFAULT_RUN_DIR, "Run folder written by bin/train, bin/convert.")
    flags.DEFINE_string("qat_model", None, "QAT model (default <run_dir>/qat_model.keras).")
    flags.DEFINE_string("snn", None, "SNN (default <run_dir>/snn.keras).")
    flags.DEFINE_string("dataset", None, "Data set (default: the one the run was trained on).")
    flags.DEFINE_string("data_dir", None, "Folder of prepared TensorFlow Datasets.")
    flags.DEFINE_integer("limit", None, "Evaluate only the first N test images.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 250, "Images per simulated batch.", lower_bound=1)
    flags.DEFINE_integer(
        "timesteps", None, "Steps to simulate (default: the SNN's).", lower_bound=1
    )
    flags.DEFINE_bool("plain_if", True, "Also evaluate plain IF neurons (no negative spikes).")
    flags.DEFINE_bool("rate", True, "Also evaluate the conventional rate-coded conversion.")
    flags.DEFINE_bool("jit_compile", False, "Run the simulation under XLA.")
    flags.DEFINE_float(
        "e_ac_pj", 0.9, "Energy of one accumulate (synaptic operation), pJ.", lower_bound=0
    )
    flags.DEFINE_enum(
        "strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
        "Where to run: the simulation runs on one device of the chief (see the module doc).",
    )  # fmt: skip
    flags.DEFINE_list(
        "devices", None, "mirrored only: the first of these devices runs the simulation."
    )
    flags.DEFINE_string(
        "tpu", None, "tpu only: accepted for symmetry with bin/train (host CPU runs)."
    )
    flags.DEFINE_float("e_mac_pj", 4.6, "Energy of one multiply-accumulate, pJ.", lower_bound=0)


def _chief_of_tf_config() -> bool:
    """Whether this multi_worker task is the chief (the 'chief' task, else worker 0)."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError as e:
        raise cli.UsageError(f"TF_CONFIG is not valid JSON ({e}).") from None
    task = config.get("task") or {}
    cluster = config.get("cluster") or {}
    if task.get("type") in (None, "chief"):
        return True
    return task.get("type") == "worker" and "chief" not in cluster and task.get("index", 0) == 0


def _simulation_device() -> str | None:
    """The device that runs the simulation under --strategy (None: TensorFlow's choice)."""
    if FLAGS.strategy == "mirrored":
        if FLAGS.devices:
            return FLAGS.devices[0]
        from qffs_tf._keras import tf

        gpus = tf.config.list_logical_devices("GPU")
        return gpus[0].name if gpus else None
    if FLAGS.strategy == "tpu":
        return "/device:CPU:0"
    return None


def _evaluate(argv: list[str]) -> None:
    del argv
    if FLAGS.devices is not None and FLAGS.strategy != "mirrored":
        raise cli.UsageError("--devices is for --strategy=mirrored only.")
    if FLAGS.tpu is not None and FLAGS.strategy != "tpu":
        raise cli.UsageError("--tpu is for --strategy=tpu only.")
    if FLAGS.strategy == "multi_worker" and not _chief_of_tf_config():
        print("not the chief: the chief evaluates (the SNN simulation is not sharded).")
        return
    from qffs_tf.run_folder import RunFolder

    run_dir = FLAGS.run_dir
    folder = RunFolder(run_dir)
    qat_path = FLAGS.qat_model or str(folder.qat_model)
    snn_path = FLAGS.snn or str(folder.snn_model)
    with cli.quiet_tensorflow():
        from qffs_tf import data, evaluation
        from qffs_tf._keras import tf
        from qffs_tf.evaluation import reports

    qat = cli.load_model(
        qat_path,
        "QAT model",
        "--qat_model" if FLAGS.qat_model else "--run_dir",
        f"run bin/train --run_dir={run_dir} (or pass --qat_model)",
    )
    snn = cli.load_model(
        snn_path,
        "SNN",
        "--snn" if FLAGS.snn else "--run_dir",
        f"run bin/convert --run_dir={run_dir} (or pass --snn)",
    )
    dataset = folder.dataset(FLAGS.dataset)
    x, y = data.numpy_split(dataset, "test", data_dir=FLAGS.data_dir, limit=FLAGS.limit)
    baselines = tuple(
        name for name, wanted in (("plain_if", FLAGS.plain_if), ("rate", FLAGS.rate)) if wanted
    )
    device = _simulation_device()
    with folder.lock("bin/evaluate"):
        with tf.device(device) if device else contextlib.nullcontext():
            analysis = evaluation.analyze(
                snn, (x, y), qat, timesteps=FLAGS.timesteps, batch_size=FLAGS.batch_size,
                baselines=baselines, e_ac_pj=FLAGS.e_ac_pj, e_mac_pj=FLAGS.e_mac_pj,
                jit_compile=FLAGS.jit_compile,
            )  # fmt: skip
        report = analysis.to_dict()
        report["evaluation_dataset"] = dataset
        merged = folder.merge_report(report)
        paths = reports.write_reports(merged, run_dir)
    print()
    print(reports.step_table(merged))
    print()
    print("\n".join(reports.summary_lines(merged)))
    print(f"report: {folder.report}, {paths['markdown']}, plots in {folder.plots}/")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the evaluate tool (``bin/evaluate``, ``qffs-evaluate``).

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments, without the program name (default: the command line).

    Raises
    ------
    SystemExit
        Always: 0 on success, 2 with a one-line ``evaluate: error: ...`` for a failure the
        user can fix, 1 for an internal error.

    Example
    -------
    >>> from qffs_tf.tools import evaluate
    >>> evaluate.main(["--run_dir=runs/quickstart"])  # doctest: +SKIP
    """
    command_line = None if argv is None else ["evaluate", *argv]
    cli.run(_evaluate, command_line, define_flags=_define_flags)


if __name__ == "__main__":
    main()
