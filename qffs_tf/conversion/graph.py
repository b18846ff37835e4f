"""Reading a QAT model into the converter's node list: one registered reader per layer kind.

A reader turns one Keras layer into nodes (`Node`: name, op, inputs, attrs). Supporting a new
layer kind means registering one reader here (and, if it needs one, a spiking layer in
`qffs_tf.snn`); the refusal message for everything else is generated from the registry, so it
always lists what is supported.

Node ops: input | linear | affine | act | maxpool | shape | add | concat | head | identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow_model_optimization as tfmot

from qffs_tf._keras import check_tf_keras_model, keras
from qffs_tf.errors import ConversionError
from qffs_tf.quantization import QuantReLU, activation_spec
from qffs_tf.quantization.rules import HEAD_ACTIVATIONS, refusal_reason


@dataclasses.dataclass
class Node:
    """One operation of the network being converted."""

    name: str
    op: str
    inputs: list[str]
    attrs: dict


_READERS: dict[type, Callable] = {}


def reader(*layer_types: type):
    """Register a function (layer, node name, input names) -> list of Node for layer types."""

    def register(function):
        for layer_type in layer_types:
            _READERS[layer_type] = function
        return function

    return register


def supported_layers() -> list[str]:
    """Names of the Keras layer types the converter reads."""
    names = {layer_type.__name__ for layer_type in _READERS}
    return sorted(names | {"QuantizeWrapperV2 (quantize_model's layers)"})


def _unsupported(layer, why: str = "") -> ConversionError:
    why = why or refusal_reason(layer) or ""
    reason = f": {why}" if why else ""
    return ConversionError(
        f"Cannot convert layer '{layer.name}' ({type(layer).__name__}){reason}. "
        f"Supported layer types: {', '.join(supported_layers())}."
    )


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, list | tuple) else (int(value), int(value))


def _check_channels_last(layer) -> None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise _unsupported(layer, "only data_format='channels_last' is supported")


def _activation_name(layer) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "linear") if activation is not None else "linear"


def _effective_weight(wrapper, inner, attribute: str) -> np.ndarray:
    """A weight as the QAT forward pass uses it (tfmot fake-quantized when weight_bits was set).

    With weight quantization, tfmot overwrites the layer's attribute with the quantized tensor
    of its last call, so the variable is taken from the wrapper's own list.
    """
    for weight, quantizer, variables in getattr(wrapper, "_weight_vars", []) if wrapper else []:
        if weight.name.split("/")[-1].split(":")[0] == attribute:
            return np.asarray(quantizer(weight, False, weights=variables), np.float32)
    return np.asarray(getattr(inner, attribute).numpy(), np.float32)


def _weight_scale(wrapper, attribute: str) -> np.ndarray | None:
    """tfmot's weight quantization step (alpha, per tensor or per output channel), or None.

    The fake-quantized kernel is alpha * (an integer) exactly; `qffs_tf.conversion.integer`
    reads the integers back from it. alpha = (max - min) / (2^bits - 1 - narrow_range) in
    float32, as TensorFlow's FakeQuantWithMinMaxVars computes it.
    """
    for weight, quantizer, variables in getattr(wrapper, "_weight_vars", []) if wrapper else []:
        if weight.name.split("/")[-1].split(":")[0] != attribute:
            continue
        bits = getattr(quantizer, "num_bits", None)
        if bits is None or "min_var" not in variables or "max_var" not in variables:
            return None
        low = np.asarray(variables["min_var"].numpy(), np.float32)
        high = np.asarray(variables["max_var"].numpy(), np.float32)
        steps = np.float32(2**bits - 1 - int(bool(getattr(quantizer, "narrow_range", False))))
        return np.asarray((high - low) / steps, np.float32)
    return None


def _with_scale(node: Node, wrapper, attribute: str) -> Node:
    scale = _weight_scale(wrapper, attribute)
    if scale is not None:
        node.attrs["weight_scale"] = scale
    return node


def _bias(layer, channels: int) -> np.ndarray:
    if getattr(layer, "use_bias", False):
        return layer.bias.numpy().astype(np.float32)
    return np.zeros(channels, np.float32)


def _conv_attrs(layer) -> dict:
    _check_channels_last(layer)
    return {
        "strides": _pair(layer.strides),
        "padding": layer.padding,
        "dilation_rate": _pair(layer.dilation_rate),
    }


def _linear_nodes(layer, name: str, inputs: list[str], wrapper=None) -> list[Node]:
    """Conv2D / DepthwiseConv2D / Dense / SeparableConv2D / Conv2DTranspose, without activation."""
    if isinstance(layer, keras.layers.SeparableConv2D):
        depthwise = _effective_weight(wrapper, layer, "depthwise_kernel")
        pointwise = _effective_weight(wrapper, layer, "pointwise_kernel")
        channels = depthwise.shape[2] * depthwise.shape[3]
        first = Node(
            f"{name}_depthwise",
            "linear",
            inputs,
            {
                "kind": "depthwise_conv2d",
                "kernel": depthwise,
                "bias": np.zeros(channels, np.float32),
                **_conv_attrs(layer),
            },
        )
        second = Node(
            name,
            "linear",
            [first.name],
            {
                "kind": "conv2d",
                "kernel": pointwise,
                "bias": _bias(layer, pointwise.shape[-1]),
                "strides": (1, 1),
                "padding": "valid",
                "dilation_rate": (1, 1),
            },
        )
        return [first, second]
    if isinstance(layer, keras.layers.Conv2DTranspose):
        if layer.output_padding is not None or _pair(layer.dilation_rate) != (1, 1):
            raise _unsupported(layer, "output_padding and dilation are not supported")
        kernel = _effective_weight(wrapper, layer, "kernel")
        attrs = {"kind": "conv2d_transpose", "kernel": kernel, **_conv_attrs(layer)}
        attrs["bias"] = _bias(layer, kernel.shape[2])
        attrs["output_size"] = tuple(int(d) for d in layer.output_shape[1:3])
        return [_with_scale(Node(name, "linear", inputs, attrs), wrapper, "kernel")]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = _effective_weight(wrapper, layer, "depthwise_kernel")
        channels = kernel.shape[2] * kernel.shape[3]
        attrs = {"kind": "depthwise_conv2d", "kernel": kernel, "bias": _bias(layer, channels)}
        node = Node(name, "linear", inputs, {**attrs, **_conv_attrs(layer)})
        return [_with_scale(node, wrapper, "depthwise_kernel")]
    if isinstance(layer, keras.layers.Conv2D):
        if layer.groups != 1:
            raise _unsupported(
                layer, "grouped convolutions (groups > 1) are not supported; use groups=1"
            )
        kernel = _effective_weight(wrapper, layer, "kernel")
        attrs = {"kind": "conv2d", "kernel": kernel, "bias": _bias(layer, kernel.shape[-1])}
        node = Node(name, "linear", inputs, {**attrs, **_conv_attrs(layer)})
        return [_with_scale(node, wrapper, "kernel")]
    kernel = _effective_weight(wrapper, layer, "kernel")
    attrs = {"kind": "dense", "kernel": kernel, "bias": _bias(layer, kernel.shape[-1])}
    return [_with_scale(Node(name, "linear", inputs, attrs), wrapper, "kernel")]


LINEAR_TYPES = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Dense,
    keras.layers.SeparableConv2D,
    keras.layers.Conv2DTranspose,
)


def _head_node(layer, name: str, inputs: list[str]) -> Node:
    activation = _activation_name(layer)
    if activation not in HEAD_ACTIVATIONS:
        raise _unsupported(
            layer,
            f"activation '{activation}' cannot be reproduced by spikes; only the output layer "
            f"may have a non-ReLU activation, one of {sorted(HEAD_ACTIVATIONS)}",
        )
    return Node(name, "head", inputs, {"activation": activation})


def _output_linear(layer, name: str, inputs: list[str], wrapper=None) -> list[Node]:
    """A linear layer whose activation is not quantized: linear, or linear then a head."""
    if _activation_name(layer) == "linear":
        return _linear_nodes(layer, name, inputs, wrapper)
    nodes = _linear_nodes(layer, f"{name}_linear", inputs, wrapper)
    return [*nodes, _head_node(layer, name, [nodes[-1].name])]


@reader(*LINEAR_TYPES)
def _read_linear(layer, name, inputs):
    return _output_linear(layer, name, inputs)


def _act_node(name: str, spec, inputs: list[str]) -> Node:
    if not np.isfinite(spec.step_size) or spec.step_size <= 0:
        raise ConversionError(
            f"Activation '{name}' has step size {spec.step_size}; it must be a positive finite "
            "number. Train or calibrate the QAT model (quantize_model(calibration_data=...))."
        )
    return Node(
        name,
        "act",
        inputs,
        {"bits": spec.bits, "threshold": spec.step_size, "levels": spec.levels, "source": name},
    )


def _read_wrapper(layer, name, inputs):
    inner = layer.layer
    spec = activation_spec(layer)
    if isinstance(inner, LINEAR_TYPES):
        if spec is None:  # the output layer: its activation, if any, is the head
            return _output_linear(inner, name, inputs, layer)
        nodes = _linear_nodes(inner, f"{name}_linear", inputs, layer)
        return [*nodes, _act_node(name, spec, [nodes[-1].name])]
    if spec is not None:
        return [_act_node(name, spec, inputs)]
    if type(inner) in _READERS:  # a layer tfmot wrapped without quantizing it
        return _READERS[type(inner)](inner, name, inputs)
    raise _unsupported(layer, f"unexpected tfmot wrapper around {type(inner).__name__}")


@reader(QuantReLU)
def _read_quant_relu(layer, name, inputs):
    return [_act_node(name, activation_spec(layer), inputs)]


@reader(keras.layers.BatchNormalization)
def _read_batchnorm(layer, name, inputs):
    axis = layer.axis[0] if isinstance(layer.axis, list | tuple) else layer.axis
    rank = len(layer.input_shape)
    if len(np.atleast_1d(layer.axis)) != 1 or axis not in (-1, rank - 1):
        raise _unsupported(layer, "only normalisation over the last (channel) axis is supported")
    gamma = layer.gamma.numpy() if layer.scale else 1.0
    beta = layer.beta.numpy() if layer.center else 0.0
    scale = gamma / np.sqrt(layer.moving_variance.numpy() + layer.epsilon)
    offset = beta - layer.moving_mean.numpy() * scale
    return [_affine_node(name, inputs, scale, offset, layer.moving_mean.shape[0])]


def _affine_node(name, inputs, scale, offset, channels: int) -> Node:
    return Node(
        name,
        "affine",
        inputs,
        {
            "scale": np.broadcast_to(np.asarray(scale, np.float32), (channels,)).copy(),
            "offset": np.broadcast_to(np.asarray(offset, np.float32), (channels,)).copy(),
        },
    )


@reader(keras.layers.Rescaling)
def _read_rescaling(layer, name, inputs):
    channels = int(layer.input_shape[-1])
    return [_affine_node(name, inputs, layer.scale, layer.offset, channels)]


@reader(keras.layers.Normalization)
def _read_normalization(layer, name, inputs):
    axis = layer.axis if isinstance(layer.axis, tuple | list) else (layer.axis,)
    if tuple(axis) not in ((-1,), (len(layer.input_shape) - 1,)) or layer.invert:
        raise _unsupported(layer, "only per-channel (axis=-1), non-inverted normalisation")
    mean = np.asarray(layer.mean).reshape(-1)
    std = np.sqrt(np.maximum(np.asarray(layer.variance).reshape(-1), keras.backend.epsilon()))
    channels = int(layer.input_shape[-1])
    return [_affine_node(name, inputs, 1.0 / std, -mean / std, channels)]


@reader(keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
def _read_pooling(layer, name, inputs):
    _check_channels_last(layer)
    window = {
        "pool_size": _pair(layer.pool_size),
        "strides": _pair(layer.strides),
        "padding": layer.padding,
    }
    if isinstance(layer, keras.layers.MaxPooling2D):
        return [Node(name, "maxpool", inputs, window)]
    return [Node(name, "shape", inputs, {"op": "average_pooling2d", **window})]


def _keep_dims(layer, name: str, node: Node) -> list[Node]:
    """A global pool with keepdims=True: the pooled vector reshaped to (1, 1, C)."""
    if not layer.keepdims:
        return [node]
    node.name = f"{name}_pooled"
    channels = int(layer.input_shape[-1])
    return [
        node,
        Node(name, "shape", [node.name], {"op": "reshape", "target_shape": (1, 1, channels)}),
    ]


@reader(keras.layers.GlobalMaxPooling2D)
def _read_global_max(layer, name, inputs):
    _check_channels_last(layer)
    return _keep_dims(layer, name, Node(name, "maxpool", inputs, {"global_pool": True}))


@reader(keras.layers.GlobalAveragePooling2D)
def _read_global_average(layer, name, inputs):
    _check_channels_last(layer)
    node = Node(name, "shape", inputs, {"op": "global_average_pooling2d"})
    return _keep_dims(layer, name, node)


@reader(keras.layers.Flatten)
def _read_flatten(layer, name, inputs):
    return [Node(name, "shape", inputs, {"op": "flatten"})]


@reader(keras.layers.Reshape)
def _read_reshape(layer, name, inputs):
    return [Node(name, "shape", inputs, {"op": "reshape", "target_shape": layer.output_shape[1:]})]


@reader(keras.layers.Permute)
def _read_permute(layer, name, inputs):
    return [Node(name, "shape", inputs, {"op": "permute", "dims": tuple(layer.dims)})]


@reader(keras.layers.ZeroPadding2D)
def _read_zero_padding(layer, name, inputs):
    _check_channels_last(layer)
    pad = tuple(map(tuple, layer.padding))
    return [Node(name, "shape", inputs, {"op": "zero_padding2d", "pad_width": pad})]


@reader(keras.layers.Cropping2D)
def _read_cropping(layer, name, inputs):
    _check_channels_last(layer)
    crop = tuple(map(tuple, layer.cropping))
    return [Node(name, "shape", inputs, {"op": "cropping2d", "pad_width": crop})]


@reader(keras.layers.UpSampling2D)
def _read_upsampling(layer, name, inputs):
    _check_channels_last(layer)
    if layer.interpolation not in ("nearest", "bilinear"):
        raise _unsupported(
            layer, f"interpolation '{layer.interpolation}' is not linear; use nearest or bilinear"
        )
    attrs = {
        "op": "upsampling2d",
        "pool_size": _pair(layer.size),
        "interpolation": layer.interpolation,
    }
    return [Node(name, "shape", inputs, attrs)]


@reader(keras.layers.Add)
def _read_add(layer, name, inputs):
    return [Node(name, "add", inputs, {})]


@reader(keras.layers.Concatenate)
def _read_concatenate(layer, name, inputs):
    rank = len(layer.output_shape)
    axis = layer.axis if layer.axis >= 0 else rank + layer.axis
    return [Node(name, "concat", inputs, {"axis": int(axis)})]


@reader(keras.layers.Dropout, keras.layers.SpatialDropout2D, keras.layers.GaussianDropout)
def _read_identity(layer, name, inputs):
    return [Node(name, "identity", inputs, {})]


@reader(keras.layers.Activation)
def _read_activation(layer, name, inputs):
    activation = _activation_name(layer)
    if activation == "linear":
        return [Node(name, "identity", inputs, {})]
    if activation in HEAD_ACTIVATIONS:
        return [_head_node(layer, name, inputs)]
    raise _unsupported(
        layer,
        f"activation '{activation}' is not quantized; quantize the model with "
        "qffs_tf.quantize_model first",
    )


@reader(keras.layers.Softmax)
def _read_softmax(layer, name, inputs):
    if layer.axis not in (-1, len(layer.input_shape) - 1):
        raise _unsupported(layer, "only a softmax over the last axis can be a head")
    return [Node(name, "head", inputs, {"activation": "softmax"})]


@reader(keras.layers.ReLU)
def _read_relu(layer, name, inputs):
    if _is_plain_relu(layer):  # an unquantized ReLU is allowed as the output's head
        return [Node(name, "head", inputs, {"activation": "relu", "plain_relu": True})]
    raise _unsupported(
        layer,
        "this ReLU is not quantized; quantize the model with qffs_tf.quantize_model "
        "(or use QuantReLU) first",
    )


def _is_plain_relu(layer) -> bool:
    return (
        layer.max_value is None
        and float(layer.negative_slope) == 0.0
        and float(layer.threshold) == 0.0
    )


def _layer_nodes(layer, inputs: list[str]) -> list[Node]:
    """Nodes for one QAT layer (a fused Conv+activation gives two)."""
    name = layer.name
    if isinstance(layer, keras.layers.InputLayer):
        shape = layer.input_shape[0] if isinstance(layer.input_shape, list) else layer.input_shape
        return [Node(name, "input", [], {"shape": tuple(shape[1:])})]
    if isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2):
        return _read_wrapper(layer, name, inputs)
    read = _READERS.get(type(layer))
    if read is None:
        raise _unsupported(layer)
    return read(layer, name, inputs)


def flatten_nested(model: keras.Model) -> keras.Model:
    """The same network with nested functional models inlined (their layers called in place),
    so that every layer, also inside a nested model, is reachable by `get_layer`; cached."""
    if not any(isinstance(layer, keras.Model) for layer in model.layers):
        return model
    cached = model.__dict__.get("_qffs_flat")
    if cached is not None:
        return cached
    model.__dict__["_qffs_flat"] = _inline(model)
    return model.__dict__["_qffs_flat"]


def layer_output(model: keras.Model, name: str):
    """The symbolic output of layer `name` within `model`'s own graph (a layer that was also
    called elsewhere, as in a model made by `flatten_nested`, has several)."""
    layer = model.get_layer(name)
    nodes = getattr(model, "_network_nodes", set())
    for index in range(len(layer.inbound_nodes) - 1, -1, -1):
        if f"{layer.name}_ib-{index}" in nodes:
            return layer.get_output_at(index)
    return layer.output


def _inline(model: keras.Model) -> keras.Model:
    from qffs_tf._keras import tf  # noqa: F401  (graph building only)

    tensors = {}

    def call_graph(graph: keras.Model, inputs):
        values = {id(t): x for t, x in zip(graph.inputs, inputs, strict=True)}
        for layer in graph.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            node = layer.inbound_nodes[0] if len(layer.inbound_nodes) == 1 else None
            for node in layer.inbound_nodes:
                args = node.keras_inputs
                if all(id(t) in values for t in args):
                    break
            else:
                continue
            args = [values[id(t)] for t in node.keras_inputs]
            arg = args if len(args) > 1 else args[0]
            if isinstance(layer, keras.Model):
                out = call_graph(layer, args)
            else:
                out = layer(arg)
            outputs = node.outputs if isinstance(node.outputs, list) else [node.outputs]
            for t, value in zip(outputs, out if isinstance(out, list) else [out], strict=True):
                values[id(t)] = value
        return (
            [values[id(t)] for t in graph.outputs]
            if len(graph.outputs) > 1
            else values[id(graph.outputs[0])]
        )

    new_input = keras.Input(model.input_shape[1:], name=model.input_names[0])
    tensors = call_graph(model, [new_input])
    return keras.Model(new_input, tensors, name=model.name)


def read_graph(model: keras.Model) -> tuple[list[Node], str]:
    """The model as a topologically ordered node list, and the name of the output node.

    Parameters
    ----------
    model : tf_keras.Model
        A QAT model (Sequential or functional; nested functional models are inlined).

    Returns
    -------
    nodes : list of Node
    output : str
        Name of the node that produces the model's output.

    Raises
    ------
    ConversionError
        An unsupported layer, a shared layer, or more than one input or output.

    Example
    -------
    >>> nodes, output = read_graph(qat_model)
    """
    check_tf_keras_model(model, "QAT model")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConversionError(
            f"The model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
            "conversion supports exactly one image input and one output. Split a multi-output "
            "model into one model per output."
        )
    graph = (
        model
        if not isinstance(model, keras.Sequential)
        else keras.Model(model.inputs, model.outputs)
    )
    graph = flatten_nested(graph)
    config = graph.get_config()
    nodes: list[Node] = []
    last_name = {}  # Keras layer name -> name of the node that produces its output
    for entry in config["layers"]:
        layer = graph.get_layer(entry["name"])
        inbound = entry.get("inbound_nodes", [])
        if len(inbound) > 1:
            raise ConversionError(
                f"Layer '{layer.name}' ({type(layer).__name__}) is called more than once; "
                "shared layers are not supported. Give each call its own layer."
            )
        inputs = [last_name[item[0]] for item in inbound[0]] if inbound else []
        produced = _layer_nodes(layer, inputs)
        nodes.extend(produced)
        last_name[layer.name] = produced[-1].name
    output = last_name[graph.outputs[0]._keras_history.layer.name]
    heads = [node for node in nodes if node.op == "head"]
    for node in heads:
        if node.name != output and node.attrs["activation"] in ("relu", "relu6"):
            raise ConversionError(
                f"Layer '{node.name.removesuffix('_linear')}' applies a ReLU that is not "
                "quantized; quantize the model with qffs_tf.quantize_model (or use QuantReLU) "
                "first."
            )
        if node.name != output and node.attrs.get("plain_relu"):
            raise _unsupported(
                graph.get_layer(node.name),
                "this ReLU is not quantized; quantize the model with qffs_tf.quantize_model "
                "(or use QuantReLU) first",
            )
        if node.name != output:
            raise ConversionError(
                f"Layer '{node.name}' applies '{node.attrs['activation']}' in the middle of the "
                "network; spikes can carry only (quantized) ReLUs there. Use ReLU, or move the "
                "activation to the output layer."
            )
    return nodes, output
