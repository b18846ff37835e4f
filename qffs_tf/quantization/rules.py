"""The registry of what quantize_model supports: layer types, activations, and why not.

Every supported layer type is registered once with its role and the checks its arguments must
pass; known unsupported types and activations carry the reason they cannot be exact and the
closest supported alternative. The refusal messages and the supported-layer list are generated
from these tables (qffs_tf.quantization.support applies them to a model), so adding a layer
kind means adding one `register(...)` line here (and its conversion rule in qffs_tf/conversion).

Roles:
  "linear"      weights; its fused ``activation`` becomes a QFFS activation when it is a ReLU
  "activation"  a layer that is an activation; becomes a QFFS activation when it is a ReLU
  "passive"     carried as it is (linear, shape-only, pooling, normalisation, identity)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from qffs_tf._keras import keras
from qffs_tf.quantization.quantizer import QuantReLU

__all__ = [
    "LayerRule",
    "ActivationUse",
    "register",
    "refuse",
    "rule_for",
    "supported_layers",
    "unsupported_reason",
    "activation_reason",
    "tf_op_reason",
    "activation_name",
    "TF_OP_ACTIVATIONS",
    "QUANTIZED_ACTIVATIONS",
    "HEAD_ACTIVATIONS",
    "REFUSED_ACTIVATIONS",
]

L = keras.layers
Check = Callable[[keras.layers.Layer], "str | None"]


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """How quantize_model treats one layer type.

    Attributes
    ----------
    layer_type : type
        The Keras layer class (matched exactly, not by subclass).
    role : str
        "linear", "activation" or "passive" (see the module docstring).
    how : str
        One line for the supported-layer table.
    checks : tuple of callables
        Each takes the layer and returns None, or the reason it cannot be carried
        ("why. Closest supported alternative: ...").
    """

    layer_type: type
    role: str
    how: str
    checks: tuple[Check, ...] = ()


@dataclasses.dataclass(frozen=True)
class ActivationUse:
    """The nonlinearity a layer applies: its name and, for a capped ReLU, the cap."""

    name: str
    max_value: float | None = None


_RULES: dict[type, LayerRule] = {}
_REFUSED: dict[type, str] = {}


def register(layer_type: type, role: str, how: str, checks: tuple[Check, ...] = ()) -> None:
    """Register a supported layer type.

    Parameters
    ----------
    layer_type : type
        The Keras layer class.
    role : str
        "linear", "activation" or "passive".
    how : str
        How quantize_model and the converter carry it (one line).
    checks : tuple of callables
        Argument checks returning a refusal reason or None.

    Example
    -------
    >>> register(keras.layers.Dropout, "passive", "identity at inference")
    """
    if role not in ("linear", "activation", "passive"):
        raise ValueError(f"unknown role {role!r}")
    _RULES[layer_type] = LayerRule(layer_type, role, how, tuple(checks))


def refuse(layer_type: type, reason: str) -> None:
    """Register a known unsupported layer type with why and the closest alternative.

    Parameters
    ----------
    layer_type : type
        The Keras layer class.
    reason : str
        "why it cannot be exact. Closest supported alternative: ...".

    Example
    -------
    >>> refuse(keras.layers.Lambda, "runs arbitrary Python code. Closest ...")
    """
    _REFUSED[layer_type] = reason


def rule_for(layer: keras.layers.Layer) -> LayerRule | None:
    """The registered rule of `layer`'s exact type, or None.

    Parameters
    ----------
    layer : keras.layers.Layer
        Any layer.

    Returns
    -------
    LayerRule or None
        None for unregistered (unsupported) types.

    Example
    -------
    >>> rule_for(keras.layers.Dense(2)).role
    'linear'
    """
    return _RULES.get(type(layer))


def supported_layers() -> list[tuple[str, str, str]]:
    """(layer type, role, how it is carried) for every supported layer, for tables and errors.

    Returns
    -------
    list of (str, str, str)
        In registration order.

    Example
    -------
    >>> ("Dense", "linear") in [row[:2] for row in supported_layers()]
    True
    """
    return [(cls.__name__, rule.role, rule.how) for cls, rule in _RULES.items()]


# ----------------------------------------------------------------------------- activations

# Activations that become QFFS activations (in the middle of the network), with their cap.
QUANTIZED_ACTIVATIONS: dict[str, float | None] = {"relu": None, "relu6": 6.0}

# Activations allowed on the model's output layer: kept as they are (not quantized); the SNN
# applies them to its integrated logits. All are monotone (softmax preserves the order of its
# inputs), so the top-1 of the SNN's logits at any step is the top-1 of its output.
HEAD_ACTIVATIONS = frozenset(
    {
        "linear",
        "softmax",
        "log_softmax",
        "sigmoid",
        "hard_sigmoid",
        "tanh",
        "softsign",
        "softplus",
        "relu",
        "relu6",
        "elu",
        "selu",
        "exponential",
    }
)

_NOT_MONOTONE = (
    "is not monotone and is negative for some x < 0; a QFFS activation is a quantized ReLU "
    "whose value is an IF neuron's spike count (0..L, non-decreasing in its input), so no "
    "spiking layer reproduces it exactly"
)
_SATURATING = (
    "is a smooth saturating curve; a QFFS activation is a quantized ReLU, linear between 0 "
    "and its top level, so the SNN cannot reproduce the curve exactly"
)
_NEGATIVE = (
    "gives negative outputs for x < 0; an IF neuron's spike count cannot go below 0, so "
    "those values cannot be represented exactly"
)
_USE_RELU = "Closest supported alternative: 'relu' (or 'relu6'), then fine-tune the model"
_USE_RELU6 = (
    "Closest supported alternative: 'relu6' or ReLU(max_value=m), which also saturate, then "
    "fine-tune the model"
)
_NORMALISING = (
    "normalises across units (every output depends on every input) and is only allowed as "
    "the model's output activation, where the SNN applies it to the integrated logits. "
    "Closest supported alternative: remove it here or move it to the output layer"
)

REFUSED_ACTIVATIONS: dict[str, str] = {
    "swish": f"swish (x * sigmoid(x)) {_NOT_MONOTONE}. {_USE_RELU}",
    "silu": f"silu/swish (x * sigmoid(x)) {_NOT_MONOTONE}. {_USE_RELU}",
    "gelu": f"gelu {_NOT_MONOTONE}. {_USE_RELU}",
    "mish": f"mish {_NOT_MONOTONE}. {_USE_RELU}",
    "hard_swish": f"hard_swish {_NOT_MONOTONE}. {_USE_RELU}",
    "sigmoid": f"sigmoid {_SATURATING}. {_USE_RELU6}",
    "hard_sigmoid": (
        "hard_sigmoid is clip(0.2 x + 0.5, 0, 1): its output is 0.5 at x = 0, where a quantized "
        "ReLU starts at 0. Closest supported alternative: ReLU(max_value=1) with the 0.2 scale "
        "and the 0.5 offset folded into the previous layer's weights and bias"
    ),
    "tanh": f"tanh {_SATURATING} (and {_NEGATIVE}). {_USE_RELU6}",
    "softsign": f"softsign {_SATURATING} (and {_NEGATIVE}). {_USE_RELU6}",
    "elu": f"elu {_NEGATIVE}. {_USE_RELU}",
    "selu": f"selu {_NEGATIVE}. {_USE_RELU}",
    "leaky_relu": f"leaky_relu {_NEGATIVE}. {_USE_RELU}",
    "softplus": f"softplus is a smooth curve, not a quantizable ReLU. {_USE_RELU}",
    "exponential": f"exponential is unbounded and curved, not a quantizable ReLU. {_USE_RELU}",
    "softmax": f"softmax {_NORMALISING}",
    "log_softmax": f"log_softmax {_NORMALISING}",
}

TF_OP_ACTIVATIONS = {"nn.relu": "relu", "nn.relu6": "relu6", "math.relu": "relu"}


def activation_name(activation) -> str:
    """The name of an activation function (``keras.activations.relu`` -> "relu")."""
    return getattr(activation, "__name__", type(activation).__name__)


# ----------------------------------------------------------------------------- checks


def _channels_last(layer) -> str | None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return (
            "uses data_format='channels_first'; the QFFS converter works on channels_last "
            "tensors. Closest supported alternative: build the model with "
            "data_format='channels_last' (the tf_keras default)"
        )
    return None


def _ungrouped(layer) -> str | None:
    if getattr(layer, "groups", 1) != 1:
        return (
            f"is a grouped convolution (groups={layer.groups}); the QFFS converter has no "
            "grouped convolution. Closest supported alternative: DepthwiseConv2D when groups "
            "equals the input channels, or one Conv2D per group joined by Concatenate"
        )
    return None


def _last_axis(layer) -> str | None:
    axes = layer.axis if isinstance(layer.axis, list | tuple) else [layer.axis]
    rank = len(layer.input_shape) if layer.built else None
    if len(axes) == 1 and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1)):
        return None
    return (
        f"normalises over axis {layer.axis}; only normalisation over the last (channel) axis "
        "folds into a per-channel affine map of the charges. Closest supported alternative: "
        "BatchNormalization(axis=-1) on channels_last tensors"
    )


def _normalization_axis(layer) -> str | None:
    axes = tuple(layer.axis)
    if axes in ((), (-1,)) or (layer.built and axes == (len(layer.input_shape) - 1,)):
        return None
    return (
        f"normalises with statistics over axis {layer.axis}; only per-channel (axis=-1) or "
        "global (axis=None) statistics are a per-channel affine map. Closest supported "
        "alternative: Normalization(axis=-1)"
    )


def _not_batch_axis(layer) -> str | None:
    if layer.axis == 0:
        return (
            "concatenates along the batch axis (axis=0); spike trains of different samples "
            "cannot be joined. Closest supported alternative: concatenate along the channel "
            "axis (axis=-1)"
        )
    return None


def _linear_interpolation(layer) -> str | None:
    if layer.interpolation not in ("nearest", "bilinear"):
        return (
            f"uses interpolation='{layer.interpolation}'; only 'nearest' and 'bilinear' "
            "upsampling are supported. Closest supported alternative: "
            "UpSampling2D(interpolation='bilinear')"
        )
    return None


def _plain_or_capped_relu(layer) -> str | None:
    config = layer.get_config()
    if float(config.get("negative_slope", 0.0)) != 0.0:
        return (
            f"is a leaky ReLU (negative_slope={float(config['negative_slope'])}); it {_NEGATIVE}."
            " Closest supported alternative: ReLU() or ReLU(max_value=m)"
        )
    if float(config.get("threshold", 0.0)) != 0.0:
        return (
            f"is a thresholded ReLU (threshold={float(config['threshold'])}): it jumps from 0 "
            "to the threshold, which a quantized ReLU starting at 0 cannot reproduce exactly. "
            "Closest supported alternative: ReLU() (put the offset into the previous layer's "
            "bias)"
        )
    cap = config.get("max_value")
    if cap is not None and not float(cap) > 0:
        return (
            f"has max_value={float(cap)}, so its output is always 0. Closest supported "
            "alternative: ReLU() or ReLU(max_value=m) with m > 0"
        )
    return None


def tf_op_reason(layer) -> str | None:
    """Why a TensorFlow op layer (TFOpLambda) is refused, or None for tf.nn.relu / relu6."""
    function = layer.get_config().get("function", "?")
    if function in TF_OP_ACTIVATIONS:
        return None
    return (
        f"is the TensorFlow op tf.{function} used directly on a Keras tensor; QFFS carries "
        "only Keras layers (and tf.nn.relu / tf.nn.relu6). Closest supported alternative: the "
        "equivalent Keras layer (Add, Concatenate, Reshape, ReLU, ...)"
    )


_LINEAR_HOW = "weights; a fused activation='relu' / 'relu6' becomes a QFFS activation"

register(L.InputLayer, "passive", "the input")
register(L.Conv2D, "linear", _LINEAR_HOW, (_channels_last, _ungrouped))
register(L.DepthwiseConv2D, "linear", _LINEAR_HOW, (_channels_last,))
register(
    L.SeparableConv2D, "linear", _LINEAR_HOW + " (depthwise then pointwise)", (_channels_last,)
)
register(L.Conv2DTranspose, "linear", _LINEAR_HOW, (_channels_last,))
register(L.Dense, "linear", _LINEAR_HOW)
register(
    L.ReLU,
    "activation",
    "QFFS activation; ReLU(max_value=m) caps the top level at m",
    (_plain_or_capped_relu,),
)
register(L.Activation, "activation", "'relu' / 'relu6': QFFS activation; 'linear': identity")
register(QuantReLU, "activation", "already a QFFS activation")
register(L.Softmax, "activation", "output layer only: kept, applied to the SNN's logits")
register(L.BatchNormalization, "passive", "per-channel affine; folded at conversion", (_last_axis,))
register(L.MaxPooling2D, "passive", "max-pool (on spike counts in the SNN)", (_channels_last,))
register(L.AveragePooling2D, "passive", "linear, any stride and padding", (_channels_last,))
register(L.GlobalAveragePooling2D, "passive", "linear", (_channels_last,))
register(L.GlobalMaxPooling2D, "passive", "max over positions (on spike counts)", (_channels_last,))
register(L.Flatten, "passive", "shape only", (_channels_last,))
register(L.Reshape, "passive", "shape only")
register(L.Permute, "passive", "shape only")
register(L.ZeroPadding2D, "passive", "shape only", (_channels_last,))
register(L.Cropping2D, "passive", "shape only", (_channels_last,))
register(
    L.UpSampling2D,
    "passive",
    "linear (nearest or bilinear)",
    (_channels_last, _linear_interpolation),
)
register(L.Add, "passive", "linear (residual connections)")
register(
    L.Concatenate, "passive", "joins tensors; each part keeps its own scale", (_not_batch_axis,)
)
register(L.Dropout, "passive", "identity at inference")
register(L.SpatialDropout2D, "passive", "identity at inference", (_channels_last,))
register(L.Rescaling, "passive", "affine preprocessing (part of the static input computation)")
register(
    L.Normalization,
    "passive",
    "affine preprocessing (part of the static input computation)",
    (_normalization_axis,),
)

_PRODUCT = (
    "multiplies two activations; a synapse only adds the spikes it receives, so the product "
    "of two spike trains is not a sum of spikes and cannot be exact. Closest supported "
    "alternative: Add (residual connection), or remove the gating branch "
    "(e.g. squeeze-and-excitation)"
)
_ATTENTION = (
    "computes attention (products of activations and a softmax inside the network); neither "
    "is a sum of spikes, so it cannot be exact. Closest supported alternative: convolutional "
    "blocks (Conv2D/DepthwiseConv2D with ReLU)"
)
refuse(L.Multiply, _PRODUCT)
refuse(L.Dot, _PRODUCT)
refuse(L.Attention, _ATTENTION)
refuse(L.AdditiveAttention, _ATTENTION)
refuse(L.MultiHeadAttention, _ATTENTION)
refuse(
    L.Lambda,
    "runs arbitrary Python code, which can be neither inspected nor converted. Closest "
    "supported alternative: the built-in Keras layers it computes (Rescaling, Reshape, "
    "Activation('relu'), ...)",
)
refuse(L.LeakyReLU, f"is a leaky ReLU; it {_NEGATIVE}. Closest supported alternative: ReLU()")
refuse(L.PReLU, f"is a parametric ReLU; it {_NEGATIVE}. Closest supported alternative: ReLU()")
refuse(L.ELU, f"is an ELU; it {_NEGATIVE}. Closest supported alternative: ReLU()")
refuse(
    L.ThresholdedReLU,
    "jumps from 0 to its threshold, which a quantized ReLU starting at 0 cannot reproduce. "
    "Closest supported alternative: ReLU()",
)


# ----------------------------------------------------------------------------- reasons


def refusal_reason(layer: keras.layers.Layer) -> str | None:
    """Why a known unsupported layer type cannot be exact, with the closest alternative.

    Parameters
    ----------
    layer : keras.layers.Layer

    Returns
    -------
    str or None
        None when the type is not on the refusal list.

    Example
    -------
    >>> refusal_reason(keras.layers.Multiply()) is not None
    True
    """
    return _REFUSED.get(type(layer))


def unsupported_reason(layer: keras.layers.Layer) -> str:
    """Why a layer of an unregistered type is refused, and what to use instead."""
    if type(layer) in _REFUSED:
        return _REFUSED[type(layer)]
    names = ", ".join(name for name, _, _ in supported_layers())
    return (
        f"is not a layer type QFFS supports. Supported layers: {names}. Closest supported "
        "alternative: rebuild that part of the model from supported layers"
    )


def activation_reason(use: ActivationUse, head: bool) -> str | None:
    """Why `use` cannot be carried (in the middle, or as the output's activation), or None."""
    if head:
        if use.name in HEAD_ACTIVATIONS:
            return None
        return (
            f"has output activation '{use.name}', which is not monotone, so the SNN's top-1 "
            "would not follow its logits. Closest supported alternative: 'softmax' or no "
            "activation (logits)"
        )
    if use.name in QUANTIZED_ACTIVATIONS:
        return None
    reason = REFUSED_ACTIVATIONS.get(use.name)
    if reason is None:
        reason = (
            f"'{use.name}' is not a Keras activation QFFS knows, so it cannot be checked to be "
            f"exact. {_USE_RELU}"
        )
    return f"uses activation '{use.name}': {reason}"
