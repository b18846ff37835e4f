"""tfmot objects that carry the QFFS activation, and reading it back for the converter.

`QFFSActivationQuantizer` is the tfmot `Quantizer`; `QFFSLinearConfig` puts it on the fused
activation of a Conv2D / DepthwiseConv2D / SeparableConv2D / Conv2DTranspose / Dense (plus
optional tfmot weight fake-quantization); `QFFSOutputConfig` puts it on the output of a ReLU /
Activation layer. `activation_spec` is what the converter reads: bits, effective step, cap.
"""

from __future__ import annotations

import dataclasses

import tensorflow_model_optimization as tfmot

from qffs_tf._keras import keras
from qffs_tf.quantization.quantizer import (
    QuantReLU,
    add_step_variables,
    check_bits,
    check_init,
    check_max_value,
    effective_step_size,
    levels,
    quantize_with_lazy_init,
)

__all__ = [
    "QFFSActivationQuantizer",
    "QFFSLinearConfig",
    "QFFSOutputConfig",
    "ActivationSpec",
    "activation_spec",
    "weight_quantizer",
    "kernel_attributes",
    "custom_objects",
]

_Quantizer = tfmot.quantization.keras.quantizers.Quantizer


@keras.utils.register_keras_serializable(package="qffs_tf")
class QFFSActivationQuantizer(_Quantizer):
    """tfmot Quantizer for the QFFS activation (applied to a ReLU / ReLU6 output).

    Parameters
    ----------
    bits : int
        Activation bit width, 1 to 8.
    init : str
        Step-size initialisation: "lsq" or "percentile".
    max_value : float or None
        Cap of the ReLU it quantizes (6 for ReLU6), or None.

    Raises
    ------
    QuantizationError
        If an argument is invalid.

    Example
    -------
    >>> QFFSActivationQuantizer(3, max_value=6.0).get_config()
    {'bits': 3, 'init': 'lsq', 'max_value': 6.0}
    """

    def __init__(self, bits: int = 2, init: str = "lsq", max_value: float | None = None):
        self.bits = check_bits(bits, "bits")
        self.init = check_init(init)
        self.max_value = check_max_value(max_value)

    def build(self, tensor_shape, name, layer):
        return add_step_variables(layer, name)

    def __call__(self, inputs, training, weights, **kwargs):
        return quantize_with_lazy_init(inputs, weights, self.bits, self.init, self.max_value)

    def get_config(self):
        return {"bits": self.bits, "init": self.init, "max_value": self.max_value}

    def __eq__(self, other):
        return (
            isinstance(other, QFFSActivationQuantizer) and self.get_config() == other.get_config()
        )

    def __ne__(self, other):
        return not self.__eq__(other)


def weight_quantizer(weight_bits: int) -> _Quantizer:
    """tfmot's own symmetric per-tensor fake-quantizer for kernels (int8 for edge export).

    Parameters
    ----------
    weight_bits : int
        Kernel bit width, 2 to 8 (the symmetric narrow-range grid needs at least 2 bits).

    Returns
    -------
    tfmot.quantization.keras.quantizers.LastValueQuantizer
        The quantizer.

    Raises
    ------
    QuantizationError
        If ``weight_bits`` is not from 2 to 8.

    Example
    -------
    >>> weight_quantizer(8).get_config()["num_bits"]
    8
    """
    return tfmot.quantization.keras.quantizers.LastValueQuantizer(
        num_bits=check_bits(weight_bits, "weight_bits", minimum=2),
        per_axis=False,
        symmetric=True,
        narrow_range=True,
    )


def kernel_attributes(layer: keras.layers.Layer) -> tuple[str, ...]:
    """Names of the kernel attributes of a linear layer, in the order tfmot quantizes them.

    Parameters
    ----------
    layer : keras.layers.Layer
        A Conv2D, DepthwiseConv2D, SeparableConv2D, Conv2DTranspose or Dense layer.

    Returns
    -------
    tuple of str
        ``("depthwise_kernel", "pointwise_kernel")`` for SeparableConv2D,
        ``("depthwise_kernel",)`` for DepthwiseConv2D, ``("kernel",)`` otherwise.

    Example
    -------
    >>> kernel_attributes(keras.layers.SeparableConv2D(4, 3))
    ('depthwise_kernel', 'pointwise_kernel')
    """
    if isinstance(layer, keras.layers.SeparableConv2D):
        return ("depthwise_kernel", "pointwise_kernel")
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return ("depthwise_kernel",)
    return ("kernel",)


@keras.utils.register_keras_serializable(package="qffs_tf")
class QFFSLinearConfig(tfmot.quantization.keras.QuantizeConfig):
    """Linear layers: the QFFS activation on the fused ReLU, optional weight fake-quantization.

    For a fused ReLU6, quantize_model sets the layer's own activation to 'relu' and passes
    ``max_value=6``: the quantizer's effective step keeps every level within [0, 6], so
    quantize(relu(x)) equals quantize(relu6(x)) exactly, and tfmot (which wraps only a few
    activation names) can carry it.

    Parameters
    ----------
    activation_bits : int or None
        Bits of the fused activation, or None to leave the activation alone (the logits).
    weight_bits : int or None
        Bits of tfmot's kernel fake-quantization, or None for float kernels.
    init : str
        Step-size initialisation: "lsq" or "percentile".
    max_value : float or None
        Cap of the fused ReLU (6 for ReLU6), or None.

    Example
    -------
    >>> QFFSLinearConfig(2, None, "lsq", 6.0).get_config()["max_value"]
    6.0
    """

    def __init__(
        self,
        activation_bits: int | None = None,
        weight_bits: int | None = None,
        init: str = "lsq",
        max_value: float | None = None,
    ):
        self.activation_bits = activation_bits
        self.weight_bits = weight_bits
        self.init = init
        self.max_value = max_value

    def get_weights_and_quantizers(self, layer):
        if self.weight_bits is None:
            return []
        return [
            (getattr(layer, attribute), weight_quantizer(self.weight_bits))
            for attribute in kernel_attributes(layer)
        ]

    def get_activations_and_quantizers(self, layer):
        if self.activation_bits is None:
            return []
        quantizer = QFFSActivationQuantizer(self.activation_bits, self.init, self.max_value)
        return [(layer.activation, quantizer)]

    def set_quantize_weights(self, layer, quantize_weights):
        for attribute, weight in zip(kernel_attributes(layer), quantize_weights, strict=False):
            setattr(layer, attribute, weight)

    def set_quantize_activations(self, layer, quantize_activations):
        if quantize_activations:
            layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {
            "activation_bits": self.activation_bits,
            "weight_bits": self.weight_bits,
            "init": self.init,
            "max_value": self.max_value,
        }


@keras.utils.register_keras_serializable(package="qffs_tf")
class QFFSOutputConfig(tfmot.quantization.keras.QuantizeConfig):
    """ReLU / ReLU6 / Activation('relu') layers: the QFFS activation on the layer's output.

    Parameters
    ----------
    activation_bits : int
        Activation bit width, 1 to 8.
    init : str
        Step-size initialisation: "lsq" or "percentile".
    max_value : float or None
        Cap of the ReLU (6 for ReLU6, m for ``ReLU(max_value=m)``), or None.

    Example
    -------
    >>> QFFSOutputConfig(2).get_config()
    {'activation_bits': 2, 'init': 'lsq', 'max_value': None}
    """

    def __init__(self, activation_bits: int = 2, init: str = "lsq", max_value: float | None = None):
        self.activation_bits = activation_bits
        self.init = init
        self.max_value = max_value

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [QFFSActivationQuantizer(self.activation_bits, self.init, self.max_value)]

    def get_config(self):
        return {
            "activation_bits": self.activation_bits,
            "init": self.init,
            "max_value": self.max_value,
        }


@dataclasses.dataclass(frozen=True)
class ActivationSpec:
    """What the converter needs to know about one QFFS activation.

    Attributes
    ----------
    bits : int
        Activation bit width b.
    step_size : float
        The effective step s_eff the QANN quantizes with (capped at m / L for a ReLU6 /
        ``ReLU(max_value=m)``): the IF threshold.
    kind : str
        "layer" (QuantReLU), "fused" (on a linear layer's output), "output" (a ReLU layer).
    max_value : float or None
        The cap m of the ReLU it replaced, or None (informational: ``step_size`` already
        respects it).
    """

    bits: int
    step_size: float
    kind: str
    max_value: float | None = None

    @property
    def levels(self) -> int:
        """L = 2^b - 1."""
        return levels(self.bits)


def _wrapper_variable(wrapper: keras.layers.Layer, suffix: str):
    for weight in wrapper.weights:
        if weight.name.split("/")[-1].split(":")[0].endswith(suffix):
            return weight
    raise KeyError(f"no step size '{suffix}' in {wrapper.name}")


def _spec(bits: int, step, kind: str, max_value: float | None) -> ActivationSpec:
    step_size = float(effective_step_size(step, bits, max_value).numpy())
    return ActivationSpec(bits, step_size, kind, max_value)


def activation_spec(layer: keras.layers.Layer) -> ActivationSpec | None:
    """The QFFS activation carried by `layer`, or None if it carries none.

    Parameters
    ----------
    layer : keras.layers.Layer
        A layer of a QAT model: a ``QuantReLU`` or a tfmot ``QuantizeWrapperV2`` made by
        ``quantize_model``.

    Returns
    -------
    ActivationSpec or None
        Bits, effective step size (the value the forward pass uses), kind and cap.

    Example
    -------
    >>> layer = QuantReLU(2)
    >>> _ = layer(tf.ones((1, 4)))
    >>> activation_spec(layer).bits
    2
    """
    if isinstance(layer, QuantReLU):
        return _spec(layer.bits, layer.step_size, "layer", layer.max_value)
    config = getattr(layer, "quantize_config", None)
    if isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2):
        if isinstance(config, QFFSLinearConfig) and config.activation_bits is not None:
            step = _wrapper_variable(layer, "post_activation_step_size")
            return _spec(config.activation_bits, step, "fused", config.max_value)
        if isinstance(config, QFFSOutputConfig):
            step = _wrapper_variable(layer, "output_step_size")
            return _spec(config.activation_bits, step, "output", config.max_value)
    return None


def custom_objects() -> dict[str, object]:
    """Custom objects needed to deserialize qffs_tf QAT models.

    Returns
    -------
    dict
        Class name -> class, for ``keras.utils.custom_object_scope`` or tfmot's
        ``quantize_scope`` (``qffs_tf.load_model`` uses them).

    Example
    -------
    >>> sorted(custom_objects())[0]
    'QFFSActivationQuantizer'
    """
    return {
        "QuantReLU": QuantReLU,
        "QFFSActivationQuantizer": QFFSActivationQuantizer,
        "QFFSLinearConfig": QFFSLinearConfig,
        "QFFSOutputConfig": QFFSOutputConfig,
    }
