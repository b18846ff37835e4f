"""Spiking layers other than the neurons: input coding, linear ops, pooling, the readout.

Each is a Keras layer implementing `qffs_tf.snn.base.SpikingLayer`: `window` runs a run of
steps from a carried state, `call` the whole window (or the static value), `step` one time
step. The invariant that makes the conversion
exact: for the "once" input coding, the sum over time of a temporal tensor equals the QANN's
value of it.
"""

from __future__ import annotations

from qffs_tf._keras import keras, tf
from qffs_tf.snn.base import (
    MAX_UNROLLED_STEPS,
    SpikingLayer,
    active_steps,
    add_optional,
    fold_time,
    fused,
    in_compiled_context,
    is_first_tensor,
    latest,
    on_active_steps,
    over_window,
    pairwise_sum,
    running_sum,
    static_part,
    unfold_time,
    worth_skipping,
)

LINEAR_KINDS = ("conv2d", "depthwise_conv2d", "dense", "conv2d_transpose")
SHAPE_OPS = (
    "flatten",
    "average_pooling2d",
    "global_average_pooling2d",
    "zero_padding2d",
    "cropping2d",
    "reshape",
    "permute",
    "upsampling2d",
)


class _TemporalOp(SpikingLayer, keras.layers.Layer):
    """A stateless op applied to each step's slice (time folded into the batch)."""

    def apply(self, x: tf.Tensor) -> tf.Tensor:
        """The op on a batch of static-shaped inputs."""
        raise NotImplementedError

    def call(self, inputs):
        if not self.temporal:
            return self.apply(inputs)
        folded, batch_time = fold_time(inputs)
        return unfold_time(self.apply(folded), batch_time)

    def step(self, inputs, state, first, arithmetic: bool = False):
        return (None if inputs is None else self.apply(inputs)), state

    def zero_from(self, inputs):
        return latest(inputs)  # zero in, zero out, no state


@keras.utils.register_keras_serializable(package="qffs_tf")
class ToTemporal(SpikingLayer, keras.layers.Layer):
    """Static -> temporal: the analog value enters the window, as the input coding says.

    With the "once" coding the value arrives at step 0 and nothing afterwards; with
    "constant" (`constant_input=True`) it arrives at every step, and in one-step mode the
    value computed at step 0 is kept in the state, so the static part is never recomputed.

    Parameters
    ----------
    timesteps : int
        Length of the window T.
    constant_input : bool
        Deliver the value at every step (rate coding) instead of at step 0 only.

    Example
    -------
    >>> ToTemporal(8)(static)  # (B, ...) -> (B, 8, ...), zeros after step 0
    """

    def __init__(self, timesteps: int, constant_input: bool = False, **kwargs):
        kwargs.pop("temporal", None)
        super().__init__(temporal=True, **kwargs)
        from qffs_tf.snn.timesteps import check_timesteps

        self.timesteps = check_timesteps(timesteps)
        self.constant_input = bool(constant_input)

    def call(self, inputs):
        return self.window(inputs, self.initial_state(tf.shape(inputs)[0], inputs.dtype))[0]

    def window(self, inputs, state, start: int = 0, steps: int | None = None):
        steps = self.timesteps if steps is None else int(steps)
        rank = inputs.shape.rank
        if self.constant_input:
            multiples = [1, steps] + [1] * (rank - 1)
            return tf.tile(tf.expand_dims(inputs, 1), multiples), [inputs]
        if start > 0:  # the value arrived at step 0, in an earlier run
            return tf.zeros(
                tf.concat([tf.shape(inputs)[:1], [steps], tf.shape(inputs)[1:]], 0)
            ), state
        padding = [[0, 0], [0, steps - 1]] + [[0, 0]] * (rank - 1)
        return tf.pad(tf.expand_dims(inputs, 1), padding), state

    def build(self, input_shape):
        self.static_shape = tuple(int(d) for d in input_shape[1:])
        super().build(input_shape)

    def initial_state(self, batch_size, dtype=tf.float32):
        if not self.constant_input:
            return []
        return [tf.zeros(tf.concat([[batch_size], self.static_shape], 0), dtype)]

    def step(self, inputs, state, first, arithmetic: bool = False):
        if not self.constant_input:
            return static_part(inputs, first, False), state
        if inputs is None:  # static layers ran at step 0 only: replay what they gave
            return state[0], state
        if is_first_tensor(first):  # the value given at step 0, kept afterwards (exact)
            value = inputs * first + state[0] * (1.0 - first)
            return value, [value]
        return inputs, [inputs]

    def zero_from(self, inputs):
        return None if self.constant_input else 1  # "once": the value arrives at step 0

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], self.timesteps, *input_shape[1:]])

    def get_config(self):
        config = super().get_config()
        config.pop("temporal")
        return {**config, "timesteps": self.timesteps, "constant_input": self.constant_input}


def _depthwise_by_taps(x, kernel, strides, padding: str, dilations) -> tf.Tensor:
    """A depthwise convolution as a sum over its kernel taps of shifted, strided slices times
    the tap's weights: elementwise work that XLA fuses into one loop on CPU, where its own
    depthwise convolution is slow (measured: MobileNet-v1's QANN 10x slower under XLA)."""
    rows, cols, channels, multiplier = (int(d) for d in kernel.shape)
    pads, sizes = [], []
    for size, taps, stride, dilation in zip(
        x.shape[1:3], (rows, cols), strides, dilations, strict=True
    ):
        span = (taps - 1) * dilation + 1
        if padding == "SAME":
            out = -(-int(size) // stride)
            total = max((out - 1) * stride + span - int(size), 0)
            pads.append([total // 2, total - total // 2])
        else:
            out = (int(size) - span) // stride + 1
            pads.append([0, 0])
        sizes.append(out)
    x = tf.pad(x, [[0, 0], pads[0], pads[1], [0, 0]])
    if multiplier > 1:  # output channel c * multiplier + m reads input channel c
        x = tf.repeat(x, multiplier, axis=-1)
    weights = tf.reshape(kernel, [rows, cols, channels * multiplier])
    total = None
    for i in range(rows):
        for j in range(cols):
            top, left = i * dilations[0], j * dilations[1]
            patch = x[
                :,
                top : top + (sizes[0] - 1) * strides[0] + 1 : strides[0],
                left : left + (sizes[1] - 1) * strides[1] + 1 : strides[1],
                :,
            ]
            term = patch * weights[i, j]
            total = term if total is None else total + term
    return total


@keras.utils.register_keras_serializable(package="qffs_tf")
class SpikingLinear(SpikingLayer, keras.layers.Layer):
    """Conv2D, DepthwiseConv2D or Dense on charges or spikes.

    Holds the (BatchNorm-folded) kernel; the bias is delivered by the input coding (at step 0,
    or at every step). On a temporal input, time is folded into the batch so that the op runs
    once over the whole window.

    Parameters
    ----------
    kind : {"conv2d", "depthwise_conv2d", "dense", "conv2d_transpose"}
    kernel_shape : tuple of int
    strides, padding, dilation_rate
        As in the Keras layer (convolutions only).
    temporal : bool
        Acts on the window (True) or on the static analog value (False).
    constant_input : bool
        Bias at every step instead of at step 0 only.

    Example
    -------
    >>> layer = SpikingLinear("dense", (128, 10))
    """

    def __init__(
        self,
        kind: str,
        kernel_shape,
        strides=(1, 1),
        padding: str = "valid",
        dilation_rate=(1, 1),
        temporal: bool = True,
        constant_input: bool = False,
        output_size=None,
        **kwargs,
    ):
        super().__init__(temporal=temporal, **kwargs)
        if kind not in LINEAR_KINDS:
            raise ValueError(f"kind must be one of {LINEAR_KINDS}, got {kind!r}")
        if kind == "conv2d_transpose" and output_size is None:
            raise ValueError("conv2d_transpose needs output_size (height, width)")
        self.kind = kind
        self.output_size = None if output_size is None else tuple(int(d) for d in output_size)
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        self.strides = tuple(int(s) for s in strides)
        self.padding = padding.upper()
        self.dilation_rate = tuple(int(d) for d in dilation_rate)
        self.constant_input = bool(constant_input)

    @property
    def out_channels(self) -> int:
        if self.kind == "depthwise_conv2d":
            return self.kernel_shape[2] * self.kernel_shape[3]
        if self.kind == "conv2d_transpose":  # kernel (h, w, out, in)
            return self.kernel_shape[2]
        return self.kernel_shape[-1]

    def build(self, input_shape):
        self.kernel = self.add_weight("kernel", self.kernel_shape, trainable=False)
        self.bias = self.add_weight(
            "bias", (self.out_channels,), trainable=False, initializer="zeros"
        )
        super().build(input_shape)

    def linear(self, x: tf.Tensor, kernel: tf.Tensor | None = None) -> tf.Tensor:
        """The op without bias on a batch of static-shaped inputs (optionally another kernel)."""
        kernel = self.kernel if kernel is None else kernel
        if self.kind == "dense":
            if x.shape.rank == 2:  # a plain MatMul: no shape arithmetic in TFLite
                return tf.matmul(x, kernel)
            return tf.tensordot(x, kernel, [[x.shape.rank - 1], [0]])
        if self.kind == "conv2d":
            return tf.nn.conv2d(x, kernel, self.strides, self.padding, dilations=self.dilation_rate)
        if self.kind == "conv2d_transpose":
            shape = tf.stack([tf.shape(x)[0], *self.output_size, self.out_channels])
            return tf.nn.conv2d_transpose(x, kernel, shape, self.strides, self.padding)
        if in_compiled_context():  # XLA's CPU depthwise convolution is ~10x slower than this
            return _depthwise_by_taps(x, kernel, self.strides, self.padding, self.dilation_rate)
        return tf.nn.depthwise_conv2d(
            x, kernel, (1, *self.strides, 1), self.padding, dilations=self.dilation_rate
        )

    def output_step_shape(self, input_step_shape) -> tuple[int, ...]:
        """Shape of one sample's output for one sample's input shape (geometry only)."""
        shape = tuple(int(d) for d in input_step_shape)
        if self.kind == "dense":
            return (*shape[:-1], self.out_channels)
        if self.kind == "conv2d_transpose":
            return (*self.output_size, self.out_channels)
        sizes = []
        for size, kernel, stride, dilation in zip(
            shape[:2], self.kernel_shape[:2], self.strides, self.dilation_rate, strict=True
        ):
            span = (kernel - 1) * dilation + 1
            sizes.append(
                -(-size // stride) if self.padding == "SAME" else (size - span) // stride + 1
            )
        return (*sizes, self.out_channels)

    def _zeros(self, inputs: tf.Tensor, per_sample_shape) -> tf.Tensor:
        """Zeros shaped like the op's output for a batch of `inputs`."""
        return tf.zeros(
            tf.concat([tf.shape(inputs)[:1], self.output_step_shape(per_sample_shape)], 0)
        )

    def call(self, inputs):
        return self.window(inputs, [])[0]

    def window(self, inputs, state, start: int = 0, steps: int | None = None):
        if not self.temporal:
            return self.linear(inputs) + self.bias, state
        y = on_active_steps(self.linear, inputs, self._zeros(inputs, inputs.shape[2:]))
        if start == 0 or self.constant_input:
            y = y + over_window(self.bias, y, self.constant_input)
        return y, state

    def step(self, inputs, state, first, arithmetic: bool = False):
        if inputs is None:
            # Zero input: only the bias (a zero-input linear op gives no per-sample shape).
            bias = static_part(self.bias, first, self.constant_input)
            if bias is not None:
                raise ValueError(f"{self.name}: a bias needs an input tensor to take its shape")
            return None, state
        if arithmetic or not worth_skipping(inputs.shape[1:].num_elements()):
            y = self.linear(inputs)  # no control flow (TFLite), or little to skip
        else:  # skip the op when this step's input is zero for the whole batch
            y = tf.cond(
                active_steps(tf.expand_dims(inputs, 1))[0],
                lambda: self.linear(inputs),
                lambda: self._zeros(inputs, inputs.shape[1:]),
            )
        return add_optional(y, static_part(self.bias, first, self.constant_input)), state

    def zero_from(self, inputs):
        # The bias arrives with the input coding: at step 0 only, or at every step.
        return None if self.constant_input else latest(inputs)

    def get_config(self):
        return {
            **super().get_config(),
            "kind": self.kind,
            "kernel_shape": list(self.kernel_shape),
            "strides": list(self.strides),
            "padding": self.padding.lower(),
            "dilation_rate": list(self.dilation_rate),
            "constant_input": self.constant_input,
            "output_size": None if self.output_size is None else list(self.output_size),
        }


@keras.utils.register_keras_serializable(package="qffs_tf")
class SpikingAffine(SpikingLayer, keras.layers.Layer):
    """A BatchNormalization that could not be folded: per-channel scale at every step, offset
    delivered by the input coding (so the sum over time is exactly scale * total + offset).

    Example
    -------
    >>> SpikingAffine(name="bn")(charges)
    """

    def __init__(self, temporal: bool = True, constant_input: bool = False, **kwargs):
        super().__init__(temporal=temporal, **kwargs)
        self.constant_input = bool(constant_input)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.scale = self.add_weight("scale", (channels,), trainable=False, initializer="ones")
        self.offset = self.add_weight("offset", (channels,), trainable=False, initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        return self.window(inputs, [])[0]

    def window(self, inputs, state, start: int = 0, steps: int | None = None):
        y = inputs * self.scale
        if not self.temporal:
            return y + self.offset, state
        if start == 0 or self.constant_input:
            y = y + over_window(self.offset, y, self.constant_input)
        return y, state

    def step(self, inputs, state, first, arithmetic: bool = False):
        if inputs is None:
            if static_part(self.offset, first, self.constant_input) is not None:
                raise ValueError(f"{self.name}: an offset needs an input tensor for its shape")
            return None, state
        y = inputs * self.scale
        return add_optional(y, static_part(self.offset, first, self.constant_input)), state

    def zero_from(self, inputs):
        # The offset arrives with the input coding: at step 0 only, or at every step.
        return None if self.constant_input else latest(inputs)

    def get_config(self):
        return {**super().get_config(), "constant_input": self.constant_input}


@keras.utils.register_keras_serializable(package="qffs_tf")
class SpikingShapeOp(_TemporalOp):
    """Linear, weightless ops on charges or spikes: Flatten, AveragePooling2D,
    GlobalAveragePooling2D, ZeroPadding2D, Cropping2D, Reshape, Permute, UpSampling2D
    (nearest and bilinear interpolation are linear maps).

    Example
    -------
    >>> SpikingShapeOp("flatten")(spikes)  # (B, T, H, W, C) -> (B, T, H*W*C)
    """

    def __init__(
        self,
        op: str,
        pool_size=(2, 2),
        strides=(2, 2),
        padding="valid",
        pad_width=((0, 0), (0, 0)),
        target_shape=(),
        dims=(),
        interpolation: str = "nearest",
        temporal: bool = True,
        **kwargs,
    ):
        super().__init__(temporal=temporal, **kwargs)
        if op not in SHAPE_OPS:
            raise ValueError(f"op must be one of {SHAPE_OPS}, got {op!r}")
        self.op = op
        self.target_shape = tuple(int(d) for d in target_shape)
        self.dims = tuple(int(d) for d in dims)
        self.interpolation = interpolation
        self.pool_size = tuple(int(p) for p in pool_size)
        self.strides = tuple(int(s) for s in strides)
        self.padding = padding.upper()
        self.pad_width = tuple(tuple(int(p) for p in pair) for pair in pad_width)

    def apply(self, x: tf.Tensor) -> tf.Tensor:
        if self.op == "flatten":  # a constant target shape: no shape arithmetic in TFLite
            features = x.shape[1:].num_elements()
            return tf.reshape(x, [-1, features if features is not None else -1])
        if self.op == "average_pooling2d":
            return tf.nn.avg_pool2d(x, self.pool_size, self.strides, self.padding)
        if self.op == "global_average_pooling2d":
            return tf.reduce_mean(x, axis=[1, 2])
        if self.op == "reshape":
            return tf.reshape(x, [-1, *self.target_shape])
        if self.op == "permute":
            return tf.transpose(x, [0, *self.dims])
        if self.op == "upsampling2d":  # the function Keras's UpSampling2D calls: same numbers
            return keras.backend.resize_images(
                x, *self.pool_size, "channels_last", interpolation=self.interpolation
            )
        if self.op == "cropping2d":
            (top, bottom), (left, right) = self.pad_width
            return x[:, top : x.shape[1] - bottom, left : x.shape[2] - right]
        return tf.pad(x, [[0, 0], list(self.pad_width[0]), list(self.pad_width[1]), [0, 0]])

    def get_config(self):
        return {
            **super().get_config(),
            "op": self.op,
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": self.padding.lower(),
            "pad_width": [list(pair) for pair in self.pad_width],
            "target_shape": list(self.target_shape),
            "dims": list(self.dims),
            "interpolation": self.interpolation,
        }


@keras.utils.register_keras_serializable(package="qffs_tf")
class SpikingAdd(SpikingLayer, keras.layers.Layer):
    """Residual sum (linear, so it acts on charges and spikes alike); pairwise additions.

    Example
    -------
    >>> SpikingAdd()([spikes_a, spikes_b])
    """

    def call(self, inputs):
        return pairwise_sum(inputs)

    def step(self, inputs, state, first, arithmetic: bool = False):
        return pairwise_sum(inputs), state

    def zero_from(self, inputs):
        return latest(inputs)


@keras.utils.register_keras_serializable(package="qffs_tf")
class SpikingConcatenate(SpikingLayer, keras.layers.Layer):
    """Concatenation of spike trains or charges; each part keeps its own spike amplitude.

    Parameters
    ----------
    axis : int
        The axis in the QANN's tensors (batch = 0, positive); one more on temporal tensors.

    Example
    -------
    >>> SpikingConcatenate(axis=3)([spikes_a, spikes_b])
    """

    def __init__(self, axis: int = -1, temporal: bool = True, **kwargs):
        super().__init__(temporal=temporal, **kwargs)
        self.axis = int(axis)

    def _axis(self, temporal: bool) -> int:
        return self.axis + 1 if temporal and self.axis > 0 else self.axis

    def call(self, inputs):
        return tf.concat(inputs, self._axis(self.temporal))

    def step(self, inputs, state, first, arithmetic: bool = False):
        if all(value is None for value in inputs):
            return None, state
        present = next(value for value in inputs if value is not None)
        shapes = self.input_shape if isinstance(self.input_shape, list) else [self.input_shape]
        parts = [
            value
            if value is not None
            else tf.zeros(tf.concat([tf.shape(present)[:1], shape[2:]], 0), present.dtype)
            for value, shape in zip(inputs, shapes, strict=True)
        ]
        return tf.concat(parts, self._axis(False)), state

    def zero_from(self, inputs):
        return latest(inputs)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


@tf.function(jit_compile=True, autograph=False)
def _temporal_max_pool(inputs, counts, previous, pool_size, strides, padding, global_pool):
    """maxpool(c_t) - maxpool(c_{t-1}) for every t, with c the running sum from `counts`
    (and `previous` = maxpool(counts)); one XLA cluster. Used for long windows."""
    totals = running_sum(inputs, counts)
    if global_pool:
        pooled = tf.reduce_max(totals, axis=[2, 3])
    else:
        folded, batch_time = fold_time(totals)
        pooled = unfold_time(tf.nn.max_pool2d(folded, pool_size, strides, padding), batch_time)
    before = tf.concat([tf.expand_dims(previous, 1), pooled[:, :-1]], axis=1)
    return pooled - before, totals[:, -1], pooled[:, -1]


@keras.utils.register_keras_serializable(package="qffs_tf")
class SpikingMaxPool2D(SpikingLayer, keras.layers.Layer):
    """Max-pooling on spike trains by the running max of counts (QFFS.md section 3).

    Output at step t = maxpool(c_t) - maxpool(c_{t-1}), with c_t the running sum of the input;
    for spikes this is a spike in {-1, 0, +1} (times the amplitude), and its total over time is
    maxpool(total): exactly the QANN's max-pool.

    Example
    -------
    >>> SpikingMaxPool2D((2, 2), (2, 2))(spikes)
    """

    def __init__(
        self,
        pool_size=(2, 2),
        strides=(2, 2),
        padding="valid",
        temporal=True,
        global_pool: bool = False,
        **kwargs,
    ):
        super().__init__(temporal=temporal, **kwargs)
        self.pool_size = tuple(int(p) for p in pool_size)
        self.strides = tuple(int(s) for s in strides)
        self.padding = padding.upper()
        self.global_pool = bool(global_pool)

    def pool(self, x: tf.Tensor) -> tf.Tensor:
        """The max-pool on a batch of static-shaped counts (GlobalMaxPooling2D if global)."""
        if self.global_pool:
            return tf.reduce_max(x, axis=[1, 2])
        return tf.nn.max_pool2d(x, self.pool_size, self.strides, self.padding)

    def call(self, inputs):
        if not self.temporal:
            return self.pool(inputs)
        return self.window(inputs, self.initial_state(tf.shape(inputs)[0], inputs.dtype))[0]

    def window(self, inputs, state, start: int = 0, steps: int | None = None):
        if not self.temporal:
            return self.pool(inputs), state
        counts, previous = state
        steps = inputs.shape[1]
        size = inputs.shape[2:].num_elements()
        if steps is None or steps > MAX_UNROLLED_STEPS or not worth_skipping(size):
            # One pass over the whole window: long windows (one conditional per step would
            # cost more to trace than it saves), inside XLA and small inputs (`worth_skipping`).
            out, counts, previous = fused(_temporal_max_pool, size)(
                inputs,
                counts,
                previous,
                self.pool_size,
                self.strides,
                self.padding,
                self.global_pool,
            )
            return out, [counts, previous]
        # Step by step, pooling only at steps whose input is nonzero somewhere in the batch
        # (elsewhere the counts, and so their max, do not change).
        active = active_steps(inputs)
        outputs = []
        for t in range(steps):
            current_counts, current = tf.cond(
                active[t],
                lambda c=counts, t=t: self._advance(c, inputs[:, t]),
                lambda c=counts, p=previous: (c, p),
            )
            outputs.append(current - previous)
            counts, previous = current_counts, current
        return tf.stack(outputs, axis=1), [counts, previous]

    def _advance(self, counts, spikes):
        counts = counts + spikes
        return counts, self.pool(counts)

    def build(self, input_shape):
        self.input_spec_shape = tuple(int(d) for d in input_shape[-3:])
        super().build(input_shape)

    def initial_state(self, batch_size, dtype=tf.float32):
        counts = tf.zeros(tf.concat([[batch_size], self.input_spec_shape], 0), dtype)
        return [counts, self.pool(counts)]

    def zero_from(self, inputs):
        return latest(inputs)  # no new spikes: counts and their max unchanged

    def step(self, inputs, state, first, arithmetic: bool = False):
        if inputs is None:  # unchanged counts: unchanged max
            return None, state
        counts, previous = state
        if arithmetic or not worth_skipping(inputs.shape[1:].num_elements()):
            counts, pooled = self._advance(counts, inputs)  # no control flow, or little to skip
        else:
            counts, pooled = tf.cond(
                active_steps(tf.expand_dims(inputs, 1))[0],
                lambda: self._advance(counts, inputs),
                lambda: (counts, previous),
            )
        return pooled - previous, [counts, pooled]

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": self.padding.lower(),
            "global_pool": self.global_pool,
        }


@keras.utils.register_keras_serializable(package="qffs_tf")
class Integrate(SpikingLayer, keras.layers.Layer):
    """The output layer's membrane: logits at step t are the charge received up to t, or,
    with the constant input coding, the mean charge per step (charge so far / t).

    Example
    -------
    >>> logits_per_step = Integrate()(charges)  # (B, T, classes)
    """

    def __init__(self, mean: bool = False, **kwargs):
        kwargs.pop("temporal", None)
        super().__init__(temporal=True, **kwargs)
        self.mean = bool(mean)

    def build(self, input_shape):
        self.output_dims = tuple(int(d) for d in input_shape[2:])
        super().build(input_shape)

    def call(self, inputs):
        return self.window(inputs, self.initial_state(tf.shape(inputs)[0], inputs.dtype))[0]

    def window(self, inputs, state, start: int = 0, steps: int | None = None):
        total = running_sum(inputs, state[0])
        if not self.mean:
            return total, [total[:, -1]]
        rank = inputs.shape.rank
        count = tf.cast(tf.range(1, tf.shape(inputs)[1] + 1), inputs.dtype)
        count = tf.expand_dims(state[1], 1) + tf.reshape(count, [1, -1] + [1] * (rank - 2))
        return total / count, [total[:, -1], count[:, -1]]

    def initial_state(self, batch_size, dtype=tf.float32):
        total = tf.zeros(tf.concat([[batch_size], self.output_dims], 0), dtype)
        if not self.mean:
            return [total]
        return [total, tf.zeros(tf.concat([[batch_size], [1] * len(self.output_dims)], 0), dtype)]

    def step(self, inputs, state, first, arithmetic: bool = False):
        total = add_optional(state[0], inputs)
        if not self.mean:
            return total, [total]
        steps = state[1] + 1.0
        return total / steps, [total, steps]

    def get_config(self):
        config = super().get_config()
        config.pop("temporal")
        return {**config, "mean": self.mean}


def _poison(image: tf.Tensor) -> tf.Tensor:
    """(B, 1): 0 for a finite image, NaN for one with NaN or Inf (x * 0 is NaN exactly then).

    Neurons compare, and comparisons with NaN are false: without this, a NaN image would
    give quiet neurons and finite, meaningless logits instead of NaN as the QANN does.
    """
    axes = list(range(1, image.shape.rank))
    return tf.reshape(tf.reduce_sum(image * 0.0, axes), [-1, 1])


@keras.utils.register_keras_serializable(package="qffs_tf")
class Readout(SpikingLayer, keras.layers.Layer):
    """What `snn.predict` returns: the logits after the last step, through the model's head
    activation (softmax and other monotone heads; "linear" for logits).

    Its inputs are the logits per step and the image: an image with NaN or Inf values gives
    NaN outputs, as the QANN does. In one-step mode the image may be None after the step that
    received it (its mark is kept in the state).

    Example
    -------
    >>> Readout("softmax")([logits_per_step, image])  # (B, T, classes) -> (B, classes)
    """

    def __init__(self, activation: str = "linear", **kwargs):
        kwargs.pop("temporal", None)
        super().__init__(temporal=True, **kwargs)
        self.activation = keras.activations.get(activation)
        self.activation_name = keras.activations.serialize(self.activation)

    def call(self, inputs):
        logits, image = inputs
        return self.activation(logits[:, -1] + _poison(image))

    def initial_state(self, batch_size, dtype=tf.float32):
        # The image's mark (0, or NaN for a non-finite image), kept for steps that do not
        # receive the image (the streaming program's `advance`).
        return [tf.zeros(tf.concat([[batch_size], [1]], 0), dtype)]

    def step(self, inputs, state, first, arithmetic: bool = False):
        logits, image = inputs
        mark = state[0] if image is None else _poison(image)
        return self.activation(logits + mark), [mark]

    def get_config(self):
        config = super().get_config()
        config.pop("temporal")
        return {**config, "activation": self.activation_name}
