"""Neuron models: each is one class in one file, registered by name.

Built in: "qffs" (negative spikes and a cap, the default), "plain_if" (no negative spikes:
the same-coding ablation), "rate" (conventional rate coding, the baseline). A new model is a
`NeuronModel` subclass decorated with `register_neuron`; `qffs_tf.convert(..., neuron=...)`
then takes its name or an instance.
"""

from qffs_tf.snn.neurons.base import INPUT_CODINGS, NeuronModel, indicator
from qffs_tf.snn.neurons.qffs import PlainIFNeuron, QFFSNeuron  # noqa: E402  (registers)
from qffs_tf.snn.neurons.rate import RateNeuron  # noqa: E402  (registers)
from qffs_tf.snn.neurons.registry import (
    get_neuron,
    neuron_names,
    register_neuron,
    serialize_neuron,
)

__all__ = [
    "INPUT_CODINGS",
    "NeuronModel",
    "PlainIFNeuron",
    "QFFSNeuron",
    "RateNeuron",
    "get_neuron",
    "indicator",
    "neuron_names",
    "register_neuron",
    "serialize_neuron",
]
