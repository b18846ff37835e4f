"""The QFFS activation quantizer: LSQ-style b-bit quantized ReLU with a learned step size.

    q = clip(floor(x / s + 1/2), 0, L),   a = s * q,   L = 2^b - 1

Rounding is half-up because the IF neuron's `v >= theta` test rounds half-up too (QFFS.md §2).
A capped ReLU (ReLU6, `ReLU(max_value=m)`) keeps its range: the step used is the effective step
`s_eff = min(s, m / L)`, so the top level `L * s_eff` never exceeds m. The same op serves three
front ends: `QuantReLU` (a Keras layer), `QFFSActivationQuantizer` (a tfmot `Quantizer`, see
`configs.py`) and the converter, which reads `s_eff` back through `activation_spec`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from qffs_tf._keras import keras, tf
from qffs_tf.errors import QuantizationError

MIN_BITS, MAX_BITS = 1, 8
INIT_METHODS = ("lsq", "percentile")
_EPSILON = 1e-8

__all__ = [
    "MIN_BITS",
    "MAX_BITS",
    "INIT_METHODS",
    "check_bits",
    "check_init",
    "check_max_value",
    "levels",
    "step_cap",
    "effective_step_size",
    "quantize",
    "initial_step_size",
    "QuantReLU",
]


def check_bits(bits, what: str = "activation_bits", minimum: int = MIN_BITS) -> int:
    """Validate a bit width and return it as a Python int.

    Parameters
    ----------
    bits : int
        The bit width; any whole number type (``int``, ``np.int64``, ``2.0``) is accepted.
    what : str
        The argument's name, used in the error message.
    minimum : int
        The smallest accepted width (1 for activations, 2 for tfmot's weight quantizer).

    Returns
    -------
    int
        ``bits`` as an int, from ``minimum`` to 8.

    Raises
    ------
    QuantizationError
        If ``bits`` is not a whole number from ``minimum`` to 8.

    Example
    -------
    >>> check_bits(np.int64(3))
    3
    """
    if isinstance(bits, bool | np.bool_) or not isinstance(bits, numbers.Real):
        raise QuantizationError(
            f"{what} must be a whole number from {minimum} to {MAX_BITS}, got {bits!r}."
        )
    if not math.isfinite(float(bits)) or not float(bits).is_integer():
        raise QuantizationError(
            f"{what} must be a whole number from {minimum} to {MAX_BITS}, got {bits!r}."
        )
    if not minimum <= int(bits) <= MAX_BITS:
        raise QuantizationError(f"{what} must be from {minimum} to {MAX_BITS}, got {int(bits)}.")
    return int(bits)


def check_init(init: str) -> str:
    """Validate a step-size initialisation method name ("lsq" or "percentile").

    Parameters
    ----------
    init : str
        The method name.

    Returns
    -------
    str
        ``init`` unchanged.

    Raises
    ------
    QuantizationError
        If ``init`` is not one of ``INIT_METHODS``.

    Example
    -------
    >>> check_init("lsq")
    'lsq'
    """
    if not isinstance(init, str) or init not in INIT_METHODS:
        raise QuantizationError(f"init must be one of {INIT_METHODS}, got {init!r}.")
    return init


def check_max_value(max_value) -> float | None:
    """Validate the cap of a capped ReLU (None for none) and return it as a float.

    Parameters
    ----------
    max_value : float or None
        The ReLU's upper bound m (6 for ReLU6), or None for a plain ReLU.

    Returns
    -------
    float or None
        ``max_value`` as a float.

    Raises
    ------
    QuantizationError
        If ``max_value`` is not a positive finite number.

    Example
    -------
    >>> check_max_value(6)
    6.0
    """
    if max_value is None:
        return None
    if (
        isinstance(max_value, bool | np.bool_)
        or not isinstance(max_value, numbers.Real)
        or not math.isfinite(float(max_value))
        or float(max_value) <= 0
    ):
        raise QuantizationError(
            f"max_value must be a positive finite number (6 for ReLU6) or None, got {max_value!r}."
        )
    return float(max_value)


def levels(bits: int) -> int:
    """Number of non-zero quantization levels, L = 2^b - 1.

    Parameters
    ----------
    bits : int
        The activation bit width.

    Returns
    -------
    int
        ``2**bits - 1``.

    Example
    -------
    >>> levels(2)
    3
    """
    return 2 ** int(bits) - 1


def step_cap(bits: int, max_value: float | None) -> float | None:
    """The cap on the step: m / L in float32, so that the top level L * step never exceeds m.

    Parameters
    ----------
    bits : int
        The activation bit width.
    max_value : float or None
        The ReLU's cap m, or None for a plain ReLU (no cap).

    Returns
    -------
    float or None
        The float32 value m / L, lowered by one ulp when float32 rounding would put
        L * (m / L) above m; None when ``max_value`` is None.

    Example
    -------
    >>> step_cap(2, 6.0)
    2.0
    """
    if max_value is None:
        return None
    num_levels = np.float32(levels(bits))
    cap = np.float32(max_value) / num_levels
    while cap * num_levels > np.float32(max_value):
        cap = np.nextafter(cap, np.float32(0))
    return float(cap)


def _cap_step(step: tf.Tensor, cap: float) -> tf.Tensor:
    """min(step, cap), with a gradient that cannot push an inactive step further up.

    Below the cap the gradient is the identity. Above it the forward value no longer depends on
    the step, so only a gradient that lowers the step (positive under gradient descent) passes:
    the step comes back to the cap when the loss wants a finer grid, and does not drift upward
    while it has no effect.
    """

    @tf.custom_gradient
    def capped(s):
        def grad(dy):
            return tf.where(tf.logical_or(s <= cap, dy > 0.0), dy, tf.zeros_like(dy))

        return tf.minimum(s, cap), grad

    return capped(step)


def effective_step_size(
    step_size: tf.Tensor, bits: int, max_value: float | None = None
) -> tf.Tensor:
    """The step the quantizer uses: max(step, eps), capped at m / L for a capped ReLU.

    Parameters
    ----------
    step_size : tf.Tensor
        The learned step size s (scalar).
    bits : int
        The activation bit width.
    max_value : float or None
        The ReLU's cap m (6 for ReLU6), or None.

    Returns
    -------
    tf.Tensor
        ``s_eff = min(max(s, 1e-8), step_cap(bits, max_value))`` as float32. The forward pass
        and ``activation_spec`` both call this, so the converter's threshold is exactly the
        step the QANN used.

    Example
    -------
    >>> float(effective_step_size(tf.constant(3.0), 2, 6.0))
    2.0
    """
    step = tf.maximum(tf.cast(step_size, tf.float32), _EPSILON)
    cap = step_cap(bits, max_value)
    return step if cap is None else _cap_step(step, cap)


def quantize(
    x: tf.Tensor, step_size: tf.Tensor, bits: int, max_value: float | None = None
) -> tf.Tensor:
    """QFFS quantized ReLU of `x` with LSQ gradients.

    Gradient w.r.t. x: straight-through inside (0, L*s), zero outside. Gradient w.r.t. s:
    (q - x/s) inside, 0 below, L above, scaled by g = 1/sqrt(N*L) with N the number of
    activations per example (LSQ, Esser et al. 2020). With ``max_value`` the step is
    ``effective_step_size`` (capped at m / L; see there for its gradient).

    Parameters
    ----------
    x : tf.Tensor
        The pre-activation (or ReLU output: the quantizer clips below 0 itself).
    step_size : tf.Tensor
        The learned step size s (scalar).
    bits : int
        The activation bit width b (L = 2^b - 1 levels).
    max_value : float or None
        The cap m of a ReLU6 / ``ReLU(max_value=m)``, or None.

    Returns
    -------
    tf.Tensor
        ``s_eff * clip(floor(x / s_eff + 1/2), 0, L)``.

    Example
    -------
    >>> quantize(tf.constant([0.2, 0.3, 9.0]), tf.constant(0.5), bits=2).numpy()
    array([0. , 0.5, 1.5], dtype=float32)
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
    s = tf.cast(effective_step_size(step_size, bits, max_value), x.dtype)
    return _quantize(x, s)


def initial_step_size(
    x: tf.Tensor, bits: int, method: str = "lsq", max_value: float | None = None
) -> tf.Tensor:
    """Data-driven step size from a batch of the quantizer's (pre- or post-ReLU) input.

    Parameters
    ----------
    x : tf.Tensor
        A batch of the activation's input.
    bits : int
        The activation bit width.
    method : str
        "lsq": 2 * mean|relu(x)| / sqrt(L) (LSQ's rule on the ReLU output);
        "percentile": the 99.9th percentile of the positive part of x, divided by L.
    max_value : float or None
        The cap m of a capped ReLU: the result is at most ``step_cap(bits, m)``, so training
        starts with the step inside the range where it has an effect.

    Returns
    -------
    tf.Tensor
        A positive scalar (1.0 for a layer that is dead on this batch).

    Raises
    ------
    QuantizationError
        If ``method`` is unknown.

    Example
    -------
    >>> float(initial_step_size(tf.constant([[0.0, 3.0]]), 2, "percentile"))  # doctest: +ELLIPSIS
    0.99...
    """
    check_init(method)
    x = tf.nn.relu(tf.cast(x, tf.float32))
    num_levels = levels(bits)
    if method == "lsq":
        value = 2.0 * tf.reduce_mean(x) / math.sqrt(num_levels)
    else:
        flat = tf.sort(tf.reshape(x, [-1]))
        index = tf.cast(tf.cast(tf.size(flat) - 1, tf.float32) * 0.999, tf.int32)
        value = tf.gather(flat, index) / num_levels
    # A layer that is dead on the calibration batch still needs a positive step.
    value = tf.where(value > _EPSILON, value, tf.constant(1.0, tf.float32))
    cap = step_cap(bits, max_value)
    return value if cap is None else tf.minimum(value, cap)


def add_step_variables(layer: keras.layers.Layer, name: str) -> dict[str, tf.Variable]:
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


def quantize_with_lazy_init(
    x: tf.Tensor,
    variables: dict[str, tf.Variable],
    bits: int,
    init: str,
    max_value: float | None = None,
) -> tf.Tensor:
    """Quantize `x`; on the first batch ever seen, first set the step size from that batch."""
    step, initialized = variables["step_size"], variables["initialized"]
    in_replica = tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context() is False
    if in_replica and not isinstance(tf.distribute.get_strategy(), tf.distribute.OneDeviceStrategy):
        # Under a multi-replica strategy the step sizes must be initialised up front
        # (quantize_model(calibration_data=...)); a per-replica lazy assign cannot be merged.
        return quantize(x, step, bits, max_value)

    def init_from_batch():
        value = initial_step_size(x, bits, init, max_value)
        with tf.control_dependencies([step.assign(value), initialized.assign(1.0)]):
            return tf.identity(value)

    ready = tf.cond(initialized > 0.5, lambda: tf.identity(step), init_from_batch)
    with tf.control_dependencies([ready]):
        return quantize(x, step, bits, max_value)


@keras.utils.register_keras_serializable(package="qffs_tf")
class QuantReLU(keras.layers.Layer):
    """ReLU quantized to `bits` bits with a learned step size (the QFFS activation).

    Use it in place of ``ReLU()`` (or ``ReLU(max_value=m)``) to write a QFFS network directly.
    The step size initialises from the first batch the layer sees, as LSQ does.

    Parameters
    ----------
    bits : int
        Activation bit width b, 1 to 8 (L = 2^b - 1 non-zero levels).
    init : str
        Step-size initialisation: "lsq" or "percentile".
    max_value : float or None
        Cap of the ReLU it replaces (6 for ReLU6): the step is then at most m / L, so the top
        level never exceeds m.
    **kwargs
        Standard Keras layer arguments (``name``, ...).

    Raises
    ------
    QuantizationError
        If ``bits``, ``init`` or ``max_value`` is invalid.

    Example
    -------
    >>> layer = QuantReLU(bits=2, max_value=6.0)
    >>> y = layer(tf.constant([[0.0, 1.0, 7.0]]))
    >>> float(layer.effective_step_size) <= 2.0
    True
    """

    def __init__(self, bits: int = 2, init: str = "lsq", max_value: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.bits = check_bits(bits, "bits")
        self.init = check_init(init)
        self.max_value = check_max_value(max_value)

    def build(self, input_shape):
        self._vars = add_step_variables(self, "")
        super().build(input_shape)

    @property
    def step_size(self) -> tf.Variable:
        """The learned (raw) step size variable s."""
        return self._vars["step_size"]

    @property
    def effective_step_size(self) -> tf.Tensor:
        """The step the layer quantizes with: ``effective_step_size(s, bits, max_value)``."""
        return effective_step_size(self.step_size, self.bits, self.max_value)

    def call(self, inputs, training=None):
        return quantize_with_lazy_init(inputs, self._vars, self.bits, self.init, self.max_value)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "bits": self.bits,
            "init": self.init,
            "max_value": self.max_value,
        }
