"""The SNN engine: spiking layers, neuron models and the one step program over the graph."""

from qffs_tf.snn import layers
from qffs_tf.snn.layers import custom_objects
from qffs_tf.snn.timesteps import timesteps_of, with_timesteps

__all__ = ["custom_objects", "layers", "timesteps_of", "with_timesteps"]
