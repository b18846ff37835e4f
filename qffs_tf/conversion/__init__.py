"""ANN-to-SNN conversion: read the QAT graph, rewrite it exactly, build the spiking model.

- `graph`: one reader per Keras layer kind turns the QAT model into a node list;
- `rewrites`: exact rewrites (BatchNorm folding, max-pool moved behind the activation);
- `builder`: the node list becomes a tf_keras model of the layers in `qffs_tf.snn`;
- `qann`: the same node list as the folded inference QANN (BatchNorm folded, constant steps).
"""

from qffs_tf.conversion.builder import build_snn, convert
from qffs_tf.conversion.graph import Node, read_graph
from qffs_tf.conversion.qann import QANNActivation, build_qann, folded_qann
from qffs_tf.conversion.rewrites import simplified_graph, simplify
from qffs_tf.snn.timesteps import timesteps_of, with_timesteps

__all__ = [
    "Node",
    "QANNActivation",
    "build_qann",
    "folded_qann",
    "build_snn",
    "convert",
    "read_graph",
    "simplified_graph",
    "simplify",
    "timesteps_of",
    "with_timesteps",
]
