"""`convert`: rewrite a trained QFFS QAT model into a spiking network (a tf_keras Model).

The QAT graph is read into a small list of nodes, simplified by exact rewrites, and rebuilt
from the layers in `qffs_tf.spiking`:
- Dropout and linear Activations disappear;
- a BatchNormalization after a Conv/Dense folds into it; one after an activation folds into
  the next Dense or 'valid' conv; any other stays as a per-channel affine (still exact);
- a MaxPooling2D directly before an activation moves behind it (quantizer and max commute);
- each QFFS activation becomes a layer of IF neurons (threshold = learned step size);
- the output layer integrates its charge, so logits at step t are the charge so far.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_model_optimization as tfmot

from qffs_tf import spiking
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


def _consumers(nodes: list[Node], name: str) -> list[Node]:
    return [node for node in nodes if name in node.inputs]


def _replace_input(nodes: list[Node], old: str, new: str) -> None:
    for node in nodes:
        node.inputs = [new if name == old else name for name in node.inputs]


def _remove_identities(nodes: list[Node], output: str) -> tuple[list[Node], str]:
    kept = []
    for node in nodes:
        if node.op == "identity":
            _replace_input(nodes, node.name, node.inputs[0])
            if output == node.name:
                output = node.inputs[0]
        else:
            kept.append(node)
    return kept, output


def _fold_affine_backward(nodes: list[Node], output: str) -> tuple[list[Node], str]:
    """Conv/Dense -> BN  ==>  Conv/Dense with W*scale, (b*scale + offset)."""
    by_name = {node.name: node for node in nodes}
    removed = set()
    for node in nodes:
        if node.op != "affine":
            continue
        source = by_name[node.inputs[0]]
        if source.op != "linear" or len(_consumers(nodes, source.name)) != 1:
            continue
        scale, offset = node.attrs["scale"], node.attrs["offset"]
        kernel = source.attrs["kernel"]
        if source.attrs["kind"] == "depthwise_conv2d":
            kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
        else:
            kernel = kernel * scale
        source.attrs["kernel"] = kernel.astype(np.float32)
        source.attrs["bias"] = (source.attrs["bias"] * scale + offset).astype(np.float32)
        _replace_input(nodes, node.name, source.name)
        if output == node.name:
            output = source.name
        removed.add(node.name)
    return [node for node in nodes if node.name not in removed], output


def _fold_affine_forward(nodes: list[Node], output: str) -> tuple[list[Node], str]:
    """act -> BN -> Dense/'valid' conv  ==>  act -> Dense/conv with scaled rows, shifted bias."""
    by_name = {node.name: node for node in nodes}
    removed = set()
    for node in nodes:
        if node.op != "affine" or node.name == output:
            continue
        consumers = _consumers(nodes, node.name)
        if len(consumers) != 1 or consumers[0].op != "linear":
            continue
        target = consumers[0]
        kind = target.attrs["kind"]
        if kind != "dense" and target.attrs["padding"] != "valid":
            continue  # padding zeros would not see the offset: keep the affine (exact too)
        scale, offset = node.attrs["scale"], node.attrs["offset"]
        kernel = target.attrs["kernel"]
        if kind == "dense":
            bias_shift = offset @ kernel
            kernel = kernel * scale[:, None]
        elif kind == "conv2d":
            bias_shift = np.einsum("hwio,i->o", kernel, offset)
            kernel = kernel * scale[None, None, :, None]
        else:
            bias_shift = np.einsum("hwcm,c->cm", kernel, offset).reshape(-1)
            kernel = kernel * scale[None, None, :, None]
        target.attrs["kernel"] = kernel.astype(np.float32)
        target.attrs["bias"] = (target.attrs["bias"] + bias_shift).astype(np.float32)
        _replace_input(nodes, node.name, node.inputs[0])
        removed.add(node.name)
        del by_name[node.name]
    return [node for node in nodes if node.name not in removed], output


def _move_maxpool_behind_activation(nodes: list[Node], output: str) -> list[Node]:
    """x -> MaxPool -> act  ==>  x -> act -> MaxPool (exact: the quantizer is monotone)."""
    order = {node.name: index for index, node in enumerate(nodes)}
    for pool in [node for node in nodes if node.op == "maxpool"]:
        consumers = _consumers(nodes, pool.name)
        if len(consumers) != 1 or consumers[0].op != "act" or pool.name == output:
            continue
        act = consumers[0]
        act_consumers = _consumers(nodes, act.name)
        act.inputs = list(pool.inputs)
        pool.inputs = [act.name]
        for consumer in act_consumers:
            consumer.inputs = [pool.name if name == act.name else name for name in consumer.inputs]
        act.attrs["pooled_by"] = pool.name
        order[act.name], order[pool.name] = order[pool.name], order[act.name]
    return sorted(nodes, key=lambda node: order[node.name])


def simplify(nodes: list[Node], output: str) -> tuple[list[Node], str]:
    """All exact rewrites, in order."""
    nodes, output = _remove_identities(nodes, output)
    nodes, output = _fold_affine_backward(nodes, output)
    nodes = _move_maxpool_behind_activation(nodes, output)
    nodes, output = _fold_affine_forward(nodes, output)
    return nodes, output


def simplified_graph(qat_model: keras.Model) -> tuple[list[Node], str]:
    """The QAT model's nodes after every exact rewrite; it must hold a QFFS activation."""
    nodes, output = read_graph(qat_model)
    if not any(node.op == "act" for node in nodes):
        raise ConversionError(
            "The model has no QFFS activation: quantize it with qffs_tf.quantize_model "
            "(or build it with QuantReLU layers) and train it before converting."
        )
    return simplify(nodes, output)


def _build_layer(node: Node, temporal: bool):
    attrs = node.attrs
    if node.op == "linear":
        extra = {}
        if attrs["kind"] != "dense":
            extra = {
                "strides": attrs["strides"],
                "padding": attrs["padding"],
                "dilation_rate": attrs["dilation_rate"],
            }
        layer = spiking.SpikingLinear(
            attrs["kind"], attrs["kernel"].shape, temporal=temporal, name=node.name, **extra
        )
        return layer, [attrs["kernel"], attrs["bias"]]
    if node.op == "affine":
        return spiking.SpikingAffine(temporal=temporal, name=node.name), [
            attrs["scale"],
            attrs["offset"],
        ]
    if node.op == "maxpool":
        return spiking.SpikingMaxPool2D(
            attrs["pool_size"],
            attrs["strides"],
            attrs["padding"],
            temporal=temporal,
            name=node.name,
        ), None
    if node.op == "shape":
        options = {key: value for key, value in attrs.items() if key != "op"}
        return spiking.SpikingShapeOp(
            attrs["op"], temporal=temporal, name=node.name, **options
        ), None
    raise AssertionError(node.op)


def build_snn(
    nodes: list[Node], output: str, timesteps: int, noise_suppression: bool
) -> keras.Model:
    """Assemble the spiking Keras model from simplified nodes."""
    tensors: dict[str, tuple[object, bool]] = {}  # name -> (tensor, is temporal)
    model_input = None

    def temporal_input(name: str):
        tensor, is_temporal = tensors[name]
        if is_temporal:
            return tensor
        lifted = spiking.ToTemporal(timesteps, name=f"{name}_at_step0")(tensor)
        tensors[name] = (lifted, True)
        return lifted

    for node in nodes:
        if node.op == "input":
            model_input = keras.Input(node.attrs["shape"], name=node.name)
            tensors[node.name] = (model_input, False)
            continue
        in_temporal = [tensors[name][1] for name in node.inputs]
        if node.op == "act":
            source = temporal_input(node.inputs[0])
            cell = spiking.IFCell(
                node.attrs["threshold"],
                node.attrs["levels"],
                source.shape[2:],
                noise_suppression,
                name=f"{node.name}_cell",
            )
            layer = spiking.IFNeurons(
                cell,
                source=node.attrs["source"],
                pooled_by=node.attrs.get("pooled_by", ""),
                name=node.name,
            )
            tensors[node.name] = (layer(source), True)
            continue
        if node.op == "add":
            if any(in_temporal):
                inputs = [temporal_input(name) for name in node.inputs]
            else:
                inputs = [tensors[name][0] for name in node.inputs]
            layer = spiking.SpikingAdd(temporal=any(in_temporal), name=node.name)
            tensors[node.name] = (layer(inputs), any(in_temporal))
            continue
        temporal = in_temporal[0]
        layer, weights = _build_layer(node, temporal)
        tensors[node.name] = (layer(tensors[node.inputs[0]][0]), temporal)
        if weights is not None:
            layer.set_weights(weights)
    charges = temporal_input(output)
    logits = spiking.Integrate(name=f"{output}_integrate")(charges)
    final = spiking.FinalStep(name=f"{output}_final")(logits)
    return keras.Model(model_input, final, name="snn")


def convert(
    qat_model: keras.Model,
    timesteps: int = 8,
    noise_suppression: bool = True,
) -> keras.Model:
    """Convert a QFFS QAT model into a spiking tf_keras Model.

    The SNN takes the same images as the QAT model and returns the logits after `timesteps`
    steps (`snn.predict(x)`); `qffs_tf.simulate` gives them at every step. With
    `noise_suppression=False` the neurons emit no negative spikes (plain IF), to measure the
    'occasional noise' QFFS removes.
    """
    if isinstance(timesteps, bool) or int(timesteps) != timesteps or timesteps < 1:
        raise ValueError(f"timesteps must be a whole number >= 1, got {timesteps!r}")
    nodes, output = simplified_graph(qat_model)
    return build_snn(nodes, output, int(timesteps), bool(noise_suppression))


def timesteps_of(snn: keras.Model) -> int:
    """The number of time steps a converted SNN runs for."""
    for layer in snn.layers:
        if isinstance(layer, spiking.ToTemporal):
            return layer.timesteps
    raise ConversionError("This model is not a qffs_tf SNN (no ToTemporal layer).")


def with_timesteps(snn: keras.Model, timesteps: int) -> keras.Model:
    """The same SNN (same weights) running for another number of steps."""
    if timesteps == timesteps_of(snn):
        return snn
    config = snn.get_config()
    for entry in config["layers"]:
        if entry["class_name"] == "ToTemporal" or entry["class_name"].endswith(">ToTemporal"):
            entry["config"]["timesteps"] = int(timesteps)
    with keras.utils.custom_object_scope(spiking.custom_objects()):
        clone = keras.Model.from_config(config)
    clone.set_weights(snn.get_weights())
    return clone
