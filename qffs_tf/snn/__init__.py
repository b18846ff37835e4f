"""The SNN engine: spiking layers, neuron models, and the one step program over the graph.

- `base`: the interface every spiking layer implements (`call`, `initial_state`, `step`);
- `layers`: input coding, linear ops, pooling, the output integrator and readout;
- `neurons/`: neuron models, one per file, registered by name ("qffs", "plain_if", "rate");
- `neuron_layer`: the Keras RNN layer that runs a neuron model;
- `network`: the converted SNN, a Keras model whose forward pass is its program;
- `program`: the SNN's layer graph and the one step function that simulation and both
  TFLite programs run;
- `timesteps`: the window length of an SNN.
"""

from qffs_tf.snn import layers, neurons
from qffs_tf.snn.base import FUSION_MIN_ELEMENTS, SpikingLayer, fusion_threshold
from qffs_tf.snn.layers import (
    Integrate,
    Readout,
    SpikingAdd,
    SpikingAffine,
    SpikingConcatenate,
    SpikingLinear,
    SpikingMaxPool2D,
    SpikingShapeOp,
    ToTemporal,
)
from qffs_tf.snn.network import SpikingNetwork, as_spiking_network, program_of
from qffs_tf.snn.neuron_layer import NeuronCell, SpikingNeurons
from qffs_tf.snn.neurons import NeuronModel, get_neuron, neuron_names, register_neuron
from qffs_tf.snn.program import Program, layer_graph
from qffs_tf.snn.registry import custom_objects
from qffs_tf.snn.timesteps import check_timesteps, timesteps_of, with_timesteps

__all__ = [
    "FUSION_MIN_ELEMENTS",
    "Integrate",
    "NeuronCell",
    "NeuronModel",
    "Program",
    "Readout",
    "SpikingAdd",
    "SpikingAffine",
    "SpikingConcatenate",
    "SpikingLayer",
    "SpikingLinear",
    "SpikingMaxPool2D",
    "SpikingNetwork",
    "SpikingNeurons",
    "SpikingShapeOp",
    "ToTemporal",
    "as_spiking_network",
    "check_timesteps",
    "custom_objects",
    "fusion_threshold",
    "get_neuron",
    "layer_graph",
    "layers",
    "neuron_names",
    "neurons",
    "program_of",
    "register_neuron",
    "timesteps_of",
    "with_timesteps",
]
