"""Reading a QAT model into the converter's node list: one reader per Keras layer kind."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_model_optimization as tfmot

from qffs_tf._keras import check_tf_keras_model, keras
from qffs_tf.errors import ConversionError
from qffs_tf.quantization import QuantReLU, activation_spec

LINEAR_TYPES = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
SUPPORTED_TYPES = (
    "InputLayer, Conv2D, DepthwiseConv2D, Dense, BatchNormalization, QFFS activations "
    "(QuantReLU or quantize_model's quantized ReLUs), MaxPooling2D, AveragePooling2D, "
    "GlobalAveragePooling2D, Flatten, ZeroPadding2D, Add, Dropout, Activation('linear')"
)


@dataclasses.dataclass
class Node:
    """One operation of the network being converted."""

    name: str
    op: str  # input | linear | affine | act | maxpool | shape | add | identity
    inputs: list[str]
    attrs: dict


def _unsupported(layer, why: str = "") -> ConversionError:
    reason = f": {why}" if why else ""
    return ConversionError(
        f"Cannot convert layer '{layer.name}' ({type(layer).__name__}){reason}. "
        f"Supported layer types: {SUPPORTED_TYPES}."
    )


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, list | tuple) else (int(value), int(value))


def _check_channels_last(layer) -> None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise _unsupported(layer, "only data_format='channels_last' is supported")


def _effective_kernel(wrapper, inner) -> np.ndarray:
    """The kernel the QAT forward pass uses (tfmot fake-quantized when weight_bits was set).

    With weight quantization, tfmot overwrites the layer's kernel attribute with the quantized
    tensor of its last call, so the variable is taken from the wrapper's own list.
    """
    attribute = "depthwise_kernel" if isinstance(inner, keras.layers.DepthwiseConv2D) else "kernel"
    for weight, quantizer, variables in getattr(wrapper, "_weight_vars", []):
        if weight.name.split("/")[-1].split(":")[0] == attribute:
            return np.asarray(quantizer(weight, False, weights=variables))
    return getattr(inner, attribute).numpy()


def _weight_scale(wrapper, inner) -> np.ndarray | None:
    """tfmot's weight quantization step (alpha, per tensor or per output channel), or None.

    The fake-quantized kernel is alpha * (an integer) exactly; `qffs_tf.conversion.integer`
    reads the integers back from it. alpha = (max - min) / (2^bits - 1 - narrow_range) in
    float32, as TensorFlow's FakeQuantWithMinMaxVars computes it.
    """
    attribute = "depthwise_kernel" if isinstance(inner, keras.layers.DepthwiseConv2D) else "kernel"
    for weight, quantizer, variables in getattr(wrapper, "_weight_vars", []):
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


def _linear_node(layer, name: str, inputs: list[str], wrapper=None) -> Node:
    activation = getattr(layer.activation, "__name__", "")
    if wrapper is None and activation != "linear":
        raise _unsupported(
            layer,
            f"activation '{activation}' is not quantized; quantize the model with "
            "qffs_tf.quantize_model (or use QuantReLU) before converting",
        )
    kernel = _effective_kernel(wrapper, layer) if wrapper is not None else None
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kind = "depthwise_conv2d"
        kernel = layer.depthwise_kernel.numpy() if kernel is None else kernel
    elif isinstance(layer, keras.layers.Conv2D):
        kind = "conv2d"
        kernel = layer.kernel.numpy() if kernel is None else kernel
        if layer.groups != 1:
            raise _unsupported(layer, "grouped convolutions are not supported")
    else:
        kind = "dense"
        kernel = layer.kernel.numpy() if kernel is None else kernel
    if kind != "dense":
        _check_channels_last(layer)
    out_channels = kernel.shape[-1] if kind != "depthwise_conv2d" else np.prod(kernel.shape[2:])
    bias = layer.bias.numpy() if layer.use_bias else np.zeros(out_channels, np.float32)
    attrs = {"kind": kind, "kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
    weight_scale = _weight_scale(wrapper, layer) if wrapper is not None else None
    if weight_scale is not None:
        attrs["weight_scale"] = weight_scale
    if kind != "dense":
        attrs.update(
            strides=_pair(layer.strides),
            padding=layer.padding,
            dilation_rate=_pair(layer.dilation_rate),
        )
    return Node(name, "linear", inputs, attrs)


def _batchnorm_node(layer, inputs: list[str]) -> Node:
    axis = layer.axis[0] if isinstance(layer.axis, list | tuple) else layer.axis
    rank = len(layer.input_shape)
    if len(np.atleast_1d(layer.axis)) != 1 or axis not in (-1, rank - 1):
        raise _unsupported(layer, "only normalisation over the last (channel) axis is supported")
    gamma = layer.gamma.numpy() if layer.scale else 1.0
    beta = layer.beta.numpy() if layer.center else 0.0
    scale = gamma / np.sqrt(layer.moving_variance.numpy() + layer.epsilon)
    offset = beta - layer.moving_mean.numpy() * scale
    channels = layer.moving_mean.shape[0]
    return Node(
        layer.name,
        "affine",
        inputs,
        {
            "scale": np.broadcast_to(scale, (channels,)).astype(np.float32),
            "offset": np.broadcast_to(offset, (channels,)).astype(np.float32),
        },
    )


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


def _layer_nodes(layer, inputs: list[str]) -> list[Node]:
    """Nodes for one QAT layer (a fused Conv+activation gives two)."""
    name = layer.name
    if isinstance(layer, keras.layers.InputLayer):
        return [
            Node(
                name,
                "input",
                [],
                {
                    "shape": tuple(layer.input_shape[0][1:])
                    if isinstance(layer.input_shape, list)
                    else tuple(layer.input_shape[1:])
                },
            )
        ]
    if isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2):
        inner = layer.layer
        spec = activation_spec(layer)
        if type(inner) in LINEAR_TYPES:
            linear = _linear_node(inner, f"{name}_linear" if spec else name, inputs, layer)
            if spec is None:
                return [linear]
            return [linear, _act_node(name, spec, [linear.name])]
        if spec is not None:
            return [_act_node(name, spec, inputs)]
        raise _unsupported(layer, f"unexpected tfmot wrapper around {type(inner).__name__}")
    if isinstance(layer, QuantReLU):
        return [_act_node(name, activation_spec(layer), inputs)]
    if type(layer) in LINEAR_TYPES:
        return [_linear_node(layer, name, inputs)]
    if type(layer) is keras.layers.BatchNormalization:
        return [_batchnorm_node(layer, inputs)]
    if type(layer) in (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D):
        _check_channels_last(layer)
        window = {
            "pool_size": _pair(layer.pool_size),
            "strides": _pair(layer.strides),
            "padding": layer.padding,
        }
        if type(layer) is keras.layers.MaxPooling2D:
            return [Node(name, "maxpool", inputs, window)]
        return [Node(name, "shape", inputs, {"op": "average_pooling2d", **window})]
    if type(layer) is keras.layers.GlobalAveragePooling2D:
        _check_channels_last(layer)
        if layer.keepdims:
            raise _unsupported(layer, "keepdims=True is not supported")
        return [Node(name, "shape", inputs, {"op": "global_average_pooling2d"})]
    if type(layer) is keras.layers.Flatten:
        return [Node(name, "shape", inputs, {"op": "flatten"})]
    if type(layer) is keras.layers.ZeroPadding2D:
        _check_channels_last(layer)
        return [
            Node(
                name,
                "shape",
                inputs,
                {"op": "zero_padding2d", "pad_width": tuple(map(tuple, layer.padding))},
            )
        ]
    if type(layer) is keras.layers.Add:
        return [Node(name, "add", inputs, {})]
    if type(layer) is keras.layers.Dropout:
        return [Node(name, "identity", inputs, {})]
    if type(layer) is keras.layers.Activation:
        if getattr(layer.activation, "__name__", "") == "linear":
            return [Node(name, "identity", inputs, {})]
        raise _unsupported(
            layer,
            f"activation '{layer.activation.__name__}' is not quantized; "
            "quantize the model with qffs_tf.quantize_model first",
        )
    if type(layer) is keras.layers.ReLU:
        raise _unsupported(
            layer,
            "this ReLU is not quantized; quantize the model with "
            "qffs_tf.quantize_model (or use QuantReLU) first",
        )
    raise _unsupported(layer)


def read_graph(model: keras.Model) -> tuple[list[Node], str]:
    """The model as a topologically ordered node list, and the name of the output node."""
    check_tf_keras_model(model, "QAT model")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConversionError(
            f"The model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
            "conversion supports exactly one image input and one logits output."
        )
    graph = (
        model
        if not isinstance(model, keras.Sequential)
        else keras.Model(model.inputs, model.outputs)
    )
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
    output = last_name[model.outputs[0]._keras_history.layer.name]
    return nodes, output
