"""How many time steps an SNN runs for, and the same SNN at another number of steps."""

from __future__ import annotations

from qffs_tf._keras import keras
from qffs_tf.errors import ConversionError
from qffs_tf.snn import layers as spiking


def timesteps_of(snn: keras.Model) -> int:
    """The number of time steps a converted SNN runs for."""
    for layer in snn.layers:
        if isinstance(layer, spiking.ToTemporal):
            return layer.timesteps
    raise ConversionError("This model is not a qffs_tf SNN (no ToTemporal layer).")


def with_timesteps(snn: keras.Model, timesteps: int) -> keras.Model:
    """The same SNN (same weights) running for another number of steps."""
    if timesteps == timesteps_of(snn):
        return snn
    config = snn.get_config()
    for entry in config["layers"]:
        if entry["class_name"] == "ToTemporal" or entry["class_name"].endswith(">ToTemporal"):
            entry["config"]["timesteps"] = int(timesteps)
    with keras.utils.custom_object_scope(spiking.custom_objects()):
        clone = keras.Model.from_config(config)
    clone.set_weights(snn.get_weights())
    return clone
