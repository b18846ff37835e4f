"""Neuron models by name: `register_neuron` adds one, `get_neuron` resolves a name or instance."""

from __future__ import annotations

from qffs_tf._keras import keras
from qffs_tf.errors import ConversionError

_NEURONS: dict[str, type] = {}


def register_neuron(cls: type) -> type:
    """Class decorator: make a `NeuronModel` subclass available by its `name`.

    The class is also registered with Keras (package "qffs_tf") so that saved SNNs that use it
    load again.

    Parameters
    ----------
    cls : type
        A `NeuronModel` subclass with a non-empty `name`.

    Returns
    -------
    type
        `cls` itself.

    Raises
    ------
    ConversionError
        If `cls` has no name or the name is taken by another class.

    Example
    -------
    >>> @register_neuron
    ... class LeakyIF(NeuronModel):
    ...     name = "leaky_if"
    ...     ...
    """
    from qffs_tf.snn.neurons.base import NeuronModel

    if not (isinstance(cls, type) and issubclass(cls, NeuronModel)) or not cls.name:
        raise ConversionError(f"{cls!r} is not a NeuronModel subclass with a `name`.")
    existing = _NEURONS.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ConversionError(
            f"Neuron model name '{cls.name}' is already taken by {existing.__qualname__}; "
            "choose another name."
        )
    _NEURONS[cls.name] = cls
    return keras.utils.register_keras_serializable(package="qffs_tf")(cls)


def neuron_names() -> list[str]:
    """Names of the registered neuron models."""
    return sorted(_NEURONS)


def get_neuron(neuron):
    """A neuron model instance from a registered name, an instance, or a serialized dict.

    Parameters
    ----------
    neuron : str, NeuronModel or dict
        "qffs", "plain_if", "rate", another registered name, an instance, or the dict that
        `serialize_neuron` produced.

    Returns
    -------
    NeuronModel

    Raises
    ------
    ConversionError
        For an unknown name or a value of another type.

    Example
    -------
    >>> get_neuron("qffs").threshold(0.5, 3)
    0.5
    """
    from qffs_tf.snn.neurons.base import NeuronModel

    if isinstance(neuron, NeuronModel):
        return neuron
    if isinstance(neuron, dict):
        cls = _NEURONS.get(neuron.get("name", ""))
        if cls is None:
            raise ConversionError(
                f"Unknown neuron model {neuron.get('name')!r} in a saved SNN; import the module "
                "that registers it before loading."
            )
        return cls.from_config(neuron.get("config", {}))
    if isinstance(neuron, str) and neuron in _NEURONS:
        return _NEURONS[neuron]()
    raise ConversionError(
        f"Unknown neuron model {neuron!r}; use one of {neuron_names()} or a NeuronModel "
        "instance (register new ones with qffs_tf.snn.neurons.register_neuron)."
    )


def serialize_neuron(neuron) -> dict:
    """The config dict that `get_neuron` turns back into the model."""
    return {"name": neuron.name, "config": neuron.get_config()}
