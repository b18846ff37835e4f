"""A whole training run: float pretraining, then QAT, then the test accuracies and reports.

`train(config)` runs (or resumes, or just reports) both stages in `config.run_dir` and writes

    float_model.keras  qat_model.keras  config.json  state.json
    metrics.json       per-epoch history, final accuracies, timings
    report.json        float_accuracy, qann_accuracy, ... (merged, never clobbered)

Resume: the same configuration on the same run folder after a kill restores the latest
checkpoint of the unfinished stage and continues from the saved epoch and step; finished
stages are not redone. The resumed run ends with exactly the weights of an uninterrupted one:
ops are deterministic, the data order is a function of (seed, epoch), the batches already
done are skipped, the dropout generators are in the checkpoint, and each stage seeds the
random draws of its model right before creating it (the QAT stage after the float weights are
loaded, since loading a model draws from tf_keras's seed generator).

What survives what: a kill at any point (the folder's lock is the kernel's, released on
death; temp files are removed by the next run); a damaged checkpoint (the previous kept one is
used); a damaged float_model.keras or qat_model.keras of a finished stage (rebuilt from the
stage's last checkpoint). Nothing is written before the settings and the data set are checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from qffs_tf import io_utils
from qffs_tf._keras import keras, tf
from qffs_tf.errors import QFFSError, TrainConfigError
from qffs_tf.run_folder import RunFolder
from qffs_tf.training import distribute
from qffs_tf.training.config import TrainConfig, canonical_config, changed_settings
from qffs_tf.training.float_model import build_float_model, load_float_weights
from qffs_tf.training.hooks import RunHooks
from qffs_tf.training.inputs import RunData, steps_per_epoch
from qffs_tf.training.loop import reproducible, run_stage, seed_everything

__all__ = ["train", "plan", "STAGES"]

STAGES = ("float", "qat")


# ----------------------------------------------------------------------------- models


def _load_own_model(path: Path) -> keras.Model | None:
    """A model file this run wrote; None (with a warning) if it is missing or damaged."""
    from qffs_tf.serialization import load_model

    try:
        return load_model(path)
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways
        logging.warning(
            "%s cannot be loaded (%s: %s); rebuilding it from the stage's last checkpoint.",
            path,
            type(e).__name__,
            " ".join(str(e).split())[:200],
        )
        return None


def _save_model(model: keras.Model, path: Path, strategy) -> None:
    """The chief saves to `path`; another worker saves to a temporary folder (then deleted)."""
    with distribute.worker_write_dir(path.parent, strategy) as folder:
        io_utils.save_model(model, Path(folder) / path.name)


def _prepare_for_strategy(model: keras.Model, config: TrainConfig, strategy) -> None:
    if config.sync_batch_norm and distribute.num_replicas(strategy) > 1:
        distribute.synchronize_batch_norm(model)


def _evaluate(model: keras.Model, data: RunData) -> dict[str, float]:
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


def _dump_weights(model: keras.Model, config: TrainConfig, strategy) -> None:
    """Test hook: weights of this worker as .npz (`{task}` in the path becomes the task id)."""
    _, task_id = distribute.task_info(strategy)
    path = Path(config.weights_dump.replace("{task}", str(task_id or 0)))
    arrays = {f"w{i:03d}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    with io_utils.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


# ----------------------------------------------------------------------------- run folder


def _has_progress(run: RunFolder) -> bool:
    """Whether the folder holds training results that other settings would contradict."""
    if run.state.exists() or run.float_model.exists() or run.qat_model.exists():
        return True
    return any(any(run.checkpoints(stage).glob("ckpt-*.index")) for stage in STAGES)


def _check_run_folder(config: TrainConfig, run: RunFolder, chief: bool) -> None:
    """Record the config (chief); refuse to resume a run folder started with other settings.

    A folder without training progress (a run that failed before its first checkpoint)
    takes the new settings.
    """
    current = dataclasses.asdict(config)
    previous = io_utils.read_json(run.config)
    if isinstance(previous, dict) and _has_progress(run):
        changed = changed_settings(previous, config)
        if changed:
            details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise TrainConfigError(
                f"run_dir {run.path} holds a run with other settings ({details}). Use a new "
                "run folder (--run_dir), or delete that folder to start over."
            )
    if chief:
        io_utils.write_json(run.config, current)


# ----------------------------------------------------------------------------- the stages


def _float_stage(config, data, strategy, run, hooks) -> tuple[keras.Model, dict[str, Any]]:
    """Stage 1: float pretraining (or just the initial weights when float_epochs == 0)."""
    seed_everything(config.seed)
    with strategy.scope():
        model = build_float_model(config, data.info)
    _prepare_for_strategy(model, config, strategy)
    if config.init_checkpoint:
        with strategy.scope():
            load_float_weights(model, config.init_checkpoint)
    summary, stage = run_stage(
        "float", model, config.float_epochs, config.lr_float, config, data, strategy, hooks,
        run.checkpoints("float"), run.tensorboard("float"),
    )  # fmt: skip
    stage.check_finite("before float_model.keras is written")
    _save_model(model, run.float_model, strategy)
    return model, summary


def _qat_stage(config, data, strategy, run, hooks, float_weights) -> tuple[keras.Model, dict]:
    """Stage 2: QAT fine-tuning from the float weights."""
    from qffs_tf.qat import quantize_model

    calibration = data.calibration_images()
    hooks.point("calibration")
    # Seeded here, after the float weights were read (loading a model draws from the seed
    # generator) and right before the models whose dropout seeds are drawn: a QAT stage that
    # starts in a resumed process gets the same seeds as one that follows the float stage.
    seed_everything(config.seed + 1)
    with strategy.scope():
        float_model = build_float_model(config, data.info)
        float_model.set_weights(float_weights)
        # Calibrated here, in cross-replica context: the step sizes are mirrored variables
        # and the assignment reaches every replica (a per-replica lazy init could not).
        qat_model = quantize_model(
            float_model,
            activation_bits=config.activation_bits,
            weight_bits=config.weight_bits,
            calibration_data=calibration,
            init=config.step_init,
        )
    _prepare_for_strategy(qat_model, config, strategy)
    summary, stage = run_stage(
        "qat", qat_model, config.qat_epochs, config.lr_qat, config, data, strategy, hooks,
        run.checkpoints("qat"), run.tensorboard("qat"),
    )  # fmt: skip
    stage.check_finite("before qat_model.keras is written")
    _save_model(qat_model, run.qat_model, strategy)
    return qat_model, summary


# ----------------------------------------------------------------------------- public


def plan(config: TrainConfig) -> dict[str, Any]:
    """Validate `config` and build its model without reading data; return what a run would do.

    For bin/train --dry_run: a configuration for a data set that is not on this machine can
    be checked here (data set name, model, input shape, steps, learning rates, strategy).

    Raises
    ------
    TrainConfigError
        For a setting out of range or a model/setting mismatch.
    DatasetNotFoundError
        For an unknown data set name.

    Example
    -------
    >>> plan(TrainConfig(model="small_cnn"))["parameters"]  # doctest: +SKIP
    """
    config = canonical_config(config)
    from qffs_tf import data as data_module

    info = data_module.info(config.dataset, data_dir=config.data_dir)
    model = build_float_model(config, info)
    steps = steps_per_epoch(config, info.train_size)
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

    Parameters
    ----------
    config : TrainConfig
        Every setting of the run; `config.run_dir` is the run folder.
    strategy : tf.distribute.Strategy, optional
        Defaults to `make_strategy(config.strategy, config.devices, config.tpu)`; pass one
        built at program start-up (multi-worker needs that).

    Returns
    -------
    dict
        report.json's content; on a non-chief worker {"chief": False} (it writes nothing to
        the run folder).

    Raises
    ------
    TrainConfigError
        A setting out of range, an empty split, or a run folder that holds other settings.
    DatasetNotFoundError
        The data set is not on this machine (nothing is written then).
    RunFolderBusyError
        Another live process writes the run folder.
    TrainingDivergedError
        The loss or a variable became NaN or infinite (no checkpoint of it is written).
    CheckpointError
        A stage's checkpoints exist but none can be read.
    StopForTest
        The `stop_after_steps` test hook fired.

    Example
    -------
    >>> report = train(TrainConfig(run_dir="runs/try", float_epochs=1, qat_epochs=1))
    ... # doctest: +SKIP
    >>> report["qann_accuracy"]  # doctest: +SKIP
    0.96
    """
    config = canonical_config(config)
    if strategy is None:
        strategy = distribute.make_strategy(config.strategy, devices=config.devices, tpu=config.tpu)
    distribute.check_global_batch_size(config.batch_size, strategy)
    with reproducible():
        return _train(config, strategy)


def _train(config: TrainConfig, strategy) -> dict[str, Any]:
    # An unknown, unprepared or empty data set fails before anything is written.
    data = RunData(config, strategy)
    chief = distribute.is_chief(strategy)
    run = RunFolder(config.run_dir)
    with run.lock("train") if chief else contextlib.nullcontext():
        return _train_locked(config, strategy, data, run, chief)


def _train_locked(config, strategy, data: RunData, run: RunFolder, chief: bool) -> dict[str, Any]:
    _check_run_folder(config, run, chief)
    state = io_utils.read_json(run.state, default={"stages": {}, "complete": False})
    if state.get("complete"):
        logging.info("Run in %s is complete; nothing to train (delete it to start over).", run.path)
        return run.read_report()
    hooks = RunHooks(config.stop_after_steps, config.kill_at)

    def record(stage: str, summary: dict[str, Any]) -> None:
        state["stages"][stage] = {"done": True, **summary}
        if chief:
            io_utils.write_json(run.state, state)

    # Stage 1: float. Its weights are read (trained here or loaded) before stage 2 seeds.
    float_model = None
    if state["stages"].get("float", {}).get("done"):
        float_model = _load_own_model(run.float_model)
    if float_model is None:
        float_model, summary = _float_stage(config, data, strategy, run, hooks)
        hooks.point("after_float_model")
        record("float", summary)
    float_weights = float_model.get_weights()

    # Stage 2: QAT fine-tuning from the float weights.
    qat_model = None
    if state["stages"].get("qat", {}).get("done"):
        qat_model = _load_own_model(run.qat_model)
    if qat_model is None:
        qat_model, summary = _qat_stage(config, data, strategy, run, hooks, float_weights)
        record("qat", summary)

    if config.weights_dump:
        _dump_weights(qat_model, config, strategy)
    if not chief:
        logging.info("Worker done; the chief evaluates and writes the reports.")
        return {"chief": False}
    return _report(config, data, run, state, hooks, float_model, qat_model)


def _report(config, data, run, state, hooks, float_model, qat_model) -> dict[str, Any]:
    """Evaluation and reports: the chief alone, over the whole test split."""
    # Under a strategy the saved models are evaluated, loaded outside the strategy: reading
    # the mirrored models' BatchNormalization statistics (sync-on-read) would need the other
    # workers.
    if data.distributed:
        from qffs_tf.serialization import load_model

        float_model, qat_model = load_model(run.float_model), load_model(run.qat_model)
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
    io_utils.write_json(run.metrics, metrics)
    hooks.point("report")
    report = run.merge_report(
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
            "float_model": run.float_model,
            "qat_model": run.qat_model,
        }
    )
    state["complete"] = True
    io_utils.write_json(run.state, state)
    logging.info(
        "float accuracy %.4f, QANN (%d-bit) accuracy %.4f on %d test images; %.1f s training.",
        float_eval["accuracy"],
        config.activation_bits,
        qat_eval["accuracy"],
        test_examples,
        train_seconds,
    )
    return report
