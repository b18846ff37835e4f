"""Loading saved qffs_tf models (QAT and SNN) with the custom objects they need."""

from __future__ import annotations

import os

import tensorflow_model_optimization as tfmot

from qffs_tf._keras import keras
from qffs_tf.quantization import custom_objects


class QuantizeWrapperV2(tfmot.quantization.keras.QuantizeWrapperV2):
    """tfmot's QuantizeWrapperV2, building the wrapped layer first when loaded from disk.

    tfmot collects the wrapped layer's weights before that layer is built, so a reloaded
    wrapper lists its variables in another order than the saved one and loading fails
    ("expected 3 variables, but received 5"). Building the inner layer first restores the
    order quantize_apply produced.
    """

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        super().build(input_shape)


def all_custom_objects() -> dict[str, object]:
    """Custom objects of the quantizer and, when importable, of the spiking layers."""
    objects = dict(custom_objects())
    try:
        from qffs_tf import snn as spiking

        objects.update(spiking.custom_objects())
    except ImportError:  # spiking layers not available in this build
        pass
    return objects


def load_model(path: str | os.PathLike, compile: bool = False) -> keras.Model:
    """Load a `.keras` (or SavedModel / .h5) QAT or SNN model saved by qffs_tf."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No saved model at '{path}'.")
    # The inner scope wins over tfmot's own registration of QuantizeWrapperV2.
    override = {"QuantizeWrapperV2": QuantizeWrapperV2}
    with tfmot.quantization.keras.quantize_scope(all_custom_objects()):
        with keras.utils.custom_object_scope(override):
            return keras.models.load_model(path, compile=compile)
