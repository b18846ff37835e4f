"""The interface every spiking layer implements, and the time-axis helpers they share.

Every tensor inside an SNN is either *static*, shape (batch, ...), a value computed once from
the analog input (whatever comes before the first neuron layer), or *temporal*, shape
(batch, T, ...), one slice per time step.

A spiking layer runs in two ways that give identical numbers:
- `window(inputs, state, start)` (layerwise): a run of steps at once, from a carried state, so
  that a long window can be processed in time chunks; linear ops fold time into the batch.
  `call(inputs)` is the whole window from the initial state (what the Keras model runs);
- `step(inputs, state, first)` (one step): the caller carries the layer's state.

Both skip work that cannot change anything: a linear op computes only the steps whose input is
nonzero somewhere in the batch (with the "once" input coding, a layer's input is all zero after
its activity has passed, which is most steps of the early layers): the window is trimmed to
the active steps, or in one-step mode the op is behind a conditional. Inside an XLA-compiled
function nothing is skipped (a conditional per step measured slower there than the work).

`first` says whether this is step 0. It is a Python bool where the step is known when
tracing (simulation, the unrolled TFLite window) or a float32 scalar tensor, 1 at step 0 and
0 afterwards, where it is not (the streaming TFLite program, which has no control flow). With
a bool, an input that is known to be zero may be passed as None, and a layer whose output is
then zero returns None too, so that unrolled programs skip work that cannot change anything.

How the analog input and the biases reach the spiking layers is the *input coding*, a
property of the neuron model (see `qffs_tf.snn.neurons`): "once" delivers them at step 0 only
(QFFS), "constant" applies them at every step (conventional rate coding). Layers that add a
static value (ToTemporal, biases, BatchNorm offsets) take `constant_input` from the converter.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

from qffs_tf._keras import tf
from qffs_tf.errors import InvalidArgumentError

MAX_UNROLLED_STEPS = 16
"""Longest window that is unrolled (one neuron update, or one max-pool conditional, per
step): beyond it, tracing and compiling the unrolled graph costs more than it saves."""

FUSION_MIN_ELEMENTS = 4096
"""Per-sample size from which the engine's elementwise passes (the neuron window, the test
for steps with no spike, the statistics) run as their own XLA clusters. Each cluster is
compiled once per shape, about 20-100 ms on a 2-core CPU; on smaller tensors the saving per
call is microseconds, which a program rarely repays, so they run as plain TensorFlow ops.
The choice depends only on the per-sample shape, never on the batch or the number of steps,
so that a layer computes the same way layerwise, stepwise and in time chunks."""

_fusion = {"min_elements": FUSION_MIN_ELEMENTS}


@contextlib.contextmanager
def fusion_threshold(min_elements: int) -> Iterator[None]:
    """Fuse the engine's elementwise passes into XLA clusters from `min_elements` per sample
    (0: always; a huge number: never) for programs traced inside the block.

    The numbers are the same either way; only speed and first-call (compile) time change.
    Programs are traced on their first call and cached with the model, so the threshold
    applies to models first simulated or called inside the block.

    Parameters
    ----------
    min_elements : int
        Smallest per-sample tensor size (elements) that is fused.

    Returns
    -------
    contextlib.AbstractContextManager
        Restores the previous threshold on exit.

    Raises
    ------
    InvalidArgumentError
        If `min_elements` is negative.

    Example
    -------
    >>> with fusion_threshold(0):
    ...     result = simulate(snn, images, timesteps=8)
    """
    if min_elements < 0:
        raise InvalidArgumentError(
            f"fusion_threshold: min_elements must be >= 0 (0 fuses every pass), got {min_elements}."
        )
    previous = _fusion["min_elements"]
    _fusion["min_elements"] = int(min_elements)
    try:
        yield
    finally:
        _fusion["min_elements"] = previous


def fused(function, per_sample_elements: int | None):
    """`function` (a `tf.function(jit_compile=True)`) as its own XLA cluster, or its plain
    Python body run as ordinary ops, by the per-sample size of the tensor it reads (see
    FUSION_MIN_ELEMENTS). Inside an XLA-compiled program both are the same."""
    return function if worth_fusing(per_sample_elements) else function.python_function


def worth_skipping(per_sample_elements: int | None) -> bool:
    """Whether to test a tensor of this per-sample size for steps without a spike and skip
    them. Not inside XLA: there the skipping is a conditional per step, which measured 2.8x
    slower on MobileNet-v1 than computing every step (and no faster on ResNet-18)."""
    return not in_compiled_context() and worth_fusing(per_sample_elements)


def worth_fusing(per_sample_elements: int | None) -> bool:
    """Whether a pass over tensors of this per-sample size is worth its own compiled cluster
    (or, for conditionals that skip work, worth the graph they add); unknown sizes are."""
    return per_sample_elements is None or per_sample_elements >= _fusion["min_elements"]


def in_compiled_context() -> bool:
    """True while tracing inside an XLA-compiled function (`jit_compile=True`), where shapes
    must be static; Keras's own layers make the same test to choose their XLA-safe path."""
    from tf_keras.src.utils import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def without_autograph(function):
    """`function` marked so that AutoGraph runs it as written.

    The engine's code has no Python control flow on tensors (it uses tf.cond and
    tf.while_loop where it needs them, and Python loops over step counts known when tracing),
    so AutoGraph has nothing to convert; converting it anyway, at every trace of a layer's
    `call` in a Keras model, measured about half of a conversion's time.
    """
    if getattr(function, "_qffs_without_autograph", False):
        return function
    wrapped = tf.autograph.experimental.do_not_convert(function)
    # Keras reads `call`'s signature (does it take `training`?) through TensorFlow's
    # decorator protocol, which do_not_convert's plain wrapper does not follow.
    wrapped = tf.__internal__.decorator.make_decorator(function, wrapped)
    wrapped._qffs_without_autograph = True
    return wrapped


def is_first_tensor(first) -> bool:
    """True when `first` is a mask tensor (streaming program) rather than a Python bool."""
    return isinstance(first, tf.Tensor | tf.Variable)


def static_part(value, first, constant_input: bool):
    """What a value delivered by the input coding contributes at this step (None: nothing)."""
    if constant_input:
        return value
    if is_first_tensor(first):
        return value * tf.cast(first, value.dtype)
    return value if first else None


def add_optional(a, b):
    """a + b where either may be None (zero)."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def latest(steps: list[int | None]) -> int | None:
    """The last of the steps from which each input is zero (None if one is not known)."""
    if not steps or any(step is None for step in steps):
        return None
    return max(steps)


def pairwise_sum(values):
    """Sum of a list by pairwise ADD, skipping None (zero); int8-capable in TFLite, unlike ADD_N."""
    present = [value for value in values if value is not None]
    return functools.reduce(tf.add, present) if present else None


def fold_time(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(B, T, ...) -> (B*T, ...), and the (B, T) pair to unfold with."""
    shape = tf.shape(x)
    return tf.reshape(x, tf.concat([[-1], shape[2:]], 0)), shape[:2]


def unfold_time(y: tf.Tensor, batch_time: tf.Tensor) -> tf.Tensor:
    return tf.reshape(y, tf.concat([batch_time, tf.shape(y)[1:]], 0))


def group_size(size: int) -> int:
    """The largest group of at most 32 elements that divides `size`."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if size % g == 0)


@tf.function(jit_compile=True, autograph=False)
def _nonzero_groups(x: tf.Tensor) -> tf.Tensor:
    # XLA's CPU backend turns reductions over more than 32 elements into a slow
    # reduce-window: reduce groups of at most 32 here, the rest in TensorFlow.
    size = x.shape[2:].num_elements()
    group = group_size(size)
    grouped = tf.reshape(x, tf.concat([tf.shape(x)[:2], [size // group, group]], 0))
    return tf.reduce_max(tf.cast(tf.not_equal(grouped, 0), tf.int32), axis=-1)


def active_steps(x: tf.Tensor) -> tf.Tensor:
    """(T,) bool: which steps of a (B, T, ...) tensor are nonzero somewhere in the batch.

    One fused pass over `x` (compiled with XLA), finished by TensorFlow's reduction: on
    CPU several times cheaper than a comparison and a reduction as separate ops.
    """
    groups = fused(_nonzero_groups, x.shape[2:].num_elements())(x)
    return tf.reduce_max(tf.reduce_max(groups, axis=-1), axis=0) > 0


def on_active_steps(fn, x: tf.Tensor, zero_step: tf.Tensor) -> tf.Tensor:
    """`fn` on each step slice of `x` (B, T, ...), computed only where the slice is nonzero.

    `fn` must map an all-zero slice to `zero_step` (a linear op without bias does), so the
    result equals computing every step. The steps before the first and after the last active
    one are cut off and `fn` runs once on the remaining steps folded into the batch. Inside
    XLA (no dynamic shapes), and for inputs too small to be worth it, every step is computed.
    """
    steps = x.shape[1]
    if not worth_skipping(x.shape[2:].num_elements()):
        folded, batch_time = fold_time(x)
        return unfold_time(fn(folded), batch_time)
    active = active_steps(x)
    index = tf.cast(tf.where(active)[:, 0], tf.int32)
    total = tf.shape(x)[1]
    start = tf.reduce_min(tf.concat([index, [total]], 0))
    stop = tf.reduce_max(tf.concat([index, [-1]], 0)) + 1

    def computed():
        part = x[:, start:stop]
        folded, batch_time = fold_time(part)
        y = unfold_time(fn(folded), batch_time)
        rank = y.shape.rank
        return tf.pad(y, [[0, 0], [start, total - stop]] + [[0, 0]] * (rank - 2))

    def silent():
        return tf.tile(tf.expand_dims(zero_step, 1), [1, total] + [1] * (zero_step.shape.rank - 1))

    y = tf.cond(stop > start, computed, silent)
    y.set_shape([x.shape[0], steps, *zero_step.shape[1:]])
    return y


def running_sum(x: tf.Tensor, initial: tf.Tensor | None = None) -> tf.Tensor:
    """Cumulative sum over the time axis (axis 1), starting from `initial` (B, ...) if given.

    The additions run in step order (initial + x_0, then + x_1, ...), the order a step-by-step
    run makes them in, so a window processed in chunks gives the same floats. For a short
    window known when tracing, T-1 slice additions: on CPU this is several times faster than
    tf.cumsum over a middle axis (measured: 12 ms vs 95 ms on 64x8x28x28x32).
    """
    steps = x.shape[1]
    if steps is None or steps > 4 * MAX_UNROLLED_STEPS:
        if initial is not None:
            x = tf.concat([tf.expand_dims(initial, 1), x], axis=1)
            return tf.cumsum(x, axis=1)[:, 1:]
        return tf.cumsum(x, axis=1)
    totals = [x[:, 0] if initial is None else initial + x[:, 0]]
    for t in range(1, steps):
        totals.append(totals[-1] + x[:, t])
    return tf.stack(totals, axis=1)


def over_window(value: tf.Tensor, like: tf.Tensor, constant_input: bool) -> tf.Tensor:
    """A static `value` laid over the window of a temporal tensor shaped like `like`:
    at every step (constant input) or at step 0 only."""
    value = tf.cast(value, like.dtype)
    if constant_input:
        return tf.expand_dims(value, 1) if value.shape.rank == like.shape.rank - 1 else value
    steps = tf.shape(like)[1]
    mask = tf.cast(tf.equal(tf.range(steps), 0), like.dtype)
    rank = like.shape.rank
    mask = tf.reshape(mask, tf.concat([[1, steps], tf.ones([rank - 2], tf.int32)], 0))
    if value.shape.rank == rank - 1:  # per-sample static value: (B, ...) -> (B, 1, ...)
        value = tf.expand_dims(value, 1)
    return mask * value


class SpikingLayer:
    """The interface of every layer in a converted SNN (a mixin for Keras layers).

    Subclasses are Keras layers (``class MyLayer(SpikingLayer, keras.layers.Layer)``) that
    implement `call` for the whole window and, when they are temporal, `step` for one time
    step; stateful ones also implement `initial_state`.

    Parameters
    ----------
    temporal : bool
        Whether the layer acts on (batch, T, ...) tensors (True) or on the static
        (batch, ...) value computed once from the analog input (False).
    """

    def __init__(self, *args, temporal: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.temporal = bool(temporal)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.call = without_autograph(cls.call)

    def initial_state(self, batch_size, dtype=tf.float32) -> list[tf.Tensor]:
        """State before step 0 (empty for stateless layers)."""
        return []

    def window(self, inputs, state: list[tf.Tensor], start: int = 0, steps: int | None = None):
        """Steps [start, start + T) at once from `state`: (outputs (B, T, ...), new state).

        `start` is the index of the first step (values the input coding delivers at step 0
        belong to the run with start 0); `steps` is T where the input does not carry it (the
        layer that lays the static value over the window). Stateless layers without a value
        of their own at step 0 run `call`.
        """
        return self.call(inputs), state

    def step(self, inputs, state: list[tf.Tensor], first, arithmetic: bool = False):
        """One time step: (output at this step, or None where it is zero; new state).

        `arithmetic=True` asks layers that take decisions (neurons) to compute them with
        floor/min/max instead of comparisons, the form XNNPACK runs in TFLite; same numbers.
        """
        raise NotImplementedError(f"{type(self).__name__} has no step")

    def zero_from(self, inputs: list[int | None]) -> int | None:
        """The step from which this layer's output is zero and its state stays as it is,
        given that step for each of its inputs (None: not known). The default, None, claims
        nothing; layers that give a zero (None) output for zero inputs say so.

        Parameters
        ----------
        inputs : list of int or None
            Per input, the step from which it is zero.

        Returns
        -------
        int or None
            The step from which the output is zero, or None where that is not known.

        Example
        -------
        >>> SpikingAdd().zero_from([4, 7])
        7
        """
        return None

    def get_config(self):
        return {**super().get_config(), "temporal": self.temporal}
