"""Two-stage QFFS training: float pretraining, then quantization-aware fine-tuning (QAT).

    config.py       TrainConfig: every setting, its help, range and choices (no TensorFlow)
    hooks.py        test hooks: stop or SIGKILL the process at a chosen point
    inputs.py       the run's input pipelines (epoch batches, calibration, test)
    checkpoints.py  a stage's checkpoint: finite-variables check, fallback to the previous one
    loop.py         one stage: optimizer, schedule, fit one epoch at a time, callbacks
    float_model.py  the float model: model zoo, init_checkpoint weights
    run.py          train(): both stages, the run folder, evaluation and reports; plan()
    distribute.py   tf.distribute strategies, chief-only writing, sharded pipelines

`train(TrainConfig(...))` is the entry point (bin/train calls it); `plan(config)` checks a
configuration and builds its model without data (bin/train --dry_run). The names below are
loaded lazily, so `from qffs_tf.training import TrainConfig` imports no TensorFlow.

Example
-------
>>> from qffs_tf.training import TrainConfig, train
>>> report = train(TrainConfig(run_dir="runs/try", float_epochs=1, qat_epochs=1))
... # doctest: +SKIP
"""

from __future__ import annotations

import importlib

from qffs_tf.errors import StopForTest, TrainConfigError, TrainingDivergedError
from qffs_tf.training.config import (
    LR_SCHEDULES,
    OPTIMIZERS,
    STEP_INITS,
    STRATEGIES,
    TrainConfig,
    validate_config,
)

__all__ = [
    "TrainConfig",
    "TrainConfigError",
    "TrainingDivergedError",
    "StopForTest",
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "STRATEGIES",
    "STEP_INITS",
    "validate_config",
    "train",
    "plan",
    "make_strategy",
]

_LAZY = {"train": "run", "plan": "run", "make_strategy": "distribute"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
