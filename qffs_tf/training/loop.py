"""One training stage: optimizer, schedule, Keras `fit` one epoch at a time, checkpoints.

`run_stage` trains a model for a number of epochs and resumes from the stage's latest
checkpoint. Each epoch is one `fit` call, because the data of an epoch depends on the epoch
(seed, epoch), and a resumed epoch skips the batches already done. Callbacks:

- `DivergenceGuard` stops at once when the loss is no longer finite;
- `StageCheckpointer` keeps the counters, the history and the epoch's metric sums, saves
  every `checkpoint_every_steps` steps and at every epoch end (each save checks first that
  every variable is finite) and fires the test hooks;
- TensorBoard (chief only, when the tensorboard package is installed).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
from collections.abc import Iterator
from typing import Any

from absl import logging

from qffs_tf._keras import keras, tf
from qffs_tf.training import distribute
from qffs_tf.training.checkpoints import StageCheckpoint, diverged_error, random_generators
from qffs_tf.training.config import TrainConfig
from qffs_tf.training.hooks import RunHooks
from qffs_tf.training.inputs import RunData

__all__ = [
    "reproducible",
    "seed_everything",
    "learning_rate",
    "make_optimizer",
    "compile_model",
    "run_stage",
]


@contextlib.contextmanager
def reproducible() -> Iterator[None]:
    """Deterministic ops, and dropout drawn from checkpointable tf.random.Generators.

    Both are process-wide switches; the previous settings come back on exit, so code that
    runs after training in the same process (tests, notebooks) is not affected.

    Example
    -------
    >>> with reproducible():  # doctest: +SKIP
    ...     train(config)
    """
    from tensorflow.python.framework import config as tf_config

    determinism_was_on = tf_config.is_op_determinism_enabled()
    generator_was_on = keras.backend.experimental.is_tf_random_generator_enabled()
    tf.config.experimental.enable_op_determinism()
    keras.backend.experimental.enable_tf_random_generator()
    try:
        yield
    finally:
        if not determinism_was_on:
            tf_config.disable_op_determinism()
        if not generator_was_on:
            keras.backend.experimental.disable_tf_random_generator()


def seed_everything(seed: int) -> None:
    """Seed Python, numpy, TensorFlow and tf_keras's seed generator (weights, dropout seeds).

    Call it right before the code whose random draws must be reproducible: anything that
    draws in between (loading a model does) would shift them.
    """
    keras.utils.set_random_seed(seed)


def learning_rate(config: TrainConfig, base: float, total_steps: int):
    """The stage's learning rate: a schedule over `total_steps`, or the constant `base`.

    Example
    -------
    >>> float(learning_rate(TrainConfig(lr_schedule="step"), 0.1, 100)(60))  # doctest: +SKIP
    0.01
    """
    total_steps = max(1, total_steps)
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(base, decay_steps=total_steps)
    if config.lr_schedule == "step":  # x0.1 at 50 % and 75 % of the stage
        boundaries = [max(1, total_steps // 2), max(2, (3 * total_steps) // 4)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [base, base * 0.1, base * 0.01]
        )
    return base


def make_optimizer(config: TrainConfig, lr) -> keras.optimizers.Optimizer:
    """SGD with Nesterov momentum, or Adam, as `config.optimizer` says."""
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    return keras.optimizers.SGD(learning_rate=lr, momentum=config.momentum, nesterov=True)


def compile_model(model: keras.Model, optimizer, config: TrainConfig) -> None:
    """Cross-entropy on logits (label smoothing from the config) and accuracy."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.label_smoothing
        ),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def _current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return float(lr(optimizer.iterations))
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def _metric_sums(model: keras.Model) -> dict[str, list[float]]:
    """{name: [total, count]} of the model's averaged training metrics (loss, accuracy)."""
    sums = {}
    for metric in model.metrics:
        total, count = getattr(metric, "total", None), getattr(metric, "count", None)
        if total is not None and count is not None:
            sums[metric.name] = [float(total.numpy()), float(count.numpy())]
    return sums


class DivergenceGuard(keras.callbacks.Callback):
    """Stops a stage whose loss is no longer finite, before anything saves those weights."""

    def __init__(self, stage: StageCheckpoint):
        super().__init__()
        self.stage = stage
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            where = f"at epoch {self.epoch + 1}, batch {self.stage.batches_in_epoch + 1}"
            raise diverged_error(
                self.stage.name, f"the loss became {float(loss)} {where}", self.stage.last_saved
            )


class StageCheckpointer(keras.callbacks.Callback):
    """Counts steps, saves every N steps and at every epoch end, keeps the epoch's metrics.

    Keras resets its metrics at the start of every `fit` call, so after a resume in the middle
    of an epoch they cover only the batches run since. The sums of the batches before are in
    the checkpoint (`carry`); the epoch's row adds both, so metrics.json is the same as an
    uninterrupted run's (up to float32 summation order).
    """

    def __init__(self, stage: StageCheckpoint, steps_per_epoch: int, every_steps: int, hooks):
        super().__init__()
        self.stage = stage
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.hooks = hooks
        self.carry: dict[str, list[float]] = {}
        self.epoch_sums: dict[str, list[float]] | None = None

    def start_fit(self) -> None:
        """Called before each fit call: the metric sums of the batches already done."""
        self.carry = self.stage.carried_metrics() if self.stage.batches_in_epoch else {}
        self.epoch_sums = None

    def _sums(self) -> dict[str, list[float]]:
        current = _metric_sums(self.model)
        for name, (total, count) in self.carry.items():
            if name in current:
                current[name] = [current[name][0] + total, current[name][1] + count]
        return current

    def on_train_batch_end(self, batch, logs=None):
        s = self.stage
        s.batches_in_epoch += 1
        s.iterations += 1
        last_of_epoch = s.batches_in_epoch >= self.steps_per_epoch  # saved at the epoch end
        if last_of_epoch:
            self.epoch_sums = self._sums()  # before validation reuses the metric objects
        elif self.every_steps and s.iterations % self.every_steps == 0:
            s.save(self._sums())
        self.hooks.after_step()

    def on_epoch_end(self, epoch, logs=None):
        s = self.stage
        logs = logs or {}
        row: dict[str, Any] = {"epoch": epoch + 1, "steps": s.iterations}
        if self.epoch_sums is not None:
            row.update({name: total / count for name, (total, count) in self.epoch_sums.items()})
        else:  # a shorter epoch than planned: Keras's own averages
            row.update({k: float(v) for k, v in logs.items() if not k.startswith("val_")})
        row.update({k: float(v) for k, v in logs.items() if k.startswith("val_")})
        row["learning_rate"] = _current_lr(s.optimizer)
        s.append_history(row)
        s.epochs_done.assign(epoch + 1)
        s.batches_in_epoch = 0
        s.save({})
        self.model.stop_training = True  # one fit() call per epoch: data depends on the epoch


@functools.cache
def _tensorboard_available() -> bool:
    """tf.summary needs the tensorboard package, which requirements.txt may not pin."""
    if importlib.util.find_spec("tensorboard") is not None:
        return True
    logging.warning(
        "The tensorboard package is not installed: no TensorBoard logs are written (the "
        "per-epoch history is in metrics.json). `pip install tensorboard` to get them."
    )
    return False


def run_stage(
    name: str,
    model: keras.Model,
    epochs: int,
    lr: float,
    config: TrainConfig,
    data: RunData,
    strategy: tf.distribute.Strategy,
    hooks: RunHooks,
    checkpoint_dir,
    tensorboard_dir=None,
) -> tuple[dict[str, Any], StageCheckpoint]:
    """Train `model` for `epochs` epochs, resuming from the stage's latest checkpoint.

    Parameters
    ----------
    name : str
        'float' or 'qat'.
    model : keras.Model
        Built under `strategy.scope()`.
    epochs : int
        Epochs of the stage (0: only the checkpoint bookkeeping).
    lr : float
        Peak learning rate.
    config : TrainConfig
        Optimizer, schedule, checkpoint frequency, verbosity.
    data : RunData
        The run's pipelines.
    strategy : tf.distribute.Strategy
        Where to train.
    hooks : RunHooks
        Test hooks (stop / kill after a step).
    checkpoint_dir : str or Path
        The stage's checkpoint folder.
    tensorboard_dir : str or Path, optional
        TensorBoard logs (chief only).

    Returns
    -------
    (dict, StageCheckpoint)
        The stage's summary (epochs, steps, seconds, history) and its checkpoint state.

    Raises
    ------
    TrainingDivergedError
        When the loss or a variable stops being finite.
    CheckpointError
        When the stage has checkpoints and none can be read.
    """
    total_steps = epochs * data.steps_per_epoch
    with strategy.scope():
        optimizer = make_optimizer(config, learning_rate(config, lr, total_steps))
        compile_model(model, optimizer, config)
        optimizer.build(model.trainable_variables)  # slots exist before a restore
        generators = random_generators(model)
    stage = StageCheckpoint(name, model, optimizer, checkpoint_dir, strategy, generators)
    if stage.restore():
        logging.info(
            "%s stage: resuming at epoch %d, batch %d (step %d).",
            name,
            int(stage.epochs_done.numpy()) + 1,
            stage.batches_in_epoch,
            stage.iterations,
        )
    checkpointer = StageCheckpointer(
        stage, data.steps_per_epoch, config.checkpoint_every_steps, hooks
    )
    # The guard runs first, so a diverged step is never checkpointed.
    callbacks = [DivergenceGuard(stage), checkpointer]
    if tensorboard_dir is not None and distribute.is_chief(strategy) and _tensorboard_available():
        callbacks.append(
            keras.callbacks.TensorBoard(
                log_dir=str(tensorboard_dir), write_graph=False, profile_batch=0
            )
        )
    test = data.test(distributed=True)
    while int(stage.epochs_done.numpy()) < epochs:
        epoch = int(stage.epochs_done.numpy())
        done = stage.batches_in_epoch
        checkpointer.start_fit()
        model.fit(
            data.train(epoch, skip_batches=done),
            initial_epoch=epoch,
            epochs=epochs,
            # A distributed dataset has no known length: give it, so that every worker runs
            # the same number of steps (the collectives of a step need all of them).
            steps_per_epoch=(data.steps_per_epoch - done) if data.distributed else None,
            validation_data=test,
            validation_steps=data.test_steps if data.distributed else None,
            callbacks=callbacks,
            verbose=config.verbose,
        )
    stage.add_seconds()
    summary = {
        "epochs": epochs,
        "steps": int(optimizer.iterations.numpy()),
        "seconds": float(stage.seconds.numpy()),
        "history": stage.history_rows(),
    }
    return summary, stage
