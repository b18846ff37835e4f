"""Every serializable class of the SNN engine, for loading saved SNNs."""

from __future__ import annotations


def spiking_layer_classes() -> tuple[type, ...]:
    """The Keras layer classes a converted SNN is made of."""
    from qffs_tf.snn import integer, layers, network, neuron_layer

    return (
        layers.ToTemporal,
        layers.SpikingLinear,
        layers.SpikingAffine,
        layers.SpikingShapeOp,
        layers.SpikingAdd,
        layers.SpikingConcatenate,
        layers.SpikingMaxPool2D,
        layers.Integrate,
        layers.Readout,
        neuron_layer.NeuronCell,
        neuron_layer.SpikingNeurons,
        integer.ExactMembrane,
        integer.ExactIntegrate,
        integer.SumPool,
        integer.LevelOf,
        network.SpikingNetwork,
    )


def custom_objects() -> dict[str, type]:
    """Custom objects needed to load a saved SNN: every spiking layer and neuron model.

    Returns
    -------
    dict
        Class name -> class (also under Keras's registered name "qffs_tf>Name").

    Example
    -------
    >>> keras.models.load_model("snn.keras", custom_objects=custom_objects())
    """
    from qffs_tf.snn.neurons.registry import _NEURONS

    objects = {}
    for cls in (*spiking_layer_classes(), *_NEURONS.values()):
        objects[cls.__name__] = cls
        objects[f"qffs_tf>{cls.__name__}"] = cls
    return objects
