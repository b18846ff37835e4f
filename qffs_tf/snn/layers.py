"""Spiking layers: the building blocks of a converted QFFS network.

Every tensor inside an SNN is either *static*, shape (batch, ...), a value delivered once at
step 0 (the analog input and whatever is computed from it before the first neuron layer), or
*temporal*, shape (batch, T, ...), one slice per time step. The invariant that makes the
conversion exact: the sum over time of a temporal tensor equals the QANN's value of it.

Each temporal layer runs in two ways that give identical numbers:
- `call` (layerwise): the whole window at once; linear ops fold time into the batch;
- `step` (stepwise/streaming): one time step, with the layer's state carried by the caller.
"""

from __future__ import annotations

from qffs_tf._keras import keras, tf

LINEAR_KINDS = ("conv2d", "depthwise_conv2d", "dense")
SHAPE_OPS = ("flatten", "average_pooling2d", "global_average_pooling2d", "zero_padding2d")


def _fold_time(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(B, T, ...) -> (B*T, ...), and the (B, T) pair to unfold with."""
    shape = tf.shape(x)
    return tf.reshape(x, tf.concat([[-1], shape[2:]], 0)), shape[:2]


def _unfold_time(y: tf.Tensor, batch_time: tf.Tensor) -> tf.Tensor:
    return tf.reshape(y, tf.concat([batch_time, tf.shape(y)[1:]], 0))


MAX_UNROLLED_STEPS = 16


def running_sum(x: tf.Tensor) -> tf.Tensor:
    """Cumulative sum over the time axis (axis 1).

    For a short window known when tracing, T-1 slice additions: on CPU this is several times
    faster than tf.cumsum over a middle axis (measured: 12 ms vs 95 ms on 64x8x28x28x32).
    """
    steps = x.shape[1]
    if steps is None or steps > 4 * MAX_UNROLLED_STEPS:
        return tf.cumsum(x, axis=1)
    totals = [x[:, 0]]
    for t in range(1, steps):
        totals.append(totals[-1] + x[:, t])
    return tf.stack(totals, axis=1)


def _at_step_zero(value: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """`value` broadcast over a temporal tensor shaped like `like`, at step 0 only."""
    steps = tf.shape(like)[1]
    mask = tf.cast(tf.equal(tf.range(steps), 0), like.dtype)
    rank = like.shape.rank
    mask = tf.reshape(mask, tf.concat([[1, steps], tf.ones([rank - 2], tf.int32)], 0))
    return mask * tf.cast(value, like.dtype)


class SpikingLayer(keras.layers.Layer):
    """Base class: a layer with a layerwise `call` and a stateful `step`."""

    def __init__(self, temporal: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.temporal = bool(temporal)

    def initial_state(self, batch_size: int | tf.Tensor, dtype=tf.float32) -> list[tf.Tensor]:
        """State before step 0 (empty for stateless layers)."""
        return []

    def step(self, inputs, state: list[tf.Tensor], t: int | tf.Tensor):
        """One time step: (output at step t, new state). Only for temporal layers."""
        raise NotImplementedError

    def get_config(self):
        return {**super().get_config(), "temporal": self.temporal}


@keras.utils.register_keras_serializable(package="qffs_tf")
class ToTemporal(SpikingLayer):
    """Static -> temporal: the value arrives at step 0, nothing afterwards.

    This never copies its input T times in stepwise mode; in layerwise mode it materialises
    T slices of which T-1 are zero (the first neuron layer needs its input per step).
    """

    def __init__(self, timesteps: int, **kwargs):
        kwargs.pop("temporal", None)
        super().__init__(temporal=True, **kwargs)
        if int(timesteps) < 1:
            raise ValueError(f"timesteps must be at least 1, got {timesteps}")
        self.timesteps = int(timesteps)

    def call(self, inputs):
        rank = inputs.shape.rank
        padding = [[0, 0], [0, self.timesteps - 1]] + [[0, 0]] * (rank - 1)
        return tf.pad(tf.expand_dims(inputs, 1), padding)

    def step(self, inputs, state, t):
        return (inputs if int(t) == 0 else tf.zeros_like(inputs)), state

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], self.timesteps, *input_shape[1:]])

    def get_config(self):
        config = super().get_config()
        config.pop("temporal")
        return {**config, "timesteps": self.timesteps}


@keras.utils.register_keras_serializable(package="qffs_tf")
class SpikingLinear(SpikingLayer):
    """Conv2D, DepthwiseConv2D or Dense on charges or spikes; the bias arrives at step 0 only.

    Holds the (BatchNorm-folded) kernel; when the input is temporal, time is folded into the
    batch so that the op runs once over the whole window.
    """

    def __init__(
        self,
        kind: str,
        kernel_shape,
        strides=(1, 1),
        padding: str = "valid",
        dilation_rate=(1, 1),
        temporal: bool = True,
        **kwargs,
    ):
        super().__init__(temporal=temporal, **kwargs)
        if kind not in LINEAR_KINDS:
            raise ValueError(f"kind must be one of {LINEAR_KINDS}, got {kind!r}")
        self.kind = kind
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        self.strides = tuple(int(s) for s in strides)
        self.padding = padding.upper()
        self.dilation_rate = tuple(int(d) for d in dilation_rate)

    def build(self, input_shape):
        out_channels = self.kernel_shape[-1]
        if self.kind == "depthwise_conv2d":
            out_channels = self.kernel_shape[2] * self.kernel_shape[3]
        self.kernel = self.add_weight("kernel", self.kernel_shape, trainable=False)
        self.bias = self.add_weight("bias", (out_channels,), trainable=False, initializer="zeros")
        super().build(input_shape)

    def linear(self, x: tf.Tensor, kernel: tf.Tensor | None = None) -> tf.Tensor:
        """The op without bias on a batch of static-shaped inputs (optionally another kernel)."""
        kernel = self.kernel if kernel is None else kernel
        if self.kind == "dense":
            return tf.tensordot(x, kernel, [[x.shape.rank - 1], [0]])
        if self.kind == "conv2d":
            return tf.nn.conv2d(x, kernel, self.strides, self.padding, dilations=self.dilation_rate)
        return tf.nn.depthwise_conv2d(
            x,
            kernel,
            (1, *self.strides, 1),
            self.padding,
            dilations=self.dilation_rate,
        )

    def call(self, inputs):
        if not self.temporal:
            return self.linear(inputs) + self.bias
        folded, batch_time = _fold_time(inputs)
        y = _unfold_time(self.linear(folded), batch_time)
        return y + _at_step_zero(self.bias, y)

    def step(self, inputs, state, t):
        y = self.linear(inputs)
        return (y + self.bias if int(t) == 0 else y), state

    def get_config(self):
        return {
            **super().get_config(),
            "kind": self.kind,
            "kernel_shape": list(self.kernel_shape),
            "strides": list(self.strides),
            "padding": self.padding.lower(),
            "dilation_rate": list(self.dilation_rate),
        }


@keras.utils.register_keras_serializable(package="qffs_tf")
class SpikingAffine(SpikingLayer):
    """A BatchNormalization that could not be folded: per-channel scale every step, offset
    at step 0 (so the sum over time is exactly scale * total + offset)."""

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.scale = self.add_weight("scale", (channels,), trainable=False, initializer="ones")
        self.offset = self.add_weight("offset", (channels,), trainable=False, initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        y = inputs * self.scale
        if not self.temporal:
            return y + self.offset
        return y + _at_step_zero(self.offset, y)

    def step(self, inputs, state, t):
        y = inputs * self.scale
        return (y + self.offset if int(t) == 0 else y), state


@keras.utils.register_keras_serializable(package="qffs_tf")
class SpikingShapeOp(SpikingLayer):
    """Linear, weightless ops on charges or spikes: Flatten, AveragePooling2D,
    GlobalAveragePooling2D, ZeroPadding2D."""

    def __init__(
        self,
        op: str,
        pool_size=(2, 2),
        strides=(2, 2),
        padding="valid",
        pad_width=((0, 0), (0, 0)),
        temporal: bool = True,
        **kwargs,
    ):
        super().__init__(temporal=temporal, **kwargs)
        if op not in SHAPE_OPS:
            raise ValueError(f"op must be one of {SHAPE_OPS}, got {op!r}")
        self.op = op
        self.pool_size = tuple(int(p) for p in pool_size)
        self.strides = tuple(int(s) for s in strides)
        self.padding = padding.upper()
        self.pad_width = tuple(tuple(int(p) for p in pair) for pair in pad_width)

    def apply(self, x: tf.Tensor) -> tf.Tensor:
        """The op on a batch of static-shaped inputs."""
        if self.op == "flatten":
            features = x.shape[1:].num_elements()
            return tf.reshape(x, [tf.shape(x)[0], features if features is not None else -1])
        if self.op == "average_pooling2d":
            return tf.nn.avg_pool2d(x, self.pool_size, self.strides, self.padding)
        if self.op == "global_average_pooling2d":
            return tf.reduce_mean(x, axis=[1, 2])
        return tf.pad(x, [[0, 0], list(self.pad_width[0]), list(self.pad_width[1]), [0, 0]])

    def call(self, inputs):
        if not self.temporal:
            return self.apply(inputs)
        folded, batch_time = _fold_time(inputs)
        return _unfold_time(self.apply(folded), batch_time)

    def step(self, inputs, state, t):
        return self.apply(inputs), state

    def get_config(self):
        return {
            **super().get_config(),
            "op": self.op,
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": self.padding.lower(),
            "pad_width": [list(pair) for pair in self.pad_width],
        }


@tf.function(jit_compile=True)
def _temporal_max_pool(inputs, pool_size, strides, padding):
    """maxpool(c_t) - maxpool(c_{t-1}) for every t, with c the running sum; one XLA cluster."""
    counts = running_sum(inputs)
    folded, batch_time = _fold_time(counts)
    pooled = _unfold_time(tf.nn.max_pool2d(folded, pool_size, strides, padding), batch_time)
    previous = tf.pad(pooled[:, :-1], [[0, 0], [1, 0], [0, 0], [0, 0], [0, 0]])
    return pooled - previous


@keras.utils.register_keras_serializable(package="qffs_tf")
class SpikingMaxPool2D(SpikingLayer):
    """Max-pooling on spike trains by the running max of counts (QFFS.md §3).

    Output at step t = maxpool(c_t) - maxpool(c_{t-1}), with c_t the running sum of the input;
    for spikes this is a spike in {-1, 0, +1} (times the amplitude), and its total over time is
    maxpool(total): exactly the QANN's max-pool.
    """

    def __init__(self, pool_size=(2, 2), strides=(2, 2), padding="valid", temporal=True, **kwargs):
        super().__init__(temporal=temporal, **kwargs)
        self.pool_size = tuple(int(p) for p in pool_size)
        self.strides = tuple(int(s) for s in strides)
        self.padding = padding.upper()

    def pool(self, x: tf.Tensor) -> tf.Tensor:
        return tf.nn.max_pool2d(x, self.pool_size, self.strides, self.padding)

    def call(self, inputs):
        if not self.temporal:
            return self.pool(inputs)
        return _temporal_max_pool(inputs, self.pool_size, self.strides, self.padding)

    def initial_state(self, batch_size, dtype=tf.float32):
        shape = self.input_spec_shape
        counts = tf.zeros([batch_size, *shape], dtype)
        return [counts, self.pool(counts)]

    def build(self, input_shape):
        self.input_spec_shape = tuple(int(d) for d in input_shape[-3:])
        super().build(input_shape)

    def step(self, inputs, state, t):
        counts, previous = state
        counts = counts + inputs
        pooled = self.pool(counts)
        return pooled - previous, [counts, pooled]

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": self.padding.lower(),
        }


def _if_update(inputs, membrane, count, threshold: float, levels: int, noise_suppression: bool):
    """One step of the QFFS IF rule: (spikes x theta, [membrane, count])."""
    theta = tf.cast(threshold, inputs.dtype)
    membrane = membrane + inputs
    spikes = tf.cast(tf.logical_and(membrane >= theta, count < levels), inputs.dtype)
    if noise_suppression:  # v >= theta > 0 and v < 0 exclude each other
        spikes -= tf.cast(tf.logical_and(membrane < 0, count > 0), inputs.dtype)
    amplitude = spikes * theta
    return amplitude, [membrane - amplitude, count + spikes]


@tf.function(jit_compile=True)
def _if_window(inputs, membrane, count, threshold, levels, noise_suppression):
    """The IF rule over a short window, unrolled and fused into one XLA cluster."""
    outputs = []
    for t in range(inputs.shape[1]):
        spikes, (membrane, count) = _if_update(
            inputs[:, t], membrane, count, threshold, levels, noise_suppression
        )
        outputs.append(spikes)
    return tf.stack(outputs, axis=1)


@keras.utils.register_keras_serializable(package="qffs_tf")
class IFCell(keras.layers.Layer):
    """Integrate-and-fire neurons with QFFS negative spikes, as a Keras RNN cell.

    State: membrane v (starts at theta/2) and net spike count n (starts at 0). Per step:
    v += input; if v >= theta and n < L: +1 spike, v -= theta; else if noise suppression and
    v < 0 and n > 0: -1 spike, v += theta. The output is the spike times theta, so that the
    next layer's weights need no rescaling and residual sums stay in the QANN's units.
    """

    def __init__(
        self, threshold: float, levels: int, neuron_shape, noise_suppression=True, **kwargs
    ):
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        self.levels = int(levels)
        self.neuron_shape = tuple(int(d) for d in neuron_shape)
        self.noise_suppression = bool(noise_suppression)
        self.state_size = [tf.TensorShape(self.neuron_shape), tf.TensorShape(self.neuron_shape)]
        self.output_size = tf.TensorShape(self.neuron_shape)

    def get_initial_state(self, inputs=None, batch_size=None, dtype=None):
        dtype = dtype or tf.float32
        shape = tf.concat([[batch_size], self.neuron_shape], 0)
        return [tf.fill(shape, tf.cast(self.threshold / 2, dtype)), tf.zeros(shape, dtype)]

    def call(self, inputs, states):
        return _if_update(
            inputs, states[0], states[1], self.threshold, self.levels, self.noise_suppression
        )

    def get_config(self):
        return {
            **super().get_config(),
            "threshold": self.threshold,
            "levels": self.levels,
            "neuron_shape": list(self.neuron_shape),
            "noise_suppression": self.noise_suppression,
        }


@keras.utils.register_keras_serializable(package="qffs_tf")
class IFNeurons(keras.layers.RNN):
    """A layer of IF neurons: `tf_keras.layers.RNN` over the time axis of an IFCell.

    `source` names the QANN activation layer it replaces; `pooled_by` names the max-pool
    that was moved behind it (if any), so verification compares like with like.
    """

    def __init__(self, cell, source: str = "", pooled_by: str = "", **kwargs):
        if isinstance(cell, dict):
            cell = keras.layers.deserialize(cell, custom_objects={"IFCell": IFCell})
        kwargs.setdefault("return_sequences", True)
        super().__init__(cell, **kwargs)
        self.source = source
        self.pooled_by = pooled_by
        self.temporal = True

    def call(self, inputs, mask=None, training=None, initial_state=None):
        steps = inputs.shape[1]
        if initial_state is not None or steps is None or steps > MAX_UNROLLED_STEPS:
            return super().call(inputs, mask, training, initial_state)
        # Short windows: the cell's rule unrolled over the steps in one XLA cluster, several
        # times faster on CPU than the generic RNN loop; same operations, same numbers.
        membrane, count = self.cell.get_initial_state(
            batch_size=tf.shape(inputs)[0], dtype=inputs.dtype
        )
        cell = self.cell
        # Threshold and cap as tensors: layers of the same shape share one compiled window.
        return _if_window(
            inputs,
            membrane,
            count,
            tf.constant(cell.threshold, inputs.dtype),
            tf.constant(cell.levels, inputs.dtype),
            cell.noise_suppression,
        )

    def get_config(self):
        return {**super().get_config(), "source": self.source, "pooled_by": self.pooled_by}

    @property
    def threshold(self) -> float:
        return self.cell.threshold

    def initial_state(self, batch_size, dtype=tf.float32):
        return self.cell.get_initial_state(batch_size=batch_size, dtype=dtype)

    def step(self, inputs, state, t):
        return self.cell.call(inputs, state)


@keras.utils.register_keras_serializable(package="qffs_tf")
class SpikingAdd(SpikingLayer):
    """Residual sum of temporal tensors (linear, so it acts on charges and spikes alike)."""

    def call(self, inputs):
        return tf.add_n(inputs)

    def step(self, inputs, state, t):
        return tf.add_n(inputs), state


@keras.utils.register_keras_serializable(package="qffs_tf")
class Integrate(SpikingLayer):
    """The output layer's membrane: logits at step t are the charge received up to t."""

    def call(self, inputs):
        return running_sum(inputs)

    def initial_state(self, batch_size, dtype=tf.float32):
        return [tf.zeros([batch_size, *self.output_dims], dtype)]

    def build(self, input_shape):
        self.output_dims = tuple(int(d) for d in input_shape[2:])
        super().build(input_shape)

    def step(self, inputs, state, t):
        total = state[0] + inputs
        return total, [total]


@keras.utils.register_keras_serializable(package="qffs_tf")
class FinalStep(SpikingLayer):
    """The logits after the last step: what `snn.predict` returns."""

    def call(self, inputs):
        return inputs[:, -1]

    def step(self, inputs, state, t):
        return inputs, state


SPIKING_LAYERS = (
    ToTemporal,
    SpikingLinear,
    SpikingAffine,
    SpikingShapeOp,
    SpikingMaxPool2D,
    IFCell,
    IFNeurons,
    SpikingAdd,
    Integrate,
    FinalStep,
)


def custom_objects() -> dict[str, type]:
    """Custom objects needed to load a saved SNN."""
    return {cls.__name__: cls for cls in SPIKING_LAYERS}
