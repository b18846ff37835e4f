"""`convert`: rewrite a trained QFFS QAT model into a spiking network (a tf_keras Model).

The QAT graph is read into a small list of nodes, simplified by exact rewrites, and rebuilt
from the layers in `qffs_tf.snn`:
- Dropout and linear Activations disappear;
- a BatchNormalization after a Conv/Dense folds into it; one after an activation folds into
  the next Dense or 'valid' conv; any other stays as a per-channel affine (still exact);
- a MaxPooling2D directly before an activation moves behind it (quantizer and max commute);
- each QFFS activation becomes a layer of IF neurons (threshold = learned step size);
- the output layer integrates its charge, so logits at step t are the charge so far.
"""

from __future__ import annotations

from qffs_tf._keras import keras
from qffs_tf.conversion.graph import Node
from qffs_tf.conversion.rewrites import simplified_graph
from qffs_tf.snn import layers as spiking


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
