"""Keras-native loading of qffs_tf models: class registration, `custom_objects`, `load_model`.

Importing this module (``import qffs_tf`` does) registers with tf_keras every class a saved
QAT model or SNN refers to, so plain ``tf_keras.models.load_model`` opens `.keras`, `.h5` and
SavedModel files of both in a fresh process:

- qffs_tf's own classes (quantizer, `QuantReLU`, QuantizeConfigs, every spiking layer and
  neuron model) register themselves with ``@keras.utils.register_keras_serializable(
  package="qffs_tf")`` when `qffs_tf.quantization` and `qffs_tf.snn` are imported; this module
  imports both and also registers each under its bare class name, which the legacy `.h5`
  format and RNN cells look up;
- tensorflow-model-optimization's classes (`QuantizeWrapperV2`, `QuantizeAwareActivation`,
  its quantizers...) are registered globally too, so ``tfmot.quantization.keras.quantize_scope``
  is not needed. `QuantizeWrapperV2` is registered as a subclass that fixes the order of the
  variables of a reloaded wrapper (see `QuantizeWrapperV2`).

Registration is generic: any class registered with ``package="qffs_tf"`` before
`register_classes` runs (it runs at import and in every `load_model`) is covered.
"""

from __future__ import annotations

import os
import zipfile

import tensorflow_model_optimization as tfmot

import qffs_tf.quantization  # noqa: F401  (registers the quantizer, QuantReLU, QuantizeConfigs)
import qffs_tf.snn  # noqa: F401  (registers every spiking layer and neuron model)
from qffs_tf._keras import keras, tf
from qffs_tf.errors import InvalidTypeError, ModelLoadError, ModelNotFoundError

__all__ = ["PACKAGE", "QuantizeWrapperV2", "custom_objects", "register_classes", "load_model"]

PACKAGE = "qffs_tf"
_PREFIX = f"{PACKAGE}>"


class QuantizeWrapperV2(tfmot.quantization.keras.QuantizeWrapperV2):
    """tfmot's QuantizeWrapperV2, building the wrapped layer first when loaded from disk.

    tfmot collects the wrapped layer's weights before that layer is built, so a reloaded
    wrapper lists its variables in another order than the saved one and loading a `.keras` or
    `.h5` file fails ("expected 3 variables, but received 5", or a shape mismatch). Building
    the inner layer first restores the order `quantize_apply` produced. A model that
    `quantize_model` returns holds tfmot's own class; a loaded one holds this subclass, which
    serializes under the same name.
    """

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        super().build(input_shape)


def _tfmot_objects() -> dict[str, object]:
    """The classes tfmot's `quantize_scope` provides, with the fixed QuantizeWrapperV2."""
    objects: dict[str, object] = {}
    for mapping in tfmot.quantization.keras.quantize_scope().custom_objects:
        objects.update(mapping)
    objects["QuantizeWrapperV2"] = QuantizeWrapperV2
    return objects


def _qffs_objects() -> dict[str, object]:
    """qffs_tf's classes, under their registered ("qffs_tf>Name") and bare names.

    The union of what the quantization and SNN packages list as their custom objects and of
    everything registered with Keras under package="qffs_tf" (a neuron model defined and
    registered in user code included).
    """
    objects: dict[str, object] = {}
    for source in (qffs_tf.quantization.custom_objects(), qffs_tf.snn.custom_objects()):
        for name, obj in source.items():
            bare = name.split(">", 1)[-1]
            objects[bare] = obj
            objects[f"{_PREFIX}{bare}"] = obj
    for name, obj in keras.utils.get_custom_objects().items():
        if name.startswith(_PREFIX):
            objects[name] = obj
            objects[name[len(_PREFIX) :]] = obj
    return objects


def custom_objects() -> dict[str, object]:
    """Every custom object a saved qffs_tf model (QAT model or SNN) may refer to.

    After ``import qffs_tf`` these are registered globally and loading needs none of them;
    the dictionary is for code that loads with an explicit scope, or in a process where the
    global registry was cleared.

    Returns
    -------
    dict of str to class
        qffs_tf's classes under both their registered names (``"qffs_tf>IFCell"``) and bare
        class names (``"IFCell"``), and tensorflow-model-optimization's quantization classes,
        with `QuantizeWrapperV2` replaced by the subclass that reloads `.keras` and `.h5`
        files correctly.

    Notes
    -----
    Pass the dictionary to ``keras.models.load_model(path, custom_objects=...)`` or
    ``keras.utils.custom_object_scope``. Do not use tfmot's
    ``tfmot.quantization.keras.quantize_scope`` for `.keras` or `.h5` files: the scope puts
    tfmot's own `QuantizeWrapperV2` first, whose reload fails on those formats (a tfmot bug;
    SavedModel folders load either way).

    Example
    -------
    >>> import qffs_tf
    >>> import tf_keras as keras
    >>> objects = qffs_tf.custom_objects()
    >>> sorted(name for name in ("IFCell", "QuantReLU", "QuantizeWrapperV2") if name in objects)
    ['IFCell', 'QuantReLU', 'QuantizeWrapperV2']
    >>> # model = keras.models.load_model("snn.h5", custom_objects=objects)
    """
    return {**_tfmot_objects(), **_qffs_objects()}


def register_classes() -> None:
    """Register every object of `custom_objects` in tf_keras's global custom objects.

    Runs when `qffs_tf` is imported, and again in `load_model` (so classes registered with
    ``package="qffs_tf"`` after the import, such as a neuron model defined in user code, are
    covered too). Registering does not change how models are saved: tf_keras names a class
    in a saved file by its own registration or class name.

    Returns
    -------
    None

    Example
    -------
    >>> import qffs_tf
    >>> import tf_keras as keras
    >>> qffs_tf.serialization.register_classes()
    >>> keras.utils.get_custom_objects()["QuantReLU"] is qffs_tf.QuantReLU
    True
    """
    keras.utils.get_custom_objects().update(custom_objects())


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if len(text) > 300:
        text = text[:300] + " ..."
    return text


def _check_path(path: str) -> None:
    """Refuse a missing path, or a folder that is not a SavedModel, with the fix."""
    if not os.path.exists(path):
        raise ModelNotFoundError(
            f"No saved model at '{path}': check the path (a .keras or .h5 file, or a "
            "SavedModel folder)."
        )
    if os.path.isdir(path) and not (
        os.path.exists(os.path.join(path, "saved_model.pb"))
        or os.path.exists(os.path.join(path, "saved_model.pbtxt"))
    ):
        raise ModelLoadError(
            f"'{path}' is a folder but not a SavedModel (no saved_model.pb in it): pass a "
            ".keras or .h5 file, or a folder written by model.save(path, save_format='tf')."
        )
    if os.path.isfile(path) and not os.access(path, os.R_OK):
        raise ModelLoadError(
            f"Cannot read '{path}': permission denied. Make the file readable "
            f"(chmod u+r '{path}') or copy it to a place you can read."
        )
    if str(path).endswith(".keras") and os.path.isfile(path) and not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"'{path}' is not a valid .keras file (not a zip archive; truncated or not a "
            "model): save the model again, or restore the file from a copy."
        )


def load_model(
    path: str | os.PathLike,
    compile: bool = False,
    custom_objects: dict[str, object] | None = None,
) -> keras.Model:
    """Load a QAT model or SNN saved by qffs_tf (or any tf_keras model).

    Equivalent to ``tf_keras.models.load_model`` after ``import qffs_tf``, with clear errors
    for files that are missing, unreadable or not a model.

    Parameters
    ----------
    path : str or os.PathLike
        A `.keras` file, an `.h5` file, or a SavedModel folder.
    compile : bool, default False
        Restore the training configuration (optimizer, loss, metrics) saved with the model.
    custom_objects : dict, optional
        Your own classes the model refers to (layers, losses...), by name, in addition to
        qffs_tf's and tfmot's, which are always known.

    Returns
    -------
    tf_keras.Model
        The model, with qffs_tf's and tfmot's layers restored (a QAT model's wrappers are
        `QuantizeWrapperV2`, a subclass of tfmot's). An SNN is a `SpikingNetwork`, also one
        saved as a plain functional model by an earlier version.

    Raises
    ------
    InvalidTypeError
        `path` is not a str or os.PathLike (also a `TypeError`).
    ModelNotFoundError
        Nothing exists at `path` (also a `FileNotFoundError`).
    ModelLoadError
        The file or folder cannot be read as a model: permission denied, truncated or corrupt
        file, a folder that is not a SavedModel, a file that is not a model, or a model that
        refers to a class nobody registered (also an `OSError`).

    Example
    -------
    >>> import qffs_tf
    >>> snn = qffs_tf.load_model("runs/quickstart/snn.keras")  # doctest: +SKIP
    >>> logits = snn.predict(images)  # doctest: +SKIP
    """
    if not isinstance(path, str | os.PathLike):
        raise InvalidTypeError(
            f"path must be a str or os.PathLike naming a saved model, got {type(path).__name__}."
        )
    path = os.fspath(path)
    _check_path(path)
    register_classes()
    try:
        model = keras.models.load_model(path, compile=compile, custom_objects=custom_objects)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, tf.errors.OpError) as e:
        # h5py raises OSError / KeyError for a truncated or foreign HDF5 file, Keras ValueError
        # for an unknown class or a bad format, TensorFlow OpError for a corrupt SavedModel.
        raise ModelLoadError(
            f"Cannot load a model from '{path}' ({type(e).__name__}: {_describe(e)}). "
            "If the file is truncated or corrupt, save the model again or restore it from a "
            "copy; if it uses your own layers, pass them as custom_objects."
        ) from e
    # An SNN saved before `SpikingNetwork` existed is a plain functional model: the same
    # graph and numbers, but Keras's layer-by-layer call skips no quiet step.
    return qffs_tf.snn.as_spiking_network(model)


register_classes()
