"""Integer-exact arithmetic (QFFS.md section 6): the layers and the neuron model it needs.

In this mode spikes are unit events in {-1, 0, +1} and every weight a spike meets is an
integer, so every sum that time can reorder is a sum of integers, which float32 adds exactly
(all magnitudes stay below 2^24; the converter checks the bound). A neuron does not keep a
float running membrane: `ExactMembrane` keeps one exact integer accumulator A_p per input path
(a residual Add has several) and recomputes the membrane from them at every step with one
per-channel affine map,

    u = a_1 * A_1 + a_2 * A_2 + ... + b        (in units of the threshold theta: the
                                                  converter divides a_p and b by theta),

and the neuron model `IntegerQFFSNeuron` moves the net count n one step towards the level
clip(floor(u + 1/2), 0, L) that u codes: +1 when n is below it, -1 when above. That is the QFFS
rule of section 3 (+1 when n < L and v - n*theta >= theta/2, -1 when n > 0 and
v - n*theta < -theta/2) written so that the float comparison is made once, on u, by the same
function the integer reference QANN (`qffs_tf.integer_reference`) uses. When the network is
quiet, n equals that level bit for bit.

`ExactMembrane` and `SumPool` also run in static form (`temporal=False`), which is how the
integer reference QANN computes the same expressions from the final levels.

The guarantee rests on IEEE float32 multiplication and addition as separate, correctly
rounded operations, which TensorFlow's CPU kernels and LiteRT's builtin MUL and ADD are.
Under XLA (`simulate(..., jit_compile=True)`) the membrane's multiply and add may be fused
into one FMA, which rounds once: measured, the logits then differ from the reference in the
last bits, so integer-mode results are exact with jit_compile=False (the default).
"""

from __future__ import annotations

from qffs_tf._keras import keras, tf
from qffs_tf.snn.base import SpikingLayer, add_optional, running_sum, without_autograph
from qffs_tf.snn.layers import Integrate, _TemporalOp
from qffs_tf.snn.neurons.base import NeuronModel
from qffs_tf.snn.neurons.registry import register_neuron

SUM_POOLS = ("average_pooling2d", "global_average_pooling2d")


@register_neuron
class IntegerQFFSNeuron(NeuronModel):
    """The QFFS neuron of the integer mode: unit spikes, decisions from the recomputed membrane.

    Its input at each step is not a current but the membrane u (in units of the threshold)
    that `ExactMembrane` recomputes from exact integer accumulators; its state is the net
    count n. Per step: target = clip(floor(u + 1/2), 0, L); spike = clip(target - n, -1, 1);
    n += spike. The spike amplitude is 1: the threshold theta lives in the next membrane's
    per-channel scale, so synapses add integers.

    Example
    -------
    >>> snn = qffs_tf.convert(qat_model, timesteps=16, arithmetic="integer")
    """

    name = "qffs_integer"
    state_names = ("count",)
    arithmetic = "integer"

    def threshold(self, step_size: float, levels: int) -> float:
        return 1.0

    def initial_state(self, shape, threshold, levels: int, dtype=tf.float32):
        return [tf.zeros(shape, dtype)]

    @staticmethod
    def target_level(membrane: tf.Tensor, levels) -> tf.Tensor:
        """clip(floor(u + 1/2), 0, L): the level a membrane u (in threshold units) codes.

        The one place where the integer mode rounds; the integer reference QANN calls it too.
        """
        top = tf.cast(levels, membrane.dtype)
        return tf.minimum(tf.maximum(tf.floor(membrane + 0.5), 0.0), top)

    def update(self, current, state, threshold, levels, arithmetic: bool = False):
        # `current` is the membrane u here; min/max only, which XNNPACK runs in TFLite.
        (count,) = state
        target = self.target_level(current, levels)
        spikes = tf.minimum(tf.maximum(target - count, -1.0), 1.0)
        return spikes, [count + spikes]


class _Accumulators:
    """Exact integer accumulators, one per input path, and the affine membrane over them.

    Weights: `scales` (paths, features) and `bias` (features,), float32. The membrane is
    a product and a sum per path and nothing else: no division (a converter may turn a
    division by a constant into a multiplication by its reciprocal, which rounds differently).
    """

    def _setup(self, num_paths: int) -> None:
        self.num_paths = int(num_paths)

    def _paths(self, inputs) -> list:
        paths = list(inputs) if isinstance(inputs, list | tuple) else [inputs]
        if len(paths) != self.num_paths:
            raise ValueError(f"{self.name}: expected {self.num_paths} inputs, got {len(paths)}")
        return paths

    def build(self, input_shape):
        shapes = input_shape if isinstance(input_shape, list) else [input_shape]
        first = 2 if self.temporal else 1
        self.path_shapes = [tuple(int(d) for d in shape[first:]) for shape in shapes]
        features = self.path_shapes[0][-1]
        self.scales = self.add_weight(
            "scales", (self.num_paths, features), trainable=False, initializer="ones"
        )
        self.bias = self.add_weight("bias", (features,), trainable=False, initializer="zeros")
        keras.layers.Layer.build(self, input_shape)

    def membrane(self, accumulators: list[tf.Tensor]) -> tf.Tensor:
        """sum_p scales[p] * A_p + bias, in this order: the one expression that the SNN and
        the integer reference QANN both evaluate."""
        total = None
        for index, value in enumerate(accumulators):
            term = value * self.scales[index]
            total = term if total is None else total + term
        return total + self.bias

    def call(self, inputs):
        if not self.temporal:  # the reference: the paths are the totals already
            return self.membrane(self._paths(inputs))
        return self.window(inputs, self.initial_state(tf.shape(self._paths(inputs)[0])[0]))[0]

    def window(self, inputs, state, start: int = 0, steps: int | None = None):
        """See `SpikingLayer.window`: the accumulators carried from `state` (exact integers)."""
        paths = self._paths(inputs)
        totals = [running_sum(path, total) for path, total in zip(paths, state, strict=True)]
        return self.membrane(totals), [total[:, -1] for total in totals]

    def initial_state(self, batch_size, dtype=tf.float32):
        return [tf.zeros(tf.concat([[batch_size], shape], 0), dtype) for shape in self.path_shapes]

    def step(self, inputs, state, first, arithmetic: bool = False):
        paths = inputs if self.num_paths > 1 else [inputs]
        totals = [add_optional(total, path) for total, path in zip(state, paths, strict=True)]
        return self.membrane(totals), totals


@keras.utils.register_keras_serializable(package="qffs_tf")
class ExactMembrane(_Accumulators, SpikingLayer, keras.layers.Layer):
    """The membrane of a layer of integer-mode neurons, recomputed from exact accumulators.

    Inputs: one tensor per path (integer-valued spike sums, or the analog static value
    delivered at step 0). Output: u = sum_p scales[p] * A_p + bias at every step, with A_p
    the running sum of path p; static form (`temporal=False`): the same expression on totals.

    Parameters
    ----------
    num_paths : int
        Number of input paths (a residual Add gives one per branch).
    temporal : bool
        Window/step form (SNN) or static form (integer reference QANN).

    Example
    -------
    >>> u = ExactMembrane(2)([branch_a, branch_b])  # (B, T, ...)
    """

    def __init__(self, num_paths: int, temporal: bool = True, **kwargs):
        super().__init__(temporal=temporal, **kwargs)
        self._setup(num_paths)

    def get_config(self):
        return {**super().get_config(), "num_paths": self.num_paths}


@keras.utils.register_keras_serializable(package="qffs_tf")
class ExactIntegrate(_Accumulators, Integrate):
    """The output layer in integer mode: logits at step t = (sum_p scales[p] * A_p(t) + bias),
    from exact accumulators, the same expression as the integer reference's logits.

    Example
    -------
    >>> logits_per_step = ExactIntegrate(1)(charges)  # (B, T, classes)
    """

    def __init__(self, num_paths: int, mean: bool = False, **kwargs):
        if mean:
            raise ValueError("ExactIntegrate needs the 'once' input coding (mean=False)")
        super().__init__(mean=False, **kwargs)
        self._setup(num_paths)

    def get_config(self):
        return {**super().get_config(), "num_paths": self.num_paths}


@keras.utils.register_keras_serializable(package="qffs_tf")
class SumPool(_TemporalOp):
    """Average pooling as an exact integer sum (the 1/area goes into the membrane's scale).

    "average_pooling2d" ('valid' padding): window sums by a depthwise convolution with ones
    (exact for integers, unlike avg_pool's division); "global_average_pooling2d": sum over
    height and width.

    Example
    -------
    >>> SumPool("average_pooling2d", (2, 2), (2, 2))(spikes)
    """

    def __init__(self, op: str, pool_size=(2, 2), strides=(2, 2), temporal=True, **kwargs):
        super().__init__(temporal=temporal, **kwargs)
        if op not in SUM_POOLS:
            raise ValueError(f"op must be one of {SUM_POOLS}, got {op!r}")
        self.op = op
        self.pool_size = tuple(int(p) for p in pool_size)
        self.strides = tuple(int(s) for s in strides)

    def build(self, input_shape):
        self.channels = int(input_shape[-1])
        super().build(input_shape)

    def apply(self, x: tf.Tensor) -> tf.Tensor:
        if self.op == "global_average_pooling2d":
            return tf.reduce_sum(x, axis=[1, 2])
        ones = tf.ones((*self.pool_size, self.channels, 1), x.dtype)
        return tf.nn.depthwise_conv2d(x, ones, (1, *self.strides, 1), "VALID")

    def get_config(self):
        return {
            **super().get_config(),
            "op": self.op,
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
        }


@keras.utils.register_keras_serializable(package="qffs_tf")
class LevelOf(keras.layers.Layer):
    """The integer reference's quantizer: the level a membrane u codes (static form of the
    integer neuron's decision, `IntegerQFFSNeuron.target_level`).

    Example
    -------
    >>> levels = LevelOf(3)(u)
    """

    def __init__(self, levels: int, **kwargs):
        super().__init__(**kwargs)
        self.levels = int(levels)

    @without_autograph
    def call(self, inputs):
        return IntegerQFFSNeuron.target_level(inputs, self.levels)

    def get_config(self):
        return {**super().get_config(), "levels": self.levels}


def is_integer_snn(snn: keras.Model) -> bool:
    """Whether an SNN was converted with arithmetic="integer"."""
    return any(isinstance(layer, ExactIntegrate) for layer in snn.layers)
