"""Applying the registry (rules.py) to a model: what to quantize, and what to refuse.

`find_problems` lists every layer call that cannot be exact with its reason; `check_graph` /
`check_model` turn them into one UnsupportedModelError; `quantized_activation` tells
quantize_model which activation of a layer becomes a QFFS activation.
"""

from __future__ import annotations

from qffs_tf._keras import keras
from qffs_tf.errors import UnsupportedModelError
from qffs_tf.quantization.graph import FlatGraph, LayerCall, flatten_graph
from qffs_tf.quantization.quantizer import QuantReLU
from qffs_tf.quantization.rules import (
    HEAD_ACTIVATIONS,
    QUANTIZED_ACTIVATIONS,
    TF_OP_ACTIVATIONS,
    ActivationUse,
    activation_name,
    activation_reason,
    rule_for,
    supported_layers,
    tf_op_reason,
    unsupported_reason,
)

__all__ = [
    "ActivationUse",
    "HEAD_ACTIVATIONS",
    "QUANTIZED_ACTIVATIONS",
    "layer_activation",
    "quantized_activation",
    "find_problems",
    "check_graph",
    "check_model",
    "rule_for",
    "supported_layers",
]

L = keras.layers


def layer_activation(layer: keras.layers.Layer) -> ActivationUse | None:
    """The nonlinearity `layer` applies (fused or as its own job), or None for none.

    Parameters
    ----------
    layer : keras.layers.Layer
        Any layer.

    Returns
    -------
    ActivationUse or None
        ``ActivationUse("relu", 6.0)`` for ``ReLU(max_value=6)``, ``ActivationUse("relu6",
        6.0)`` for ``Activation("relu6")`` or ``activation=tf.nn.relu6``, the activation's
        name for Activation layers and linear layers, "softmax" for Softmax; None for layers
        without an activation (and "linear" ones).

    Example
    -------
    >>> layer_activation(keras.layers.ReLU(max_value=6.0))
    ActivationUse(name='relu', max_value=6.0)
    """
    if type(layer) is L.ReLU:
        config = layer.get_config()
        cap = config.get("max_value")
        return ActivationUse("relu", None if cap is None else float(cap))
    if type(layer) is L.Softmax:
        return ActivationUse("softmax")
    if type(layer).__name__ == "TFOpLambda":
        function = layer.get_config().get("function", "")
        if function in TF_OP_ACTIVATIONS:
            name = TF_OP_ACTIVATIONS[function]
            return ActivationUse(name, QUANTIZED_ACTIVATIONS[name])
        return None
    activation = getattr(layer, "activation", None)
    rule = rule_for(layer)
    if activation is None or rule is None or rule.role == "passive":
        return None
    name = activation_name(activation)
    if name == "linear":
        return None
    return ActivationUse(name, QUANTIZED_ACTIVATIONS.get(name))


def quantized_activation(call: LayerCall, head: bool) -> ActivationUse | None:
    """The activation of `call` that becomes a QFFS activation, or None.

    Parameters
    ----------
    call : LayerCall
        A call of a supported layer (``find_problems`` found nothing wrong with it).
    head : bool
        Whether the call produces a model output (its activation is then kept as it is).

    Returns
    -------
    ActivationUse or None
        The ReLU (with its cap) to quantize.

    Example
    -------
    >>> from qffs_tf.quantization.graph import flatten_graph
    >>> x = keras.Input((3,))
    >>> y = keras.layers.Dense(2, activation="relu6")(x)
    >>> call = flatten_graph(keras.Model(x, keras.layers.Dense(1)(y))).calls[0]
    >>> quantized_activation(call, head=False)
    ActivationUse(name='relu6', max_value=6.0)
    """
    if head or isinstance(call.layer, QuantReLU):
        return None
    use = layer_activation(call.layer)
    return use if use is not None and use.name in QUANTIZED_ACTIVATIONS else None


def find_problems(graph: FlatGraph) -> list[tuple[LayerCall, str]]:
    """Every call that quantize_model cannot carry exactly, with its reason.

    Parameters
    ----------
    graph : FlatGraph
        From ``flatten_graph``.

    Returns
    -------
    list of (LayerCall, str)
        In topological order; the reason reads after the layer's description.

    Example
    -------
    >>> x = keras.Input((3,))
    >>> y = keras.layers.Dense(2, activation="swish")(x)
    >>> graph = flatten_graph(keras.Model(x, keras.layers.Dense(1)(y)))
    >>> find_problems(graph)[0][1].startswith("uses activation 'swish'")
    True
    """
    heads = {id(call) for call in graph.output_calls()}
    problems = []
    for call in graph.calls:
        rule = rule_for(call.layer)
        if rule is None and type(call.layer).__name__ != "TFOpLambda":
            problems.append((call, unsupported_reason(call.layer)))
            continue
        checks = rule.checks if rule is not None else (tf_op_reason,)
        reasons = [reason for check in checks if (reason := check(call.layer))]
        if not reasons:
            use = layer_activation(call.layer)
            if use is not None and (reason := activation_reason(use, id(call) in heads)):
                reasons.append(reason)
        problems.extend((call, reason) for reason in reasons)
    return problems


def _message(model_name: str, problems: list[tuple[LayerCall, str]]) -> str:
    """One line: each distinct reason once, with its first layer and how many more share it."""
    groups: dict[str, list[LayerCall]] = {}
    for call, reason in problems:
        groups.setdefault(reason, []).append(call)
    parts = []
    for reason, calls in groups.items():
        more = ""
        if len(calls) > 1:
            names = ", ".join(f"'{c.layer.name}'" for c in calls[1:4])
            tail = ", ..." if len(calls) > 4 else ""
            more = f" (and {len(calls) - 1} more: {names}{tail})"
        parts.append(f"{calls[0].describe()}{more} {reason}.")
    return f"Model '{model_name}' cannot be quantized exactly for QFFS: " + " Also: ".join(parts)


def check_graph(graph: FlatGraph) -> None:
    """Raise UnsupportedModelError if any call of `graph` cannot be carried exactly.

    Parameters
    ----------
    graph : FlatGraph
        From ``flatten_graph``.

    Raises
    ------
    UnsupportedModelError
        Naming each offending layer, why it cannot be exact and the closest supported
        alternative (one line; problems sharing a reason are grouped).

    Example
    -------
    >>> x = keras.Input((3,))
    >>> check_graph(flatten_graph(keras.Model(x, keras.layers.Dense(1)(x))))
    """
    problems = find_problems(graph)
    if problems:
        raise UnsupportedModelError(_message(graph.name, problems))


def check_model(model: keras.Model) -> None:
    """Raise UnsupportedModelError unless quantize_model can take `model` as it is.

    Runs the same checks as ``quantize_model`` without building anything, so a model can be
    checked before any training.

    Parameters
    ----------
    model : keras.Model
        A built tf_keras Sequential or functional model (nested models are inlined).

    Raises
    ------
    UnsupportedModelError
        For a layer or activation that cannot be exact (see ``check_graph``), or a model
        whose graph cannot be read.

    Example
    -------
    >>> x = keras.Input((8, 8, 3))
    >>> y = keras.layers.Conv2D(4, 3, activation="swish")(x)
    >>> check_model(keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(y))))
    Traceback (most recent call last):
    ...
    qffs_tf.errors.UnsupportedModelError: Model ... uses activation 'swish': ...
    """
    check_graph(flatten_graph(model))
