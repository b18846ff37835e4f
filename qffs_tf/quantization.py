"""The QFFS activation quantizer: LSQ-style b-bit quantized ReLU with a learned step size.

    q = clip(floor(x / s + 1/2), 0, L),   a = s * q,   L = 2^b - 1

Rounding is half-up because the IF neuron's `v >= theta` test rounds half-up too (QFFS.md §2).
The same op serves three front ends: `QuantReLU` (a Keras layer for writing networks directly),
`QFFSActivationQuantizer` (a tfmot `Quantizer`, used by `quantize_model` through QuantizeConfigs),
and the converter, which reads the learned step size back with `activation_spec`.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow_model_optimization as tfmot

from qffs_tf._keras import keras, tf

MIN_BITS, MAX_BITS = 1, 8
INIT_METHODS = ("lsq", "percentile")
_EPSILON = 1e-8


def check_bits(bits: int, what: str = "activation_bits") -> int:
    """Validate a bit width (1..8) and return it as an int."""
    if isinstance(bits, bool) or not isinstance(bits, int | float) or int(bits) != bits:
        raise ValueError(
            f"{what} must be a whole number from {MIN_BITS} to {MAX_BITS}, got {bits!r}"
        )
    if not MIN_BITS <= int(bits) <= MAX_BITS:
        raise ValueError(f"{what} must be from {MIN_BITS} to {MAX_BITS}, got {bits}")
    return int(bits)


def levels(bits: int) -> int:
    """Number of non-zero quantization levels, L = 2^b - 1."""
    return 2 ** int(bits) - 1


def quantize(x: tf.Tensor, step_size: tf.Tensor, bits: int) -> tf.Tensor:
    """QFFS quantized ReLU of `x` with step size `step_size` (scalar), with LSQ gradients.

    Gradient w.r.t. x: straight-through inside (0, L*s), zero outside. Gradient w.r.t. s:
    (q - x/s) inside, 0 below, L above, scaled by g = 1/sqrt(N*L) with N the number of
    activations per example (LSQ, Esser et al. 2020).
    """
    num_levels = float(levels(bits))

    @tf.custom_gradient
    def _quantize(x, s):
        v = x / s
        q = tf.clip_by_value(tf.floor(v + 0.5), 0.0, num_levels)

        def grad(dy):
            inside = tf.logical_and(v > 0.0, v < num_levels)
            above = v >= num_levels
            dx = tf.where(inside, dy, tf.zeros_like(dy))
            ds_each = tf.where(inside, q - v, tf.where(above, num_levels, 0.0)) * dy
            per_example = tf.cast(tf.size(x), x.dtype) / tf.cast(
                tf.maximum(tf.shape(x)[0], 1), x.dtype
            )
            scale = tf.math.rsqrt(per_example * num_levels)
            ds = tf.reshape(tf.reduce_sum(ds_each) * scale, tf.shape(s))
            return dx, ds

        return q * s, grad

    x = tf.convert_to_tensor(x)
    s = tf.maximum(tf.cast(step_size, x.dtype), _EPSILON)
    return _quantize(x, s)


def initial_step_size(x: tf.Tensor, bits: int, method: str = "lsq") -> tf.Tensor:
    """Data-driven step size from a batch of the quantizer's (pre- or post-ReLU) input.

    "lsq": 2 * mean|relu(x)| / sqrt(L) (LSQ's rule on the ReLU output);
    "percentile": the 99.9th percentile of the positive part of x, divided by L.
    """
    x = tf.nn.relu(tf.cast(x, tf.float32))
    num_levels = levels(bits)
    if method == "lsq":
        value = 2.0 * tf.reduce_mean(x) / math.sqrt(num_levels)
    elif method == "percentile":
        flat = tf.sort(tf.reshape(x, [-1]))
        index = tf.cast(tf.cast(tf.size(flat) - 1, tf.float32) * 0.999, tf.int32)
        value = tf.gather(flat, index) / num_levels
    else:
        raise ValueError(f"step-size init must be one of {INIT_METHODS}, got {method!r}")
    # A layer that is dead on the calibration batch still needs a positive step.
    return tf.where(value > _EPSILON, value, tf.constant(1.0, tf.float32))


def _add_step_variables(layer: keras.layers.Layer, name: str) -> dict[str, tf.Variable]:
    """Create the learned step size and its 'initialised from data' flag on `layer`."""
    step = layer.add_weight(
        name=f"{name}_step_size" if name else "step_size",
        shape=(),
        initializer=keras.initializers.Constant(1.0),
        trainable=True,
        aggregation=tf.VariableAggregation.MEAN,
    )
    initialized = layer.add_weight(
        name=f"{name}_initialized" if name else "initialized",
        shape=(),
        initializer=keras.initializers.Constant(0.0),
        trainable=False,
        aggregation=tf.VariableAggregation.MEAN,
    )
    return {"step_size": step, "initialized": initialized}


def _quantize_with_lazy_init(
    x: tf.Tensor, variables: dict[str, tf.Variable], bits: int, init: str
) -> tf.Tensor:
    """Quantize `x`; on the first batch ever seen, first set the step size from that batch."""
    step, initialized = variables["step_size"], variables["initialized"]
    in_replica = tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context() is False
    if in_replica and not isinstance(tf.distribute.get_strategy(), tf.distribute.OneDeviceStrategy):
        # Under a multi-replica strategy the step sizes must be initialised up front
        # (quantize_model(calibration_data=...)); a per-replica lazy assign cannot be merged.
        return quantize(x, step, bits)

    def init_from_batch():
        value = initial_step_size(x, bits, init)
        with tf.control_dependencies([step.assign(value), initialized.assign(1.0)]):
            return tf.identity(value)

    ready = tf.cond(initialized > 0.5, lambda: tf.identity(step), init_from_batch)
    with tf.control_dependencies([ready]):
        return quantize(x, step, bits)


@keras.utils.register_keras_serializable(package="qffs_tf")
class QuantReLU(keras.layers.Layer):
    """ReLU quantized to `bits` bits with a learned step size (the QFFS activation).

    Use it in place of `ReLU()` to write a QFFS network directly. The step size initialises
    from the first batch the layer sees (`init="lsq"` or `"percentile"`), as LSQ does.
    """

    def __init__(self, bits: int = 2, init: str = "lsq", **kwargs):
        super().__init__(**kwargs)
        self.bits = check_bits(bits, "bits")
        if init not in INIT_METHODS:
            raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
        self.init = init

    def build(self, input_shape):
        self._vars = _add_step_variables(self, "")
        super().build(input_shape)

    @property
    def step_size(self) -> tf.Variable:
        return self._vars["step_size"]

    def call(self, inputs, training=None):
        return _quantize_with_lazy_init(inputs, self._vars, self.bits, self.init)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "bits": self.bits, "init": self.init}


@keras.utils.register_keras_serializable(package="qffs_tf")
class QFFSActivationQuantizer(tfmot.quantization.keras.quantizers.Quantizer):
    """tfmot Quantizer for the QFFS activation (applied to a ReLU output)."""

    def __init__(self, bits: int = 2, init: str = "lsq"):
        self.bits = check_bits(bits, "bits")
        if init not in INIT_METHODS:
            raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
        self.init = init

    def build(self, tensor_shape, name, layer):
        return _add_step_variables(layer, name)

    def __call__(self, inputs, training, weights, **kwargs):
        return _quantize_with_lazy_init(inputs, weights, self.bits, self.init)

    def get_config(self):
        return {"bits": self.bits, "init": self.init}

    def __eq__(self, other):
        return (
            isinstance(other, QFFSActivationQuantizer) and self.get_config() == other.get_config()
        )

    def __ne__(self, other):
        return not self.__eq__(other)


def weight_quantizer(weight_bits: int) -> tfmot.quantization.keras.quantizers.Quantizer:
    """tfmot's own symmetric per-tensor fake-quantizer for kernels (int8 for edge export)."""
    return tfmot.quantization.keras.quantizers.LastValueQuantizer(
        num_bits=check_bits(weight_bits, "weight_bits"),
        per_axis=False,
        symmetric=True,
        narrow_range=True,
    )


def _kernel_attribute(layer: keras.layers.Layer) -> str:
    return "depthwise_kernel" if isinstance(layer, keras.layers.DepthwiseConv2D) else "kernel"


@keras.utils.register_keras_serializable(package="qffs_tf")
class QFFSLinearConfig(tfmot.quantization.keras.QuantizeConfig):
    """Conv2D / DepthwiseConv2D / Dense: optional QFFS activation on the fused ReLU and
    optional tfmot weight fake-quantization."""

    def __init__(
        self, activation_bits: int | None = None, weight_bits: int | None = None, init: str = "lsq"
    ):
        self.activation_bits = activation_bits
        self.weight_bits = weight_bits
        self.init = init

    def get_weights_and_quantizers(self, layer):
        if self.weight_bits is None:
            return []
        return [(getattr(layer, _kernel_attribute(layer)), weight_quantizer(self.weight_bits))]

    def get_activations_and_quantizers(self, layer):
        if self.activation_bits is None:
            return []
        return [(layer.activation, QFFSActivationQuantizer(self.activation_bits, self.init))]

    def set_quantize_weights(self, layer, quantize_weights):
        if quantize_weights:
            setattr(layer, _kernel_attribute(layer), quantize_weights[0])

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
        }


@keras.utils.register_keras_serializable(package="qffs_tf")
class QFFSOutputConfig(tfmot.quantization.keras.QuantizeConfig):
    """ReLU / Activation('relu') layers: the QFFS activation on the layer's output."""

    def __init__(self, activation_bits: int = 2, init: str = "lsq"):
        self.activation_bits = activation_bits
        self.init = init

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [QFFSActivationQuantizer(self.activation_bits, self.init)]

    def get_config(self):
        return {"activation_bits": self.activation_bits, "init": self.init}


@dataclasses.dataclass(frozen=True)
class ActivationSpec:
    """What the converter needs to know about one QFFS activation."""

    bits: int
    step_size: float
    kind: str  # "layer" (QuantReLU), "fused" (on a Conv/Dense output), "output" (ReLU layer)

    @property
    def levels(self) -> int:
        return levels(self.bits)


def _wrapper_step_size(wrapper: keras.layers.Layer, suffix: str) -> float:
    for weight in wrapper.weights:
        if weight.name.split("/")[-1].split(":")[0].endswith(suffix):
            return float(weight.numpy())
    raise KeyError(f"no step size '{suffix}' in {wrapper.name}")


def activation_spec(layer: keras.layers.Layer) -> ActivationSpec | None:
    """The QFFS activation carried by `layer`, or None if it carries none."""
    if isinstance(layer, QuantReLU):
        return ActivationSpec(layer.bits, float(layer.step_size.numpy()), "layer")
    config = getattr(layer, "quantize_config", None)
    if isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2):
        if isinstance(config, QFFSLinearConfig) and config.activation_bits is not None:
            step = _wrapper_step_size(layer, "post_activation_step_size")
            return ActivationSpec(config.activation_bits, step, "fused")
        if isinstance(config, QFFSOutputConfig):
            step = _wrapper_step_size(layer, "output_step_size")
            return ActivationSpec(config.activation_bits, step, "output")
    return None


def custom_objects() -> dict[str, object]:
    """Custom objects needed to deserialize qffs_tf models (use with tfmot's quantize_scope)."""
    return {
        "QuantReLU": QuantReLU,
        "QFFSActivationQuantizer": QFFSActivationQuantizer,
        "QFFSLinearConfig": QFFSLinearConfig,
        "QFFSOutputConfig": QFFSOutputConfig,
    }
