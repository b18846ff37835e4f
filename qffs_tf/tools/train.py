"""Train a QFFS network: float pretraining, then b-bit quantization-aware fine-tuning.

Example:  bin/train --flagfile=configs/quickstart.cfg        (or: qffs-train ...)
          bin/train --flagfile=configs/cifar10_vgg16.cfg --dry_run   (check a config, no data)
Distributed: --strategy=mirrored (all local GPUs, or --devices=GPU:0,GPU:1), multi_worker
(MultiWorkerMirroredStrategy; run one process per worker with its own TF_CONFIG), or tpu
(--tpu=<name|grpc://host:8470|local>). --batch_size is the global batch.
Re-running the same command on the same --run_dir resumes an interrupted run from its latest
checkpoint; a finished run is not retrained. Results: <run_dir>/report.json, metrics.json,
float_model.keras, qat_model.keras, tensorboard/.

The flags are generated from the fields of `qffs_tf.training.config.TrainConfig` (name, type,
default, help, choices, range), so a new setting is one field there. Defining them, printing
`--help` and checking the values import no TensorFlow.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

from qffs_tf import cli
from qffs_tf.errors import StopForTest
from qffs_tf.training.config import FieldSpec, TrainConfig, field_specs, validate_config

__all__ = ["main", "define_flags", "config_from_flags", "EXIT_STOPPED_FOR_TEST"]

FLAGS = flags.FLAGS
EXIT_STOPPED_FOR_TEST = 3
_NONE_WORDS = ("none", "")


class OptionalNumberParser(flags.ArgumentParser):
    """absl parser of a number or 'none' (-> None), checked against a FieldSpec's range.

    Parameters
    ----------
    kind_name : str
        'int' or 'float'.
    allowed : str
        The FieldSpec's description of valid values, for the error ('none or an integer in
        2..8').
    bounds : tuple
        (low, high, low_open, high_open) of the range, or None.
    """

    def __init__(self, kind_name: str, allowed: str, bounds: tuple | None):
        super().__init__()
        self.kind_name = kind_name
        self.allowed = allowed
        self.bounds = bounds
        self.syntactic_help = allowed

    def parse(self, argument):
        if argument is None or (isinstance(argument, str) and argument.strip().lower() in
                                _NONE_WORDS):  # fmt: skip
            return None
        from qffs_tf.training.config import Range

        kind = int if self.kind_name == "int" else float
        try:
            value = kind(argument)
        except (TypeError, ValueError):
            raise ValueError(f"use {self.allowed}") from None
        if self.bounds is not None and not Range(*self.bounds).contains(value):
            raise ValueError(f"use {self.allowed}")
        return value

    def flag_type(self):
        return self.kind_name


class _NoneSerializer(flags.ArgumentSerializer):
    def serialize(self, value):
        return "none" if value is None else str(value)


def _define(spec: FieldSpec, flag_values: flags.FlagValues, module: str) -> None:
    name, default, text = spec.flag, spec.default, spec.help
    if spec.kind is bool:
        flags.DEFINE_bool(name, default, text, flag_values=flag_values, module_name=module)
    elif spec.choices:
        flags.DEFINE_enum(
            name, default, spec.choices, text, flag_values=flag_values, module_name=module
        )
    elif spec.kind is str:
        flags.DEFINE_string(name, default, text, flag_values=flag_values, module_name=module)
    elif spec.optional:  # a number or none
        bounds = None
        if spec.range is not None:
            r = spec.range
            bounds = (r.low, r.high, r.low_open, r.high_open)
        parser = OptionalNumberParser(spec.kind.__name__, spec.allowed(), bounds)
        flags.DEFINE(
            parser, name, default, text, flag_values=flag_values,
            serializer=_NoneSerializer(), module_name=module,
        )  # fmt: skip
    else:
        # absl's bounds are inclusive; an open end is left to validate_config.
        low, high = spec.range.closed_bounds() if spec.range else (None, None)
        define = flags.DEFINE_integer if spec.kind is int else flags.DEFINE_float
        define(
            name, default, text, lower_bound=low, upper_bound=high, flag_values=flag_values,
            module_name=module,
        )  # fmt: skip


def define_flags(flag_values: flags.FlagValues = FLAGS, module: str = __name__) -> None:
    """Define one flag per TrainConfig field, plus --dry_run (idempotent).

    `module` is the module the flags belong to; `--help` lists the main module's (absl names
    it by `sys.argv[0]`).

    Example
    -------
    >>> fv = flags.FlagValues()
    >>> define_flags(fv)
    >>> fv["activation_bits"].default
    2
    """
    if "dry_run" in flag_values:
        return
    for spec in field_specs():
        _define(spec, flag_values, module)
    flags.DEFINE_bool(
        "dry_run", False,
        "Validate the flags, build the model and print the plan; read no data, train nothing.",
        flag_values=flag_values, module_name=module,
    )  # fmt: skip


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> TrainConfig:
    """The TrainConfig the parsed flags describe.

    Example
    -------
    >>> fv = flags.FlagValues()
    >>> define_flags(fv)
    >>> _ = fv(["train", "--seed=3", "--weight_bits=none"])
    >>> config_from_flags(fv).seed, config_from_flags(fv).weight_bits
    (3, None)
    """
    return TrainConfig(**{spec.name: flag_values[spec.flag].value for spec in field_specs()})


def _print_plan(plan: dict) -> None:
    print("dry run: flags valid, model built, no data read, nothing written")
    for key, value in plan.items():
        print(f"  {key:18s} {value}")


def _run(argv: list[str]) -> None:
    del argv
    config = config_from_flags()
    validate_config(config, flag_names=True)  # before TensorFlow loads: fast, names flags
    with cli.quiet_tensorflow():
        from qffs_tf.training import distribute, run

    if FLAGS.dry_run:
        _print_plan(run.plan(config))
        return
    # Before any other TensorFlow work: multi-worker collectives and TPUs are set up at start.
    strategy = distribute.make_strategy(config.strategy, devices=config.devices, tpu=config.tpu)
    try:
        report = run.train(config, strategy=strategy)
    except StopForTest as stop:
        print(f"{stop}; run the same command again to resume")
        sys.exit(EXIT_STOPPED_FOR_TEST)
    if not report.get("chief", True):
        print(f"worker done ({config.strategy}); the chief writes {config.run_dir}/report.json")
        return
    report_path = os.path.join(config.run_dir, "report.json")
    logging.info("report: %s", report_path)
    print(
        f"float accuracy {report['float_accuracy']:.4f}  "
        f"QANN ({report['activation_bits']}-bit) accuracy {report['qann_accuracy']:.4f}  "
        f"train {report['train_seconds']:.1f} s  -> {report_path}"
    )


def main(argv: list[str] | None = None) -> None:
    """Run the tool (console script `qffs-train`, and `bin/train`).

    Parameters
    ----------
    argv : list of str, optional
        The arguments without the program name (default: the command line).

    Example
    -------
    >>> main(["--flagfile=configs/quickstart.cfg", "--dry_run"])  # doctest: +SKIP
    """
    # This tool is the program: its flags and its docstring are what --help shows.
    define_flags(module=sys.argv[0])
    main_module = sys.modules.get("__main__")
    if main_module is not None:
        main_module.__doc__ = __doc__
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli.run(_run)
