"""Integer-exact conversion (QFFS.md section 6) and the integer reference QANN.

A model quantized with `weight_bits` has kernels W = alpha * W_int (tfmot's fake-quantized
kernel is exactly that). Between two neuron layers the network is then rewritten as

    integer ops on unit spikes (W_int, sum-pooling, max-pooling on counts, padding, flatten)
    -> one exact accumulator A_p per input path -> u = sum_p a_p * A_p + b

where a_p (per channel) collects everything that is not an integer: alpha, the spike
amplitude theta of the source, BatchNorm's gamma/sigma, 1/pool area and 1/theta of the
neurons fed; b collects the biases and BatchNorm shifts. The walk below builds that form
once per node and hands it to one of two back ends: the SNN (temporal layers, `qffs_tf.snn`)
or the integer reference QANN (the same layers in static form, fed with final levels). The
static part, everything computed from the analog image before the first neurons, is the same
static layers on both sides.

What it refuses, each with a ConversionError naming the layer: kernels without weight
quantization; a per-channel scale in front of a channel-mixing op (a BatchNormalization after
an activation, two linear layers without an activation between them); an offset in front of
zero padding; average pooling with 'same' padding; and integer sums that could reach 2^24.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from qffs_tf._keras import keras
from qffs_tf.conversion.builder import build_layer
from qffs_tf.conversion.graph import Node, read_graph
from qffs_tf.conversion.rewrites import _move_maxpool_behind_activation, _remove_identities
from qffs_tf.errors import ConversionError
from qffs_tf.snn import layers as spiking
from qffs_tf.snn.integer import ExactIntegrate, ExactMembrane, IntegerQFFSNeuron, LevelOf, SumPool
from qffs_tf.snn.network import SpikingNetwork
from qffs_tf.snn.neuron_layer import NeuronCell, SpikingNeurons

INTEGER_LIMIT = 2**24  # float32 adds integers exactly below this magnitude
# |W - alpha * round(W / alpha)| allowed, in weight steps: tfmot's fake-quantized kernel is
# q * alpha + min in float32, a few ulp of W (|W| <= 127 alpha: ~1e-5 steps) off the multiple;
# a kernel that was not quantized is off by up to 0.5 steps.
_WEIGHT_TOLERANCE = 2.0**-12


@dataclasses.dataclass
class _Term:
    """One input path: an integer-valued tensor (or the analog static value) and its weight."""

    tensor: Any
    scale: np.ndarray  # float64 (features,): QANN units per unit of the tensor
    bound: float | None  # max |value| the integer tensor can take; None: the static value


@dataclasses.dataclass
class _Form:
    """A value of the QANN as sum_p scale_p * tensor_p + offset (per last-axis feature)."""

    terms: list[_Term]
    offset: np.ndarray  # float64 (features,)


def integer_graph(qat_model: keras.Model) -> tuple[list[Node], str]:
    """The QAT model's nodes for integer conversion: identities out, max-pools moved behind
    activations, BatchNorm left in place (the form algebra folds it per channel)."""
    nodes, output = read_graph(qat_model)
    if not any(node.op == "act" for node in nodes):
        raise ConversionError(
            "The model has no QFFS activation: quantize it with qffs_tf.quantize_model "
            "(or build it with QuantReLU layers) and train it before converting."
        )
    nodes, output = _remove_identities(nodes, output)
    return _move_maxpool_behind_activation(nodes, output), output


def integer_kernel(node: Node) -> tuple[np.ndarray, np.ndarray]:
    """(W_int, alpha per output channel) of a linear node: W = alpha * W_int.

    Raises ConversionError when the node's kernel was not weight-quantized.
    """
    attrs = node.attrs
    alpha = attrs.get("weight_scale")
    if alpha is None:
        raise ConversionError(
            f"arithmetic='integer' needs integer weights, but layer '{node.name}' has float "
            "weights: quantize the model with weight_bits (qffs_tf.quantize_model(..., "
            "weight_bits=8), bin/train --weight_bits=8) or use arithmetic='float'."
        )
    kernel = attrs["kernel"].astype(np.float64)
    alpha = np.asarray(alpha, np.float64)
    if np.any(alpha <= 0):
        raise ConversionError(f"Layer '{node.name}' has a non-positive weight step {alpha}.")
    integers = np.round(kernel / alpha)
    error = np.abs(kernel - integers * alpha) / np.broadcast_to(alpha, kernel.shape)
    if error.max(initial=0.0) > _WEIGHT_TOLERANCE:
        raise ConversionError(
            f"Layer '{node.name}': the kernel is not a multiple of its weight step (max "
            f"deviation {error.max():.3g} steps); integer conversion needs tfmot's "
            "fake-quantized kernel."
        )
    if attrs["kind"] == "depthwise_conv2d":
        per_output = np.broadcast_to(alpha, kernel.shape[2:]).reshape(-1)
    else:
        per_output = np.broadcast_to(alpha, kernel.shape[-1:])
    return integers.astype(np.float32), per_output.astype(np.float64)


def _column_sums(kind: str, integers: np.ndarray) -> np.ndarray:
    """sum |W_int| over each output's inputs (the growth of an integer bound)."""
    absolute = np.abs(integers.astype(np.float64))
    if kind == "dense":
        return absolute.sum(axis=0)
    if kind == "conv2d":
        return absolute.sum(axis=(0, 1, 2))
    return absolute.sum(axis=(0, 1)).reshape(-1)


def _offset_through(node: Node, offset: np.ndarray) -> np.ndarray:
    """A constant per-channel input offset through a linear node (exact: it is a constant)."""
    kernel = node.attrs["kernel"].astype(np.float64)
    kind = node.attrs["kind"]
    if not np.any(offset):
        channels = kernel.shape[-1] if kind != "depthwise_conv2d" else np.prod(kernel.shape[2:])
        return np.zeros(int(channels))
    if kind != "dense" and node.attrs["padding"] != "valid":
        raise ConversionError(
            f"arithmetic='integer': layer '{node.name}' pads with zeros, which do not carry the "
            "constant offset (a bias or BatchNorm shift) of its input; use padding='valid', "
            "move the BatchNormalization before the activation, or use arithmetic='float'."
        )
    if kind == "dense":
        return offset @ kernel
    if kind == "conv2d":
        return np.einsum("hwio,i->o", kernel, offset)
    return np.einsum("hwcm,c->cm", kernel, offset).reshape(-1)


class _Walk:
    """One walk over the nodes that builds the SNN ("snn"), the integer reference QANN
    ("reference"), or the reference with every activation's levels given as inputs ("local":
    each layer's levels recomputed from given upstream levels)."""

    def __init__(self, nodes: list[Node], output: str, mode: str, timesteps: int = 1):
        self.mode = mode
        self.temporal = mode == "snn"
        self.timesteps = timesteps
        self.static: dict[str, Any] = {}
        self.forms: dict[str, _Form] = {}
        self.levels: dict[str, Any] = {}  # reference: activation -> levels tensor
        self.given: dict[str, Any] = {}  # local: activation -> input of given levels
        self.head = "linear"
        handlers = {
            "linear": self._linear,
            "affine": self._affine,
            "maxpool": self._maxpool,
            "shape": self._shape,
            "add": self._add,
        }
        for node in nodes:
            if node.op == "input":
                self.image = keras.Input(node.attrs["shape"], name=node.name)
                self.static[node.name] = self.image
            elif node.op == "head":
                self.head = node.attrs["activation"]
                self._alias(node.name, node.inputs[0])
            elif node.op == "act":
                self._act(node)
            elif all(name in self.static for name in node.inputs):
                self._static(node)
            elif node.op in handlers:
                self.forms[node.name] = handlers[node.op](
                    node, [self._form(n) for n in node.inputs]
                )
            else:
                raise ConversionError(f"Node '{node.name}' has op '{node.op}', not supported.")
        self.output = self._finish(output)

    # ------------------------------------------------------------------ helpers

    def _alias(self, name: str, source: str) -> None:
        if source in self.static:
            self.static[name] = self.static[source]
        else:
            self.forms[name] = self.forms[source]

    def _form(self, name: str) -> _Form:
        if name in self.forms:
            return self.forms[name]
        tensor = self.static[name]
        features = int(tensor.shape[-1])
        return _Form([_Term(tensor, np.ones(features), None)], np.zeros(features))

    def _static(self, node: Node) -> None:
        """Before the first neurons: the static layers, computed once from the analog image."""
        layer, weights = build_layer(node, temporal=False)
        inputs = [self.static[name] for name in node.inputs]
        self.static[node.name] = layer(inputs if len(inputs) > 1 else inputs[0])
        if weights is not None:
            layer.set_weights(weights)

    @staticmethod
    def _check_bound(node: Node, bound: float) -> float:
        if bound >= INTEGER_LIMIT:
            raise ConversionError(
                f"arithmetic='integer': the integer sums at layer '{node.name}' can reach "
                f"{bound:.3g}, beyond 2^24 where float32 stops adding integers exactly; use "
                "fewer weight or activation bits, or arithmetic='float'."
            )
        return bound

    @staticmethod
    def _integer_terms(node: Node, form: _Form) -> list[_Term]:
        for term in form.terms:
            if term.bound is None:
                raise ConversionError(
                    f"arithmetic='integer': layer '{node.name}' receives both the analog input "
                    "and spikes; integer conversion needs every analog path to end at an "
                    "activation or the output. Use arithmetic='float'."
                )
        return form.terms

    def _spatial(self, tensor) -> int:
        shape = tensor.shape[2:-1] if self.temporal else tensor.shape[1:-1]
        return int(np.prod([int(d) for d in shape])) if len(shape) else 1

    # ------------------------------------------------------------------ node kinds

    def _linear(self, node: Node, forms: list[_Form]) -> _Form:
        (form,) = forms
        integers, alpha = integer_kernel(node)
        kind = node.attrs["kind"]
        groups: list[_Term] = []  # terms with identical scales share one linear op
        for term in self._integer_terms(node, form):
            if kind != "depthwise_conv2d" and np.ptp(term.scale) != 0:
                raise ConversionError(
                    f"arithmetic='integer': the inputs of layer '{node.name}' carry a different "
                    "scale per channel (a BatchNormalization after an activation, or a linear "
                    "layer without an activation before it), so its sums are not integer sums. "
                    "Put BatchNormalization before the activation, or use arithmetic='float'."
                )
            same = next((g for g in groups if np.array_equal(g.scale, term.scale)), None)
            if same is None:
                groups.append(_Term(term.tensor, term.scale, term.bound))
                continue
            name = f"{node.name}_merge{len(groups)}"
            same.tensor = spiking.SpikingAdd(temporal=self.temporal, name=name)(
                [same.tensor, term.tensor]
            )
            same.bound += term.bound
        growth = _column_sums(kind, integers).max(initial=0.0)
        terms = []
        for index, group in enumerate(groups):
            name = node.name if len(groups) == 1 else f"{node.name}_{index}"
            attrs = {**node.attrs, "kernel": integers, "bias": np.zeros(alpha.shape, np.float32)}
            layer, weights = build_layer(Node(name, "linear", node.inputs, attrs), self.temporal)
            tensor = layer(group.tensor)
            layer.set_weights(weights)
            if kind == "depthwise_conv2d":
                multiplier = integers.shape[3]
                scale = np.repeat(group.scale, multiplier) * alpha
            else:
                scale = group.scale[0] * alpha
            bound = self._check_bound(node, group.bound * growth)
            terms.append(_Term(tensor, scale, bound))
        offset = _offset_through(node, form.offset) + node.attrs["bias"].astype(np.float64)
        return _Form(terms, offset)

    def _affine(self, node: Node, forms: list[_Form]) -> _Form:
        (form,) = forms
        scale = node.attrs["scale"].astype(np.float64)
        offset = node.attrs["offset"].astype(np.float64)
        terms = [_Term(t.tensor, t.scale * scale, t.bound) for t in form.terms]
        return _Form(terms, form.offset * scale + offset)

    def _maxpool(self, node: Node, forms: list[_Form]) -> _Form:
        (form,) = forms
        terms = self._integer_terms(node, form)
        if len(terms) != 1 or np.any(terms[0].scale <= 0):
            raise ConversionError(
                f"arithmetic='integer': max-pooling '{node.name}' needs one input path with a "
                "positive scale per channel (max and a negative scale do not commute); place "
                "it directly after an activation, or use arithmetic='float'."
            )
        layer, _ = build_layer(node, self.temporal)
        term = terms[0]
        return _Form([_Term(layer(term.tensor), term.scale, term.bound)], form.offset)

    def _shape(self, node: Node, forms: list[_Form]) -> _Form:
        (form,) = forms
        op = node.attrs["op"]
        terms = self._integer_terms(node, form)
        out, offset = [], form.offset
        for index, term in enumerate(terms):
            name = node.name if len(terms) == 1 else f"{node.name}_{index}"
            scale, bound = term.scale, term.bound
            if op == "zero_padding2d":
                if np.any(form.offset):
                    raise ConversionError(
                        f"arithmetic='integer': zero padding '{node.name}' follows a constant "
                        "offset (a bias or BatchNorm shift) that the padded zeros would not "
                        "carry; use arithmetic='float'."
                    )
                layer = build_layer(Node(name, "shape", node.inputs, node.attrs), self.temporal)[0]
            elif op == "flatten":
                repeats = self._spatial(term.tensor)
                scale = np.tile(scale, repeats)
                layer = build_layer(Node(name, "shape", node.inputs, node.attrs), self.temporal)[0]
            elif op == "average_pooling2d":
                if node.attrs["padding"] != "valid":
                    raise ConversionError(
                        f"arithmetic='integer': average pooling '{node.name}' has 'same' "
                        "padding (a divisor that varies at the border); use padding='valid' or "
                        "arithmetic='float'."
                    )
                area = int(np.prod(node.attrs["pool_size"]))
                scale, bound = scale / area, bound * area
                layer = SumPool(
                    op, node.attrs["pool_size"], node.attrs["strides"], self.temporal, name=name
                )
            else:  # global average pooling
                area = self._spatial(term.tensor)
                scale, bound = scale / area, bound * area
                layer = SumPool(op, temporal=self.temporal, name=name)
            out.append(_Term(layer(term.tensor), scale, self._check_bound(node, bound)))
        if op == "flatten" and out:
            offset = np.tile(offset, self._spatial(terms[0].tensor))
        return _Form(out, offset)

    def _add(self, node: Node, forms: list[_Form]) -> _Form:
        terms = [term for form in forms for term in form.terms]
        return _Form(terms, sum(form.offset for form in forms))

    # ------------------------------------------------------------------ membranes

    def _membrane(self, form: _Form, theta: float, name: str, cls=ExactMembrane):
        """The exact membrane (or logits) of a form, in units of theta."""
        paths = []
        for index, term in enumerate(form.terms):
            tensor = term.tensor
            if term.bound is None and self.temporal:  # the analog value enters at step 0
                tensor = spiking.ToTemporal(self.timesteps, name=f"{name}_at_step0_{index}")(tensor)
            paths.append(tensor)
        options = {} if cls is ExactIntegrate else {"temporal": self.temporal}
        layer = cls(len(paths), name=name, **options)
        value = layer(paths if len(paths) > 1 else paths[0])
        scales = np.stack([term.scale / theta for term in form.terms]).astype(np.float32)
        layer.set_weights([scales, (form.offset / theta).astype(np.float32)])
        return value

    def _act(self, node: Node) -> None:
        form = self._form(node.inputs[0])
        theta, levels = float(node.attrs["threshold"]), int(node.attrs["levels"])
        membrane = self._membrane(form, theta, f"{node.name}_membrane")
        if self.temporal:
            cell = NeuronCell(
                IntegerQFFSNeuron(), theta, levels, membrane.shape[2:], name=f"{node.name}_cell"
            )
            out = SpikingNeurons(
                cell,
                source=node.attrs["source"],
                pooled_by=node.attrs.get("pooled_by", ""),
                name=node.name,
            )(membrane)
        else:
            out = self.levels[node.name] = LevelOf(levels, name=node.name)(membrane)
            if self.mode == "local":
                out = self.given[node.name] = keras.Input(out.shape[1:], name=f"{node.name}_given")
        features = int(out.shape[-1])
        self.forms[node.name] = _Form(
            [_Term(out, np.full(features, theta), levels)], np.zeros(features)
        )

    def _finish(self, output: str):
        form = self._form(output)
        if self.temporal:
            logits = self._membrane(form, 1.0, f"{output}_integrate", ExactIntegrate)
            return spiking.Readout(self.head, name=f"{output}_readout")([logits, self.image])
        return self._membrane(form, 1.0, f"{output}_logits")


def build_integer_snn(nodes: list[Node], output: str, timesteps: int) -> keras.Model:
    """The integer-mode SNN from `integer_graph` nodes (image in, readout after T steps out)."""
    walk = _Walk(nodes, output, "snn", timesteps)
    return SpikingNetwork(walk.image, walk.output, name="snn")


def convert_integer(qat_model: keras.Model, timesteps: int, neuron="qffs") -> keras.Model:
    """`qffs_tf.convert(..., arithmetic="integer")`: see the module docstring."""
    name = getattr(neuron, "name", neuron)
    if name not in ("qffs", IntegerQFFSNeuron.name):
        raise ConversionError(
            f"arithmetic='integer' implements the QFFS neuron only; neuron={neuron!r} needs "
            "arithmetic='float'."
        )
    nodes, output = integer_graph(qat_model)
    return build_integer_snn(nodes, output, timesteps)
