"""Every setting of a training run: the `TrainConfig` dataclass, its choices and its checks.

This module imports no TensorFlow, so a command-line tool can define its flags, print `--help`
and reject a bad setting in a fraction of a second. Each field carries its own help text,
choices, range and command-line name (`dataclasses.field(metadata=...)`, written with
`setting`); `bin/train`'s flags are generated from them (`qffs_tf.tools.train`) and
`validate_config` checks them, so a setting is described in exactly one place.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import typing
from collections.abc import Callable
from typing import Any

from qffs_tf.errors import TrainConfigError
from qffs_tf.training import hooks

__all__ = [
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "STRATEGIES",
    "STEP_INITS",
    "Range",
    "TrainConfig",
    "setting",
    "field_specs",
    "FieldSpec",
    "validate_config",
    "canonical_config",
    "changed_settings",
]

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("cosine", "step", "constant")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
# QFFS step-size initialisation methods; qffs_tf.quantization.INIT_METHODS holds the same
# names (a test keeps the two equal; this module must not import TensorFlow to read them).
STEP_INITS = ("lsq", "percentile")


@dataclasses.dataclass(frozen=True)
class Range:
    """An interval of allowed numbers; `low_open` / `high_open` exclude the end points.

    Example
    -------
    >>> Range(0, 1, high_open=True).describe()
    'in [0, 1)'
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether `value` lies in the interval."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        """The interval in words: 'in 1..8', '>= 0', '> 0', 'in [0, 1)'."""
        if self.low is not None and self.high is not None:
            if not (self.low_open or self.high_open):
                return f"in {self.low}..{self.high}"
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return "any number"

    def closed_bounds(self) -> tuple[float | None, float | None]:
        """The end points that belong to the interval (what absl's bounds can express)."""
        return (
            None if self.low_open else self.low,
            None if self.high_open else self.high,
        )


def setting(
    default: Any,
    help: str,  # noqa: A002 - the name absl and argparse use
    *,
    choices: tuple[str, ...] | None = None,
    range: Range | None = None,  # noqa: A002
    flag: str | None = None,
    resumable: bool = False,
) -> Any:
    """A dataclass field of TrainConfig with what a flag and a check need to know about it.

    Parameters
    ----------
    default : Any
        The default value.
    help : str
        One sentence for `--help`.
    choices : tuple of str, optional
        The allowed values of a string setting.
    range : Range, optional
        The allowed numbers of a numeric setting.
    flag : str, optional
        The command-line name when it differs from the field name (test hooks: `test_...`).
    resumable : bool
        True when changing the setting between a run and its resumption cannot change the
        result (paths, verbosity, checkpoint frequency, test hooks).

    Returns
    -------
    dataclasses.Field
        The field, with the above in its metadata.

    Example
    -------
    >>> seed: int = setting(0, "Random seed.", range=Range(0))  # doctest: +SKIP
    """
    metadata = {
        "help": help,
        "choices": choices,
        "range": range,
        "flag": flag,
        "resumable": resumable,
    }
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run; `bin/train` has one flag per field.

    Example
    -------
    >>> config = TrainConfig(run_dir="runs/try", float_epochs=1, qat_epochs=1)
    >>> validate_config(config)
    """

    run_dir: str = setting(
        "runs/default", "Output folder (checkpoints, models, reports).", resumable=True
    )
    dataset: str = setting("mnist5k", "Data set: mnist5k (built in), mnist, cifar10, ...")
    data_dir: str | None = setting(
        None, "Folder of prepared TensorFlow Datasets (not for mnist5k).", resumable=True
    )
    model: str = setting("small_cnn", "Model name: small_cnn, vgg16, resnet18, resnet20, ...")
    width: float = setting(
        1.0, "Channel-width multiplier of the model.", range=Range(0, low_open=True)
    )
    dropout: float | None = setting(
        None,
        "Dropout rate of the model's classifier (none: the model's default).",
        range=Range(0, 1, high_open=True),
    )
    activation_bits: int = setting(
        2, "Bits of the quantized ReLU activations (1..8).", range=Range(1, 8)
    )
    weight_bits: int | None = setting(
        None, "Weight fake-quantization bits: none (float weights) or 2..8.", range=Range(2, 8)
    )
    float_epochs: int = setting(4, "Float pretraining epochs (0 = skip).", range=Range(0))
    qat_epochs: int = setting(2, "Quantization-aware fine-tuning epochs.", range=Range(0))
    batch_size: int = setting(64, "Global batch size.", range=Range(1))
    optimizer: str = setting("sgd", "sgd (Nesterov momentum) or adam.", choices=OPTIMIZERS)
    momentum: float = setting(0.9, "SGD momentum.", range=Range(0, 1, high_open=True))
    lr_float: float = setting(
        0.05, "Peak learning rate of float pretraining.", range=Range(0, low_open=True)
    )
    lr_qat: float = setting(
        0.01, "Peak learning rate of QAT fine-tuning.", range=Range(0, low_open=True)
    )
    lr_schedule: str = setting(
        "cosine",
        "Per-stage schedule: cosine decay to 0, step (x0.1 at 50% and 75%), or constant.",
        choices=LR_SCHEDULES,
    )
    weight_decay: float = setting(5e-4, "L2 weight decay of the model's kernels.", range=Range(0))
    label_smoothing: float = setting(
        0.0, "Label smoothing of the loss, in [0, 1).", range=Range(0, 1, high_open=True)
    )
    augment: bool = setting(False, "Data augmentation (random shifts / crops and flips).")
    seed: int = setting(0, "Random seed (weights, data order, augmentation).", range=Range(0))
    init_checkpoint: str | None = setting(
        None,
        "Float weights to start from: an earlier run_dir, its float_model.keras, or a TF "
        "checkpoint.",
    )
    calibration_batches: int = setting(
        4, "Training batches that initialise the step sizes.", range=Range(1)
    )
    step_init: str = setting(
        "lsq",
        "Step-size initialisation from the calibration batches: lsq (2 mean|x| / sqrt(L)) or "
        "percentile (99.9th percentile / L).",
        choices=STEP_INITS,
    )
    checkpoint_every_steps: int = setting(
        0, "Also checkpoint every N steps (0 = at epoch ends only).", range=Range(0), resumable=True
    )
    steps_per_epoch: int | None = setting(
        None, "Cap on batches per epoch, for quick runs (none = the whole split).", range=Range(1)
    )
    train_limit: int | None = setting(
        None, "Use only the first N training examples (none = all).", range=Range(1)
    )
    test_limit: int | None = setting(
        None, "Use only the first N test examples (none = all).", range=Range(1)
    )
    strategy: str = setting(
        "default",
        "tf.distribute strategy: default (one device), mirrored (local GPUs or --devices), "
        "multi_worker (MultiWorkerMirroredStrategy, cluster from TF_CONFIG), tpu (needs --tpu).",
        choices=STRATEGIES,
    )
    devices: str | None = setting(
        None,
        "mirrored only: devices to mirror over, e.g. GPU:0,GPU:1 (default: all GPUs).",
        resumable=True,
    )
    tpu: str | None = setting(
        None, "tpu only: TPU name, grpc://host:8470, or 'local' on a TPU VM.", resumable=True
    )
    sync_batch_norm: bool = setting(
        True, "With several replicas, BatchNormalization statistics over the global batch."
    )
    verbose: int = setting(
        1,
        "Keras progress: 0 silent, 1 progress bar, 2 one line per epoch.",
        range=Range(0, 2),
        resumable=True,
    )
    stop_after_steps: int = setting(
        0,
        "Test hook: stop (exit 3) right after this many training steps, as if killed (0 = off).",
        range=Range(0),
        flag="test_stop_after_steps",
        resumable=True,
    )
    weights_dump: str | None = setting(
        None,
        "Test hook: each worker writes its final QAT weights (.npz) here; {task} is replaced "
        "by the worker index.",
        flag="test_weights_dump",
        resumable=True,
    )
    kill_at: str | None = setting(
        None,
        "Test hook: SIGKILL this process at a point: after_float_model, calibration, report, "
        "or step:N (after the N-th training step of this process).",
        flag="test_kill_at",
        resumable=True,
    )


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One TrainConfig field as a flag and a check see it.

    `kind` is the Python type of a value (bool, int, float or str) and `optional` says whether
    None is allowed.
    """

    name: str
    flag: str
    kind: type
    optional: bool
    default: Any
    help: str
    choices: tuple[str, ...] | None
    range: Range | None
    resumable: bool

    def allowed(self) -> str:
        """What a valid value is, in words ('none or an integer in 2..8', 'one of sgd, adam')."""
        if self.choices:
            text = f"one of {', '.join(self.choices)}"
        elif self.kind is bool:
            text = "true or false"
        elif self.kind in (int, float):
            noun = "an integer" if self.kind is int else "a finite number"
            text = f"{noun} {self.range.describe()}" if self.range else noun
        else:
            text = "a non-empty string"
        return f"none or {text}" if self.optional else text

    def accepts(self, value: Any) -> bool:
        """Whether `value` is valid for this field (type, finiteness, choices, range)."""
        if value is None:
            return self.optional
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is str:
            if not isinstance(value, str) or not value.strip():
                return False
            return self.choices is None or value in self.choices
        if isinstance(value, bool) or not isinstance(
            value, numbers.Integral if self.kind is int else numbers.Real
        ):
            return False
        if not math.isfinite(float(value)):
            return False
        return self.range is None or self.range.contains(value)


@functools.cache
def field_specs() -> tuple[FieldSpec, ...]:
    """The FieldSpec of every TrainConfig field, in declaration order.

    Example
    -------
    >>> [spec.flag for spec in field_specs()][:3]
    ['run_dir', 'dataset', 'data_dir']
    """
    hints = typing.get_type_hints(TrainConfig)
    specs = []
    for field in dataclasses.fields(TrainConfig):
        hint = hints[field.name]
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional = type(None) in typing.get_args(hint)
        kind = args[0] if optional else hint
        meta = field.metadata
        specs.append(
            FieldSpec(
                name=field.name,
                flag=meta.get("flag") or field.name,
                kind=kind,
                optional=optional,
                default=field.default,
                help=meta["help"],
                choices=meta.get("choices"),
                range=meta.get("range"),
                resumable=bool(meta.get("resumable")),
            )
        )
    return tuple(specs)


def validate_config(config: TrainConfig, flag_names: bool = False) -> None:
    """Check every setting of `config`; raise on the first one that is not valid.

    Parameters
    ----------
    config : TrainConfig
        The settings to check.
    flag_names : bool
        Name settings as command-line flags (`--width`) instead of fields (`width`).

    Raises
    ------
    TrainConfigError
        Naming the setting, the allowed values and the value given.

    Example
    -------
    >>> validate_config(TrainConfig(activation_bits=9))
    Traceback (most recent call last):
    ...
    qffs_tf.errors.TrainConfigError: activation_bits must be an integer in 1..8, got 9.
    """
    specs = {spec.name: spec for spec in field_specs()}

    def name(field: str) -> str:
        return f"--{specs[field].flag}" if flag_names else field

    def assignment(field: str, value: str) -> str:
        return f"--{specs[field].flag}={value}" if flag_names else f"{field}={value!r}"

    for spec in specs.values():
        value = getattr(config, spec.name)
        if not spec.accepts(value):
            raise TrainConfigError(f"{name(spec.name)} must be {spec.allowed()}, got {value!r}.")
    relations: list[tuple[bool, Callable[[], str]]] = [
        (
            config.devices is None or config.strategy == "mirrored",
            lambda: f"{name('devices')} is for {assignment('strategy', 'mirrored')} only.",
        ),
        (
            config.tpu is None or config.strategy == "tpu",
            lambda: f"{name('tpu')} is for {assignment('strategy', 'tpu')} only.",
        ),
    ]
    for holds, message in relations:
        if not holds:
            raise TrainConfigError(message())
    if config.kill_at is not None:
        try:
            hooks.parse_kill_point(config.kill_at)
        except ValueError as e:
            raise TrainConfigError(f"{name('kill_at')}: {e}") from None


def canonical_config(config: TrainConfig) -> TrainConfig:
    """`config` with numpy numbers turned into Python ones (for config.json); checked first.

    Raises
    ------
    TrainConfigError
        As `validate_config`.

    Example
    -------
    >>> import numpy as np
    >>> canonical_config(TrainConfig(seed=np.int64(3))).seed.__class__.__name__
    'int'
    """
    validate_config(config)
    values = {}
    for spec in field_specs():
        value = getattr(config, spec.name)
        if value is not None and spec.kind in (int, float, bool):
            value = spec.kind(value)
        values[spec.name] = value
    return TrainConfig(**values)


def changed_settings(previous: dict[str, Any], current: TrainConfig) -> dict[str, tuple]:
    """Settings that differ between a recorded run (config.json) and `current`.

    Resumable settings (paths, verbosity, checkpoint frequency, test hooks) are left out:
    changing them does not change the result.

    Returns
    -------
    dict
        {field: (previous value, current value)}, sorted by field name.

    Example
    -------
    >>> changed_settings({"seed": 1}, TrainConfig(seed=2))["seed"]
    (1, 2)
    """
    resumable = {spec.name for spec in field_specs() if spec.resumable}
    now = dataclasses.asdict(current)
    keys = sorted((set(previous) | set(now)) - resumable)
    return {
        key: (previous.get(key), now.get(key)) for key in keys if previous.get(key) != now.get(key)
    }
