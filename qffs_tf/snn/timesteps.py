"""How many time steps an SNN runs for: the one check of a window length, the SNN's own
window, and the same SNN (same weights) at another window length."""

from __future__ import annotations

import numbers

from qffs_tf._keras import keras
from qffs_tf.errors import ConversionError, InvalidArgumentError

MAX_TIMESTEPS = 100_000


def check_timesteps(timesteps, what: str = "timesteps") -> int:
    """`timesteps` as an int, or InvalidArgumentError naming the bad value.

    Parameters
    ----------
    timesteps : int
        A whole number from 1 to 100,000 (a numpy integer or an integral float is fine).
    what : str
        The argument's name, for the message.

    Returns
    -------
    int

    Raises
    ------
    InvalidArgumentError
        For None, bools, fractions, NaN/Inf, and values outside 1..100,000.

    Example
    -------
    >>> check_timesteps(8)
    8
    """
    valid = (
        isinstance(timesteps, numbers.Real)
        and not isinstance(timesteps, bool)
        and float(timesteps) == float(timesteps)  # not NaN
        and abs(float(timesteps)) != float("inf")
        and int(timesteps) == timesteps
    )
    if not valid or not 1 <= int(timesteps) <= MAX_TIMESTEPS:
        raise InvalidArgumentError(
            f"{what} must be a whole number from 1 to {MAX_TIMESTEPS:,}, got {timesteps!r}."
        )
    return int(timesteps)


def timesteps_of(snn: keras.Model) -> int:
    """The number of time steps a converted SNN runs for.

    Parameters
    ----------
    snn : tf_keras.Model
        A model made by `qffs_tf.convert`.

    Returns
    -------
    int

    Raises
    ------
    ConversionError
        If the model is not a qffs_tf SNN.

    Example
    -------
    >>> timesteps_of(qffs_tf.convert(qat_model, timesteps=8))
    8
    """
    from qffs_tf.snn.layers import ToTemporal

    for layer in snn.layers:
        if isinstance(layer, ToTemporal):
            return layer.timesteps
    raise ConversionError("This model is not a qffs_tf SNN (no ToTemporal layer).")


def with_timesteps(snn: keras.Model, timesteps: int) -> keras.Model:
    """The same SNN (same weights) running for another number of steps.

    Parameters
    ----------
    snn : tf_keras.Model
        A model made by `qffs_tf.convert`.
    timesteps : int
        The new window length.

    Returns
    -------
    tf_keras.Model
        `snn` itself when the length is unchanged, otherwise a clone.

    Example
    -------
    >>> longer = with_timesteps(snn, 32)
    """
    timesteps = check_timesteps(timesteps)
    if timesteps == timesteps_of(snn):
        return snn
    from qffs_tf.snn.network import SpikingNetwork
    from qffs_tf.snn.registry import custom_objects

    config = snn.get_config()
    for entry in config["layers"]:
        if entry["class_name"] == "ToTemporal" or entry["class_name"].endswith(">ToTemporal"):
            entry["config"]["timesteps"] = timesteps
    with keras.utils.custom_object_scope(custom_objects()):
        clone = SpikingNetwork.from_config(config)
    clone.set_weights(snn.get_weights())
    return clone
