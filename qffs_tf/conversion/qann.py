"""The folded QANN: the quantized network for inference, built from the converter's graph.

BatchNorm is folded, Dropout is gone and every step size is a constant: the network the SNN
reproduces, made of the same layer classes the SNN uses (in their static form), so that the
benchmarks' baseline and the TFLite QANN files run the converter's graph and nothing else.
"""

from __future__ import annotations

from qffs_tf._keras import keras, tf
from qffs_tf.conversion.builder import build_layer
from qffs_tf.conversion.graph import Node
from qffs_tf.conversion.rewrites import simplified_graph
from qffs_tf.errors import InvalidArgumentError
from qffs_tf.snn.base import without_autograph

ACTIVATIONS = ("quantize", "relu_clip")


def quantized_relu(x: tf.Tensor, step_size: float, levels: int) -> tf.Tensor:
    """a = s * clip(floor(x/s + 1/2), 0, L): the QFFS quantizer's forward pass, constant s."""
    step = tf.constant(step_size, x.dtype)
    return tf.clip_by_value(tf.floor(x / step + 0.5), 0.0, float(levels)) * step


@keras.utils.register_keras_serializable(package="qffs_tf")
class QANNActivation(keras.layers.Layer):
    """A QFFS activation with a constant step size, for inference.

    Parameters
    ----------
    step_size : float
        The learned step size s.
    levels : int
        L = 2^b - 1.
    mode : {"quantize", "relu_clip"}
        "quantize": the b-bit quantizer itself. "relu_clip": ReLU clipped at L*s, for the
        int8 TFLite file, whose own 8-bit grid stands in for the b-bit rounding (TFLite has no
        int8 floor); an approximation whose accuracy is measured, not assumed.

    Example
    -------
    >>> QANNActivation(0.25, 3)(tf.constant([0.1, 0.2, 1.0]))  # [0, 0.25, 0.75]
    """

    def __init__(self, step_size: float, levels: int, mode: str = "quantize", **kwargs):
        super().__init__(**kwargs)
        if mode not in ACTIVATIONS:
            raise InvalidArgumentError(f"mode must be one of {ACTIVATIONS}, got {mode!r}.")
        self.step_size = float(step_size)
        self.levels = int(levels)
        self.mode = mode

    @without_autograph
    def call(self, inputs):
        if self.mode == "quantize":
            return quantized_relu(inputs, self.step_size, self.levels)
        return tf.minimum(tf.nn.relu(inputs), self.levels * self.step_size)

    def get_config(self):
        return {
            **super().get_config(),
            "step_size": self.step_size,
            "levels": self.levels,
            "mode": self.mode,
        }


def build_qann(nodes: list[Node], output: str, activation: str = "quantize") -> keras.Model:
    """The folded QANN as a tf_keras Model, from simplified nodes.

    Layers keep the node names, so `model.get_layer(name)` finds each activation.
    """
    tensors = {}
    model_input = None
    for node in nodes:
        if node.op == "input":
            model_input = keras.Input(node.attrs["shape"], name=node.name)
            tensors[node.name] = model_input
            continue
        inputs = [tensors[name] for name in node.inputs]
        arg = inputs if len(inputs) > 1 else inputs[0]
        if node.op == "act":
            layer = QANNActivation(
                node.attrs["threshold"], node.attrs["levels"], activation, name=node.name
            )
            tensors[node.name] = layer(arg)
        elif node.op == "head":
            tensors[node.name] = keras.layers.Activation(node.attrs["activation"], name=node.name)(
                arg
            )
        else:
            layer, weights = build_layer(node, temporal=False)
            tensors[node.name] = layer(arg)
            if weights is not None:
                layer.set_weights(weights)
    return keras.Model(model_input, tensors[output], name="folded_qann")


def folded_qann(qat_model: keras.Model, activation: str = "quantize") -> keras.Model:
    """The QAT model as an inference network: BatchNorm folded, constant step sizes.

    Parameters
    ----------
    qat_model : tf_keras.Model
        A QFFS QAT model (as for `qffs_tf.convert`).
    activation : {"quantize", "relu_clip"}
        The b-bit quantizer (default), or ReLU clipped at L*s (for int8 export).

    Returns
    -------
    tf_keras.Model
        Same inputs and outputs as the QAT model; its activations are `QANNActivation`
        layers named like the SNN's neuron layers.

    Raises
    ------
    ConversionError
        A model the converter cannot read.

    Example
    -------
    >>> qann = qffs_tf.folded_qann(qat_model)
    >>> logits = qann.predict(x_test)
    """
    if activation not in ACTIVATIONS:
        raise InvalidArgumentError(f"activation must be one of {ACTIVATIONS}, got {activation!r}.")
    nodes, output = simplified_graph(qat_model)
    return build_qann(nodes, output, activation)
