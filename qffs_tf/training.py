"""Two-stage QFFS training: float pretraining, then quantization-aware fine-tuning (QAT).

`train(TrainConfig(...))` runs both stages with Keras `fit`, writes TensorBoard logs,
checkpoints (model + optimizer + counters, `tf.train.CheckpointManager`) at the end of every
epoch and every `checkpoint_every_steps` steps, and at the end writes

    run_dir/float_model.keras   run_dir/qat_model.keras
    run_dir/metrics.json        per-epoch history, final accuracies, timings
    run_dir/report.json         float_accuracy, qann_accuracy, ... (merged, never clobbered)

Resume: running the same configuration on the same run_dir after a kill restores the latest
checkpoint of the unfinished stage and continues from the saved epoch and step; finished
stages are not redone. With the same seed the resumed run ends with exactly the weights of an
uninterrupted run: seeds are fixed, ops are deterministic, the data order is a function of
(seed, epoch), the batches already done in a resumed epoch are skipped, and the dropout
random-generator states are part of the checkpoint.

Distributed (`strategy`, see qffs_tf.distribute): the model, optimizer and QFFS step sizes are
created under `strategy.scope()` (mirrored variables); the step sizes are calibrated there,
up front, so every replica starts with the same values; each input pipeline reads its shard
through `data.load(..., input_context=ctx)`; BatchNormalization is synchronized across
replicas (`sync_batch_norm`), so a run matches a one-device run with the same global batch up
to float rounding. Only the chief writes checkpoints, models, TensorBoard logs and reports.
`plan(config)` (bin/train --dry_run) checks a configuration and builds its model without data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from qffs_tf import distribute, io_utils
from qffs_tf._keras import keras, tf
from qffs_tf.errors import QFFSError
from qffs_tf.quantization import INIT_METHODS

__all__ = [
    "TrainConfig",
    "TrainConfigError",
    "StopForTest",
    "TrainingDivergedError",
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "STRATEGIES",
    "train",
    "validate_config",
    "make_strategy",
    "plan",
]

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("cosine", "step", "constant")
STRATEGIES = distribute.STRATEGIES
make_strategy = distribute.make_strategy
STAGES = ("float", "qat")

STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
FLOAT_MODEL = "float_model.keras"
QAT_MODEL = "qat_model.keras"

# Fields that may change between a run and its resumption (they do not change the result).
_RESUMABLE_CHANGES = {
    "run_dir",
    "data_dir",
    "verbose",
    "stop_after_steps",
    "checkpoint_every_steps",
    "devices",
    "tpu",
    "weights_dump",
}


class TrainConfigError(QFFSError, ValueError):
    """A training setting out of range, or a run_dir that holds a different run."""


class StopForTest(Exception):
    """Raised by the `stop_after_steps` hook: simulates a kill right after a training step."""


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run (bin/train has one flag per field)."""

    run_dir: str = "runs/default"
    dataset: str = "mnist5k"
    data_dir: str | None = None
    model: str = "small_cnn"
    width: float = 1.0
    dropout: float | None = None  # None: the model's own default (small_cnn 0.25, vgg 0)
    activation_bits: int = 2
    weight_bits: int | None = None
    float_epochs: int = 4
    qat_epochs: int = 2
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    lr_float: float = 0.05
    lr_qat: float = 0.01
    lr_schedule: str = "cosine"
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = False
    seed: int = 0
    init_checkpoint: str | None = None
    calibration_batches: int = 4
    step_init: str = "lsq"  # QFFS step-size initialisation: "lsq" or "percentile"
    checkpoint_every_steps: int = 0
    steps_per_epoch: int | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    strategy: str = "default"
    devices: str | None = None  # mirrored only: "GPU:0,GPU:1" (default: all local GPUs)
    tpu: str | None = None  # tpu only: TPU name, grpc://host:8470 or "local"
    sync_batch_norm: bool = True  # BN statistics over the global batch when replicas > 1
    verbose: int = 1  # Keras progress bar: 0 silent, 1 bar, 2 one line per epoch
    stop_after_steps: int = 0  # test hook: raise StopForTest after this many steps (0 = off)
    weights_dump: str | None = None  # test hook: every worker saves its final QAT weights (.npz)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise TrainConfigError(message)


def validate_config(config: TrainConfig) -> None:
    """Raise TrainConfigError naming the first setting that is out of range."""
    c = config
    _check(1 <= c.activation_bits <= 8, f"activation_bits must be 1..8, got {c.activation_bits}.")
    _check(
        c.weight_bits is None or 2 <= c.weight_bits <= 8,
        f"weight_bits must be none or 2..8, got {c.weight_bits}.",
    )
    _check(c.float_epochs >= 0, f"float_epochs must be >= 0, got {c.float_epochs}.")
    _check(c.qat_epochs >= 0, f"qat_epochs must be >= 0, got {c.qat_epochs}.")
    _check(c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}.")
    _check(c.width > 0, f"width must be > 0, got {c.width}.")
    _check(c.dropout is None or 0 <= c.dropout < 1, f"dropout must be in [0, 1), got {c.dropout}.")
    _check(
        c.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {c.optimizer!r}."
    )
    _check(
        c.lr_schedule in LR_SCHEDULES,
        f"lr_schedule must be one of {LR_SCHEDULES}, got {c.lr_schedule!r}.",
    )
    _check(c.lr_float > 0 and c.lr_qat > 0, "lr_float and lr_qat must be > 0.")
    _check(0 <= c.momentum < 1, f"momentum must be in [0, 1), got {c.momentum}.")
    _check(c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}.")
    _check(
        0 <= c.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {c.label_smoothing}."
    )
    _check(c.seed >= 0, f"seed must be >= 0, got {c.seed}.")
    _check(c.calibration_batches >= 1, "calibration_batches must be >= 1.")
    _check(c.step_init in INIT_METHODS, f"step_init must be one of {INIT_METHODS}.")
    _check(c.checkpoint_every_steps >= 0, "checkpoint_every_steps must be >= 0 (0 = per epoch).")
    for name in ("steps_per_epoch", "train_limit", "test_limit"):
        value = getattr(c, name)
        _check(value is None or value >= 1, f"{name} must be >= 1 or unset, got {value}.")
    _check(
        c.strategy in STRATEGIES,
        f"strategy must be one of {', '.join(STRATEGIES)}, got {c.strategy!r}.",
    )
    _check(
        c.devices is None or c.strategy == "mirrored",
        f"devices is for strategy 'mirrored' only, not {c.strategy!r}.",
    )
    _check(
        c.tpu is None or c.strategy == "tpu", f"tpu is for strategy 'tpu' only, not {c.strategy!r}."
    )


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _reproducible() -> Iterator[None]:
    """Deterministic ops, and dropout drawn from checkpointable tf.random.Generators.

    Both are process-wide switches; the previous settings come back on exit, so code that
    runs after train() in the same process (tests, notebooks) is not affected.
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


def _seed_everything(seed: int) -> None:
    """Python, numpy and TF seeds (weights, dropout generators)."""
    keras.utils.set_random_seed(seed)


def _random_generators(model: keras.Model) -> list[tf.random.Generator]:
    """The tf.random.Generator of every random layer (dropout), created now if still lazy.

    tf_keras leaves these out of checkpoints, so they are saved explicitly: without them a
    resumed run would draw different dropout masks.
    """
    generators = []
    for layer in model.submodules:
        rng = getattr(layer, "_random_generator", None)
        if rng is None or not hasattr(rng, "_maybe_init"):
            continue
        rng._maybe_init()
        if getattr(rng, "_generator", None) is not None:
            generators.append(rng._generator)
    return generators


def _steps_per_epoch(config: TrainConfig, train_size: int) -> int:
    examples = train_size if config.train_limit is None else min(config.train_limit, train_size)
    steps = max(1, math.ceil(examples / config.batch_size))
    return steps if config.steps_per_epoch is None else min(steps, config.steps_per_epoch)


def _learning_rate(config: TrainConfig, base: float, total_steps: int):
    total_steps = max(1, total_steps)
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(base, decay_steps=total_steps)
    if config.lr_schedule == "step":  # x0.1 at 50 % and 75 % of the stage
        boundaries = [max(1, total_steps // 2), max(2, (3 * total_steps) // 4)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [base, base * 0.1, base * 0.01]
        )
    return base


def _make_optimizer(config: TrainConfig, learning_rate) -> keras.optimizers.Optimizer:
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    return keras.optimizers.SGD(
        learning_rate=learning_rate, momentum=config.momentum, nesterov=True
    )


def _compile(model: keras.Model, optimizer, config: TrainConfig) -> None:
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.label_smoothing
        ),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


class _Data:
    """The training and test pipelines of a run (one-hot labels for the smoothed loss)."""

    def __init__(self, config: TrainConfig, strategy=None):
        from qffs_tf import data

        self._data = data
        self.config = config
        self.strategy = strategy
        self.info = data.info(config.dataset, data_dir=config.data_dir)
        self.steps_per_epoch = _steps_per_epoch(config, self.info.train_size)
        test_examples = self.info.test_size
        if config.test_limit is not None:
            test_examples = min(test_examples, config.test_limit)
        self.test_steps = max(1, math.ceil(test_examples / config.batch_size))

    @property
    def distributed(self) -> bool:
        return self.strategy is not None and distribute.is_distributed(self.strategy)

    def _one_hot(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        classes = self.info.num_classes
        return dataset.map(lambda x, y: (x, tf.one_hot(y, classes)))

    def train(self, epoch: int, skip_batches: int = 0):
        """Epoch `epoch`'s batches (a function of seed and epoch), minus the first ones done.

        Under a strategy: a distributed dataset; each input pipeline yields per-replica
        batches, `replicas per pipeline` of them per global step.
        """
        c = self.config

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            dataset = self._data.load(
                c.dataset,
                "train",
                batch_size=c.batch_size,
                data_dir=c.data_dir,
                augment=c.augment,
                shuffle=True,
                seed=c.seed,
                epoch=epoch,
                take=c.train_limit,
                input_context=context if self.distributed else None,
            )
            per_step = distribute.replicas_per_input_pipeline(context)
            dataset = dataset.take(self.steps_per_epoch * per_step)
            if skip_batches:
                dataset = dataset.skip(skip_batches * per_step)
            return self._one_hot(dataset)

        if not self.distributed:
            return dataset_fn(tf.distribute.InputContext())
        return distribute.distributed_dataset(self.strategy, dataset_fn)

    def calibration_images(self) -> np.ndarray:
        """The first `calibration_batches` training batches (canonical order, no augmentation)."""
        c = self.config
        dataset = self._data.load(
            c.dataset, "train", batch_size=c.batch_size, data_dir=c.data_dir, take=c.train_limit
        )
        images = [x.numpy() for x, _ in dataset.take(c.calibration_batches)]
        return np.concatenate(images)

    def test(self, distributed: bool = False):
        """The test batches; `distributed=True` shards them over the replicas (validation)."""
        c = self.config

        def dataset_fn(context: tf.distribute.InputContext | None) -> tf.data.Dataset:
            dataset = self._data.load(
                c.dataset,
                "test",
                batch_size=c.batch_size,
                data_dir=c.data_dir,
                take=c.test_limit,
                input_context=context,
            )
            return self._one_hot(dataset)

        if not (distributed and self.distributed):
            return dataset_fn(None)
        return distribute.distributed_dataset(self.strategy, dataset_fn)


def _build_float_model(config: TrainConfig, info) -> keras.Model:
    from qffs_tf import models

    extra = {} if config.dropout is None else {"dropout": config.dropout}
    try:
        return models.build(
            config.model,
            input_shape=tuple(info.image_shape),
            num_classes=info.num_classes,
            width=config.width,
            weight_decay=config.weight_decay,
            **extra,
        )
    except TypeError:
        if not extra:
            raise
        raise TrainConfigError(
            f"model {config.model!r} has no dropout setting; leave --dropout unset."
        ) from None


def _resolve_init_checkpoint(path: str) -> str:
    """A .keras file or a TF checkpoint prefix for `path` (a file, a run dir or a ckpt dir)."""
    if os.path.isdir(path):
        keras_file = os.path.join(path, FLOAT_MODEL)
        if os.path.isfile(keras_file):
            return keras_file
        for folder in (os.path.join(path, "checkpoints", "float"), path):
            prefix = tf.train.latest_checkpoint(folder)
            if prefix:
                return prefix
        raise FileNotFoundError(
            f"init_checkpoint {path!r} is a folder with neither {FLOAT_MODEL} nor a TF "
            "checkpoint: pass the run_dir of an earlier run, its float_model.keras, or a "
            "checkpoint prefix."
        )
    if os.path.isfile(path) or os.path.isfile(path + ".index"):
        return path
    raise FileNotFoundError(f"init_checkpoint {path!r} does not exist.")


def _load_float_weights(model: keras.Model, path: str) -> None:
    """Copy float weights from a .keras model or a TF checkpoint into `model`."""
    source = _resolve_init_checkpoint(path)
    if source.endswith(".keras"):
        from qffs_tf.serialization import load_model

        loaded = load_model(source)
        try:
            model.set_weights(loaded.get_weights())
        except ValueError as e:
            raise TrainConfigError(
                f"init_checkpoint {source} does not match --model={model.name} at this "
                f"--width/--dataset ({e}); use the settings of the run that wrote it."
            ) from None
        return
    status = tf.train.Checkpoint(model=model).restore(source).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise TrainConfigError(
            f"init_checkpoint {source} does not match the model being built: {e}"
        ) from None


# ----------------------------------------------------------------------------- one stage


class TrainingDivergedError(QFFSError):
    """The loss became NaN or infinite: no checkpoint of the diverged weights is written."""


class _DivergenceGuard(keras.callbacks.Callback):
    """Stops a stage whose loss is no longer finite, before anything saves those weights."""

    def __init__(self, stage_name: str, lr_flag: str):
        super().__init__()
        self.stage_name = stage_name
        self.lr_flag = lr_flag
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDivergedError(
                f"The {self.stage_name} stage diverged: the loss became {float(loss)} at epoch "
                f"{self.epoch + 1}, batch {batch + 1}. Lower the learning rate ({self.lr_flag}) "
                "or check the data for NaNs, and start again in a new --run_dir (a run_dir "
                "refuses changed settings). No checkpoint of the diverged weights was written."
            )


class _StageCheckpointer(keras.callbacks.Callback):
    """Owns the stage's CheckpointManager; saves every N steps and at every epoch end.

    Also keeps the counters (epochs done, batches done in the current epoch), the per-epoch
    history and the stage's training seconds inside the checkpoint, so they resume with it.
    """

    def __init__(self, stage: _Stage):
        super().__init__()
        self.stage = stage

    def on_train_batch_end(self, batch, logs=None):
        s = self.stage
        s.batches_in_epoch += 1
        s.iterations += 1
        last_of_epoch = s.batches_in_epoch >= s.steps_per_epoch  # saved at the epoch end
        if s.every_steps and s.iterations % s.every_steps == 0 and not last_of_epoch:
            s.save()
        s.process_steps[0] += 1
        if s.stop_after_steps and s.process_steps[0] >= s.stop_after_steps:
            raise StopForTest(f"stopped after {s.process_steps[0]} steps (test hook)")

    def on_epoch_end(self, epoch, logs=None):
        s = self.stage
        row = {"epoch": epoch + 1, "steps": s.iterations}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        row["learning_rate"] = float(_current_lr(s.optimizer))
        history = json.loads(s.history.numpy().decode())
        history.append(row)
        s.history.assign(json.dumps(history))
        s.epochs_done.assign(epoch + 1)
        s.batches_in_epoch = 0
        s.save()
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


def _current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return float(lr(optimizer.iterations))
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


class _Stage:
    """A training stage (float or qat): model, optimizer, counters, checkpoint manager."""

    def __init__(
        self,
        name,
        model,
        optimizer,
        directory,
        config,
        steps_per_epoch,
        process_steps,
        strategy,
        generators,
    ):
        self.name = name
        self.directory = str(directory)  # the chief's; every worker restores from it
        self.strategy = strategy
        self.steps_per_epoch = steps_per_epoch
        self.model = model
        self.optimizer = optimizer
        self.every_steps = config.checkpoint_every_steps
        self.stop_after_steps = config.stop_after_steps
        self.process_steps = process_steps
        self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.history = tf.Variable("[]", dtype=tf.string, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            random_generators=generators,
            epochs_done=self.epochs_done,
            step_in_epoch=self.step_in_epoch,
            seconds=self.seconds,
            history=self.history,
        )
        self.manager = None
        if distribute.is_chief(strategy):
            self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=2)
        self._clock = time.perf_counter()
        self.iterations = 0  # Python mirrors of the counters: no device read per batch
        self.batches_in_epoch = 0

    def restore(self) -> bool:
        latest = tf.train.latest_checkpoint(self.directory)
        if not latest:
            return False
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        self.iterations = int(self.optimizer.iterations.numpy())
        self.batches_in_epoch = int(self.step_in_epoch.numpy())
        self._clock = time.perf_counter()
        return True

    def save(self) -> None:
        self.step_in_epoch.assign(self.batches_in_epoch)
        now = time.perf_counter()
        self.seconds.assign_add(now - self._clock)
        self._clock = now
        if self.manager is not None:
            self.manager.save(checkpoint_number=self.iterations)
            return
        # A non-chief worker takes part in the save (as tf.distribute requires) into a
        # temporary folder that is deleted at once.
        with distribute.worker_write_dir(self.directory, self.strategy) as folder:
            manager = tf.train.CheckpointManager(self.checkpoint, folder, max_to_keep=1)
            manager.save(checkpoint_number=self.iterations)


def _run_stage(
    name: str,
    model: keras.Model,
    epochs: int,
    lr: float,
    config: TrainConfig,
    data: _Data,
    strategy,
    process_steps: list[int],
) -> dict[str, Any]:
    """Train `model` for `epochs` epochs, resuming from the stage's latest checkpoint."""
    run_dir = Path(config.run_dir)
    total_steps = epochs * data.steps_per_epoch
    with strategy.scope():
        optimizer = _make_optimizer(config, _learning_rate(config, lr, total_steps))
        _compile(model, optimizer, config)
        optimizer.build(model.trainable_variables)  # slots exist before a restore
        generators = _random_generators(model)
    # The counters are plain local variables, outside the scope: every worker holds the same
    # values, and a string variable cannot be broadcast by multi-worker collectives.
    stage = _Stage(
        name,
        model,
        optimizer,
        run_dir / "checkpoints" / name,
        config,
        data.steps_per_epoch,
        process_steps,
        strategy,
        generators,
    )
    if stage.restore():
        logging.info(
            "%s stage: resuming at epoch %d, batch %d (step %d).",
            name,
            int(stage.epochs_done.numpy()) + 1,
            int(stage.step_in_epoch.numpy()),
            int(optimizer.iterations.numpy()),
        )
    # The guard runs first, so a diverged step is never checkpointed.
    callbacks = [_DivergenceGuard(name, f"--lr_{name}"), _StageCheckpointer(stage)]
    if distribute.is_chief(strategy) and _tensorboard_available():
        callbacks.append(
            keras.callbacks.TensorBoard(
                log_dir=str(run_dir / "tensorboard" / name), write_graph=False, profile_batch=0
            )
        )
    test = data.test(distributed=True)
    while int(stage.epochs_done.numpy()) < epochs:
        epoch = int(stage.epochs_done.numpy())
        done = int(stage.step_in_epoch.numpy())
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
    stage.seconds.assign_add(time.perf_counter() - stage._clock)
    return {
        "epochs": epochs,
        "steps": int(optimizer.iterations.numpy()),
        "seconds": float(stage.seconds.numpy()),
        "history": json.loads(stage.history.numpy().decode()),
    }


# ----------------------------------------------------------------------------- the run


def _check_run_dir(config: TrainConfig, run_dir: Path, chief: bool = True) -> None:
    """Record the config (chief); refuse to resume a run_dir started with other settings."""
    path = run_dir / CONFIG_FILE
    current = dataclasses.asdict(config)
    previous = io_utils.read_json(path)
    if previous is not None:
        changed = sorted(
            key
            for key in set(previous) | set(current)
            if key not in _RESUMABLE_CHANGES and previous.get(key) != current.get(key)
        )
        if changed:
            details = ", ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed)
            raise TrainConfigError(
                f"run_dir {run_dir} holds a run with other settings ({details}). Use a new "
                "--run_dir, or delete that folder to start over."
            )
    if chief:
        io_utils.write_json(path, current)


def _evaluate(model: keras.Model, data: _Data) -> dict[str, float]:
    """Test accuracy as an exact fraction correct / total (no float32 metric averaging)."""
    predict = tf.function(lambda x: tf.argmax(model(x, training=False), axis=-1))
    correct = total = 0
    for images, one_hot in data.test():
        labels = tf.argmax(one_hot, axis=-1)
        correct += int(tf.reduce_sum(tf.cast(predict(images) == labels, tf.int64)))
        total += int(labels.shape[0])
    if total == 0:
        raise QFFSError("The test split is empty: nothing to evaluate.")
    return {"accuracy": correct / total, "correct": correct, "total": total}


def _save_model(model: keras.Model, path: Path, strategy) -> None:
    """The chief saves to `path`; another worker saves to a temporary folder (then deleted)."""
    with distribute.worker_write_dir(path.parent, strategy) as folder:
        io_utils.save_model(model, Path(folder) / path.name)


def _prepare_for_strategy(model: keras.Model, config: TrainConfig, strategy) -> None:
    if config.sync_batch_norm and distribute.num_replicas(strategy) > 1:
        distribute.synchronize_batch_norm(model)


def _dump_weights(model: keras.Model, config: TrainConfig, strategy) -> None:
    """Test hook: weights of this worker as .npz (`{task}` in the path becomes the task id)."""
    _, task_id = distribute.task_info(strategy)
    path = Path(config.weights_dump.replace("{task}", str(task_id or 0)))
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"w{i:03d}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    with io_utils.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def plan(config: TrainConfig) -> dict[str, Any]:
    """Validate `config` and build its model without reading data; return what a run would do.

    For bin/train --dry_run: a configuration for a data set that is not on this machine can
    be checked here (data set name, model, input shape, steps, learning rates, strategy).
    """
    validate_config(config)
    from qffs_tf import data as data_module

    info = data_module.info(config.dataset, data_dir=config.data_dir)
    model = _build_float_model(config, info)
    steps = _steps_per_epoch(config, info.train_size)
    return {
        "run_dir": config.run_dir,
        "dataset": info.name,
        "input_shape": list(info.image_shape),
        "num_classes": info.num_classes,
        "train_examples": info.train_size,
        "model": config.model,
        "width": config.width,
        "parameters": int(model.count_params()),
        "layers": len(model.layers),
        "activation_bits": config.activation_bits,
        "weight_bits": config.weight_bits,
        "global_batch_size": config.batch_size,
        "steps_per_epoch": steps,
        "float": {"epochs": config.float_epochs, "steps": steps * config.float_epochs,
                  "lr": config.lr_float},
        "qat": {"epochs": config.qat_epochs, "steps": steps * config.qat_epochs,
                "lr": config.lr_qat},
        "optimizer": config.optimizer,
        "lr_schedule": config.lr_schedule,
        "augment": config.augment,
        "strategy": config.strategy,
        "devices": config.devices,
        "tpu": config.tpu,
    }  # fmt: skip


def train(config: TrainConfig, strategy: tf.distribute.Strategy | None = None) -> dict[str, Any]:
    """Run (or resume, or just report) the two-stage training; return report.json's content.

    `strategy` defaults to `make_strategy(config.strategy, config.devices, config.tpu)`; pass
    one built at program start-up (multi-worker needs that). On a non-chief worker the
    return value is {"chief": False} and nothing is written to run_dir.
    """
    validate_config(config)
    if strategy is None:
        strategy = make_strategy(config.strategy, devices=config.devices, tpu=config.tpu)
    distribute.check_global_batch_size(config.batch_size, strategy)
    with _reproducible():
        return _train(config, strategy)


def _train(config: TrainConfig, strategy) -> dict[str, Any]:
    data = _Data(config, strategy)  # an unknown data set fails before anything is written
    chief = distribute.is_chief(strategy)
    run_dir = Path(config.run_dir)
    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
    _check_run_dir(config, run_dir, chief)
    state_path = run_dir / STATE_FILE
    state = io_utils.read_json(state_path, default={"stages": {}, "complete": False})
    if state.get("complete"):
        logging.info("Run in %s is complete; nothing to train (delete it to start over).", run_dir)
        return io_utils.read_json(run_dir / "report.json", default={})

    process_steps = [0]
    float_path = run_dir / FLOAT_MODEL
    trained_float = None

    # Stage 1: float pretraining (or just the initial weights when float_epochs == 0).
    if not state["stages"].get("float", {}).get("done"):
        _seed_everything(config.seed)
        with strategy.scope():
            model = _build_float_model(config, data.info)
        _prepare_for_strategy(model, config, strategy)
        if config.init_checkpoint:
            with strategy.scope():
                _load_float_weights(model, config.init_checkpoint)
        summary = _run_stage(
            "float", model, config.float_epochs, config.lr_float, config, data, strategy,
            process_steps,
        )  # fmt: skip
        _save_model(model, float_path, strategy)
        trained_float = model
        state["stages"]["float"] = {"done": True, **summary}
        if chief:
            io_utils.write_json(state_path, state)

    # Stage 2: QAT fine-tuning from the float weights (the saved ones when resuming; a
    # non-chief worker uses its own copy, equal to the chief's, rather than wait for the file).
    _seed_everything(config.seed + 1)
    with strategy.scope():
        float_model = _build_float_model(config, data.info)
        if trained_float is not None:
            float_model.set_weights(trained_float.get_weights())
        else:
            _load_float_weights(float_model, str(float_path))
    qat_path = run_dir / QAT_MODEL
    if not state["stages"].get("qat", {}).get("done"):
        from qffs_tf.qat import quantize_model

        # Calibrated here, in cross-replica context: the step sizes are mirrored variables
        # and the assignment reaches every replica (a per-replica lazy init could not).
        with strategy.scope():
            qat_model = quantize_model(
                float_model,
                activation_bits=config.activation_bits,
                weight_bits=config.weight_bits,
                calibration_data=data.calibration_images(),
                init=config.step_init,
            )
        _prepare_for_strategy(qat_model, config, strategy)
        summary = _run_stage(
            "qat", qat_model, config.qat_epochs, config.lr_qat, config, data, strategy,
            process_steps,
        )  # fmt: skip
        _save_model(qat_model, qat_path, strategy)
        state["stages"]["qat"] = {"done": True, **summary}
        if chief:
            io_utils.write_json(state_path, state)
    else:
        from qffs_tf.serialization import load_model

        qat_model = load_model(qat_path)

    if config.weights_dump:
        _dump_weights(qat_model, config, strategy)
    if not chief:
        logging.info("Worker done; the chief evaluates and writes the reports.")
        return {"chief": False}

    # Evaluation and reports: the chief alone, over the whole test split. Under a strategy it
    # evaluates the saved models, loaded outside the strategy: reading the mirrored models'
    # BatchNormalization statistics (sync-on-read) would need the other workers.
    if data.distributed:
        from qffs_tf.serialization import load_model

        float_model, qat_model = load_model(float_path), load_model(qat_path)
    start = time.perf_counter()
    float_eval = _evaluate(float_model, data)
    qat_eval = _evaluate(qat_model, data)
    evaluate_seconds = time.perf_counter() - start
    stages = state["stages"]
    train_seconds = float(sum(stages[s]["seconds"] for s in STAGES))
    test_examples = qat_eval["total"]
    metrics = {
        "float": {**stages["float"], "test": float_eval},
        "qat": {**stages["qat"], "test": qat_eval},
        "float_accuracy": float_eval["accuracy"],
        "qann_accuracy": qat_eval["accuracy"],
        "train_seconds": train_seconds,
        "evaluate_seconds": evaluate_seconds,
        "test_examples": test_examples,
    }
    for stage_metrics in (metrics["float"], metrics["qat"]):
        stage_metrics.pop("done", None)
    io_utils.write_json(run_dir / "metrics.json", metrics)
    report = io_utils.update_json(
        run_dir / "report.json",
        {
            "float_accuracy": float_eval["accuracy"],
            "qann_accuracy": qat_eval["accuracy"],
            "activation_bits": config.activation_bits,
            "weight_bits": config.weight_bits,
            "dataset": config.dataset,
            "model": config.model,
            "width": config.width,
            "float_epochs": config.float_epochs,
            "qat_epochs": config.qat_epochs,
            "seed": config.seed,
            "test_examples": test_examples,
            "train_seconds": train_seconds,
            "float_model": FLOAT_MODEL,
            "qat_model": QAT_MODEL,
        },
    )
    state["complete"] = True
    io_utils.write_json(state_path, state)
    logging.info(
        "float accuracy %.4f, QANN (%d-bit) accuracy %.4f on %d test images; %.1f s training.",
        float_eval["accuracy"],
        config.activation_bits,
        qat_eval["accuracy"],
        test_examples,
        train_seconds,
    )
    return report
