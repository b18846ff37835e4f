"""The float model of a run: built from the model zoo, optionally from given float weights.

`init_checkpoint` may name a run folder (its float_model.keras or float checkpoints), a
`.keras` file, or a TF checkpoint prefix.
"""

from __future__ import annotations

import os
from pathlib import Path

from qffs_tf._keras import keras, tf
from qffs_tf.errors import TrainConfigError
from qffs_tf.run_folder import RunFolder
from qffs_tf.training.config import TrainConfig

__all__ = ["build_float_model", "resolve_init_checkpoint", "load_float_weights"]


def build_float_model(config: TrainConfig, info) -> keras.Model:
    """The float model of `config` for a data set described by `info` (shape, classes).

    Raises
    ------
    TrainConfigError
        When `dropout` is set for a model that has no dropout.
    """
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


def resolve_init_checkpoint(path: str) -> str:
    """A .keras file or a TF checkpoint prefix for `path` (a file, a run dir or a ckpt dir).

    Raises
    ------
    FileNotFoundError
        When `path` holds neither.
    """
    run = RunFolder(path)
    if os.path.isdir(path):
        if run.float_model.is_file():
            return str(run.float_model)
        for folder in (run.checkpoints("float"), Path(path)):
            prefix = tf.train.latest_checkpoint(str(folder))
            if prefix:
                return prefix
        raise FileNotFoundError(
            f"init_checkpoint {path!r} is a folder with neither {run.float_model.name} nor a TF "
            "checkpoint: pass the run folder of an earlier run, its float_model.keras, or a "
            "checkpoint prefix."
        )
    if os.path.isfile(path) or os.path.isfile(path + ".index"):
        return path
    raise FileNotFoundError(f"init_checkpoint {path!r} does not exist.")


def load_float_weights(model: keras.Model, path: str) -> None:
    """Copy float weights from a .keras model or a TF checkpoint into `model`.

    Raises
    ------
    TrainConfigError
        When the saved weights do not fit `model`.
    """
    source = resolve_init_checkpoint(path)
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
