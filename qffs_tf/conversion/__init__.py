"""ANN-to-SNN conversion: read the QAT graph, rewrite it exactly, build the spiking model.

- `graph`: one reader per Keras layer kind turns the QAT model into a node list;
- `rewrites`: exact rewrites (BatchNorm folding, max-pool moved behind the activation);
- `builder`: the node list becomes a tf_keras model of the layers in `qffs_tf.snn`.
"""

from qffs_tf.conversion.builder import build_snn, convert
from qffs_tf.conversion.graph import Node, read_graph
from qffs_tf.conversion.rewrites import simplified_graph, simplify
from qffs_tf.snn.timesteps import timesteps_of, with_timesteps

__all__ = [
    "Node",
    "build_snn",
    "convert",
    "read_graph",
    "simplified_graph",
    "simplify",
    "timesteps_of",
    "with_timesteps",
]
