"""`convert`: rewrite a trained QFFS QAT model into a spiking network (a tf_keras Model).

The QAT graph is read into a small list of nodes, simplified by exact rewrites, and rebuilt
from the layers in `qffs_tf.snn`:
- Dropout and linear Activations disappear;
- a BatchNormalization after a Conv/Dense folds into it; one after an activation folds into
  the next Dense or 'valid' conv; any other stays as a per-channel affine (still exact);
- a MaxPooling2D directly before an activation moves behind it (quantizer and max commute);
- each QFFS activation becomes a layer of spiking neurons of the chosen neuron model;
- the output layer integrates its charge, so logits at step t are the charge so far, and
  the readout applies the model's head activation (softmax, ...) to them.
"""

from __future__ import annotations

from qffs_tf._keras import keras
from qffs_tf.conversion.graph import Node
from qffs_tf.conversion.rewrites import simplified_graph
from qffs_tf.errors import ConversionError, InvalidArgumentError
from qffs_tf.snn import layers as spiking
from qffs_tf.snn.network import SpikingNetwork
from qffs_tf.snn.neuron_layer import NeuronCell, SpikingNeurons
from qffs_tf.snn.neurons import get_neuron
from qffs_tf.snn.timesteps import check_timesteps


def build_layer(node: Node, temporal: bool, constant_input: bool = False):
    """The spiking (or, with temporal=False, static) layer of a linear or shape node, and
    the weights to set once it is built (None for weightless layers)."""
    attrs = node.attrs
    if node.op == "linear":
        extra = {}
        if attrs["kind"] != "dense":
            extra = {
                "strides": attrs["strides"],
                "padding": attrs["padding"],
                "dilation_rate": attrs["dilation_rate"],
                "output_size": attrs.get("output_size"),
            }
        layer = spiking.SpikingLinear(
            attrs["kind"],
            attrs["kernel"].shape,
            temporal=temporal,
            constant_input=constant_input,
            name=node.name,
            **extra,
        )
        return layer, [attrs["kernel"], attrs["bias"]]
    if node.op == "affine":
        layer = spiking.SpikingAffine(
            temporal=temporal, constant_input=constant_input, name=node.name
        )
        return layer, [attrs["scale"], attrs["offset"]]
    if node.op == "maxpool":
        if attrs.get("global_pool"):
            return spiking.SpikingMaxPool2D(
                temporal=temporal, global_pool=True, name=node.name
            ), None
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
    if node.op == "add":
        return spiking.SpikingAdd(temporal=temporal, name=node.name), None
    if node.op == "concat":
        return spiking.SpikingConcatenate(attrs["axis"], temporal=temporal, name=node.name), None
    raise ConversionError(f"Node '{node.name}' has op '{node.op}', which no layer implements.")


def build_snn(nodes: list[Node], output: str, timesteps: int, neuron="qffs") -> keras.Model:
    """Assemble the spiking Keras model from simplified nodes.

    Parameters
    ----------
    nodes, output
        From `simplified_graph`.
    timesteps : int
        Window length T.
    neuron : str or NeuronModel
        The neuron model every activation becomes.

    Returns
    -------
    tf_keras.Model
        Image in, the readout after T steps out.
    """
    model = get_neuron(neuron)
    constant_input = model.input_coding == "constant"
    tensors: dict[str, tuple[object, bool]] = {}  # name -> (tensor, is temporal)
    model_input = None

    def temporal_input(name: str):
        tensor, is_temporal = tensors[name]
        if is_temporal:
            return tensor
        suffix = "every_step" if constant_input else "at_step0"
        lifted = spiking.ToTemporal(
            timesteps, constant_input=constant_input, name=f"{name}_{suffix}"
        )(tensor)
        tensors[name] = (lifted, True)
        return lifted

    head = "linear"
    for node in nodes:
        if node.op == "input":
            model_input = keras.Input(node.attrs["shape"], name=node.name)
            tensors[node.name] = (model_input, False)
            continue
        if node.op == "head":
            head = node.attrs["activation"]
            tensors[node.name] = tensors[node.inputs[0]]
            continue
        in_temporal = [tensors[name][1] for name in node.inputs]
        if node.op == "act":
            source = temporal_input(node.inputs[0])
            cell = NeuronCell(
                model,
                node.attrs["threshold"],
                node.attrs["levels"],
                source.shape[2:],
                name=f"{node.name}_cell",
            )
            layer = SpikingNeurons(
                cell,
                source=node.attrs["source"],
                pooled_by=node.attrs.get("pooled_by", ""),
                name=node.name,
            )
            tensors[node.name] = (layer(source), True)
            continue
        temporal = any(in_temporal)
        if temporal:
            inputs = [temporal_input(name) for name in node.inputs]
        else:
            inputs = [tensors[name][0] for name in node.inputs]
        layer, weights = build_layer(node, temporal, constant_input)
        tensors[node.name] = (layer(inputs if len(inputs) > 1 else inputs[0]), temporal)
        if weights is not None:
            layer.set_weights(weights)
    charges = temporal_input(output)
    logits = spiking.Integrate(mean=constant_input, name=f"{output}_integrate")(charges)
    final = spiking.Readout(head, name=f"{output}_readout")([logits, model_input])
    return SpikingNetwork(model_input, final, name="snn")


ARITHMETICS = ("float", "integer")


def convert(
    qat_model: keras.Model,
    timesteps: int | str = 8,
    neuron="qffs",
    *,
    noise_suppression: bool | None = None,
    arithmetic: str = "float",
    calibration_data=None,
) -> keras.Model:
    """Convert a QFFS QAT model into a spiking tf_keras Model.

    The SNN takes the same images as the QAT model and returns, after `timesteps` steps, what
    the QAT model returns (logits, or probabilities for a softmax head): `snn.predict(x)`.
    `qffs_tf.simulate` gives the logits at every step.

    Parameters
    ----------
    qat_model : tf_keras.Model
        A model quantized with `qffs_tf.quantize_model` (or built with `QuantReLU`), trained.
    timesteps : int or "auto"
        Window length T (1 to 100,000), or "auto": the smallest T at which every image of
        `calibration_data` is quiet, plus a margin (`qffs_tf.choose_timesteps`); the
        choice is attached to the SNN as `snn.qffs_timesteps_choice`.
    neuron : str or NeuronModel
        "qffs" (negative spikes and a cap: exact), "plain_if" (no negative spikes: the
        same-coding ablation), "rate" (conventional rate coding: the baseline), another
        registered name, or a `qffs_tf.snn.NeuronModel` instance.
    noise_suppression : bool, optional
        Older spelling: False means neuron="plain_if", True means neuron="qffs".
    arithmetic : {"float", "integer"}
        "integer" (models quantized with `weight_bits`): unit spikes, integer weights and
        exact integer accumulators (QFFS.md section 6); the final counts then equal
        `qffs_tf.integer_reference(qat_model)` bit for bit. See
        `qffs_tf.conversion.integer` for what it refuses.
    calibration_data : array, optional
        Images for timesteps="auto".

    Returns
    -------
    tf_keras.Model
        The SNN.

    Raises
    ------
    ConversionError
        A layer or topology the conversion cannot carry (the message names it and the fix),
        or an unknown neuron model.
    InvalidArgumentError
        A bad `timesteps`.

    Example
    -------
    >>> snn = qffs_tf.convert(qat_model, timesteps=8)
    >>> logits = snn.predict(x_test)
    """
    if arithmetic not in ARITHMETICS:
        raise InvalidArgumentError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic!r}.")
    if noise_suppression is not None:
        neuron = "qffs" if noise_suppression else "plain_if"
    if isinstance(timesteps, str) and timesteps == "auto":
        from qffs_tf.conversion.auto_timesteps import convert_auto

        return convert_auto(qat_model, calibration_data, neuron=neuron, arithmetic=arithmetic)
    timesteps = check_timesteps(timesteps)
    if arithmetic == "integer":
        from qffs_tf.conversion.integer import convert_integer

        return convert_integer(qat_model, timesteps, neuron)
    model = get_neuron(neuron)
    if getattr(model, "arithmetic", "float") != "float":
        raise ConversionError(f"Neuron model '{model.name}' needs arithmetic='{model.arithmetic}'.")
    nodes, output = simplified_graph(qat_model)
    return build_snn(nodes, output, timesteps, model)
