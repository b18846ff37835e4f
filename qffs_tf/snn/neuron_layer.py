"""The layer of spiking neurons that replaces one QANN activation.

`SpikingNeurons` is a `tf_keras.layers.RNN` over the time axis of a `NeuronCell`; the cell
holds a neuron model (`qffs_tf.snn.neurons`) and the QANN activation's step size and level
count. Every path, the Keras RNN loop, the fused window for short windows, one step of the
simulator and the TFLite programs, runs the neuron model's own `update`.
"""

from __future__ import annotations

import json

import numpy as np

from qffs_tf._keras import keras, tf
from qffs_tf.snn.base import MAX_UNROLLED_STEPS, SpikingLayer, fused, latest, without_autograph
from qffs_tf.snn.neurons import get_neuron, serialize_neuron

_WINDOWS: dict[tuple, object] = {}
RESULTS = ("both", "outputs", "state")


def _window_function(neuron, result: str = "both"):
    """The neuron's rule unrolled over a short window from a given state, compiled once per
    model into one XLA cluster (several times faster on CPU than the generic RNN loop; the
    same operations). Returns `result`: (outputs, final state), the outputs or the state.

    Asking for the outputs alone lets XLA fuse the whole unrolled chain into the output
    computation (measured: about 1.5x faster than also writing the final state); a caller
    that may need the state takes it from a second, "state" function, which TensorFlow
    prunes from the graph when the state is not used.

    `inputs` is (B, T, ...), or, with `steps` given, the static (B, ...) value that the
    neuron model's input coding delivers: at the first step of the run if `first` ("once"),
    or at every step ("constant"); the other steps receive nothing, and no zeros are read.

    With `computed` given, the steps from it on are known quiet (no spike, state kept): their
    outputs are zeros written by the same pass, and their inputs are never read (a tail
    padded on afterwards costs one more pass over the output: about 10 % of small_cnn's
    forward pass).
    """
    key = (type(neuron), json.dumps(neuron.get_config(), sort_keys=True), result)
    if key not in _WINDOWS:

        def window(inputs, state, threshold, levels, steps=None, first=True, computed=None):
            static = steps is not None
            every_step = neuron.input_coding == "constant"
            outputs = []
            total = steps if static else inputs.shape[1]
            for t in range(total):
                if computed is not None and t >= computed:
                    if result == "state":
                        break
                    outputs.append(tf.zeros_like(state[0]))
                    continue
                if not static:
                    current = inputs[:, t]
                elif every_step or (first and t == 0):
                    current = inputs
                else:
                    current = tf.zeros_like(state[0])  # folded away by XLA
                spikes, state = neuron.update(current, state, threshold, levels)
                if result != "state":
                    outputs.append(spikes * threshold)
            if result == "state":
                return state
            outputs = tf.stack(outputs, axis=1)
            return outputs if result == "outputs" else (outputs, state)

        _WINDOWS[key] = tf.function(window, jit_compile=True, autograph=False)
    return _WINDOWS[key]


@keras.utils.register_keras_serializable(package="qffs_tf")
class NeuronCell(keras.layers.Layer):
    """Spiking neurons of one neuron model, as a Keras RNN cell.

    The output at each step is the spike (in {-1, 0, +1}) times the threshold, so the next
    layer's weights need no rescaling and residual sums stay in the QANN's units.

    Parameters
    ----------
    neuron : str, NeuronModel or dict
        The neuron model (a registered name, an instance, or its serialized form).
    step_size : float
        The QANN activation's step size s.
    levels : int
        L = 2^b - 1, the QANN's top level.
    neuron_shape : tuple of int
        Shape of one sample's neurons.

    Example
    -------
    >>> cell = NeuronCell("qffs", step_size=0.5, levels=3, neuron_shape=(4,))
    >>> layer = SpikingNeurons(cell)
    """

    def __init__(self, neuron, step_size: float, levels: int, neuron_shape, **kwargs):
        super().__init__(**kwargs)
        self.neuron = get_neuron(neuron)
        self.step_size = float(step_size)
        self.levels = int(levels)
        self.neuron_shape = tuple(int(d) for d in neuron_shape)
        self.threshold = float(self.neuron.threshold(self.step_size, self.levels))
        shape = tf.TensorShape(self.neuron_shape)
        self.state_size = [shape] * len(self.neuron.state_names)
        self.output_size = shape

    def get_initial_state(self, inputs=None, batch_size=None, dtype=None):
        dtype = dtype or tf.float32
        shape = tf.concat([[batch_size], self.neuron_shape], 0)
        return self.neuron.initial_state(shape, self.threshold, self.levels, dtype)

    def update(self, inputs, states, arithmetic: bool = False):
        """One step of the neuron model: (spikes times threshold, new states)."""
        spikes, states = self.neuron.update(
            inputs, list(states), self.threshold, self.levels, arithmetic
        )
        return spikes * tf.cast(self.threshold, inputs.dtype), states

    @without_autograph
    def call(self, inputs, states):
        return self.update(inputs, states)

    def get_config(self):
        return {
            **super().get_config(),
            "neuron": serialize_neuron(self.neuron),
            "step_size": self.step_size,
            "levels": self.levels,
            "neuron_shape": list(self.neuron_shape),
        }


@keras.utils.register_keras_serializable(package="qffs_tf")
class SpikingNeurons(SpikingLayer, keras.layers.RNN):
    """A layer of spiking neurons: `tf_keras.layers.RNN` over the time axis of a NeuronCell.

    Parameters
    ----------
    cell : NeuronCell or dict
        The cell (or its serialized form).
    source : str
        Name of the QANN activation layer this layer replaces.
    pooled_by : str
        Name of the max-pool the converter moved behind these neurons, if any, so that
        verification compares like with like.

    Example
    -------
    >>> spikes = SpikingNeurons(NeuronCell("qffs", 0.5, 3, (4,)))(charges)  # (B, T, 4)
    """

    def __init__(self, cell, source: str = "", pooled_by: str = "", **kwargs):
        if isinstance(cell, dict):
            cell = keras.layers.deserialize(cell, custom_objects={"NeuronCell": NeuronCell})
        kwargs.setdefault("return_sequences", True)
        kwargs.pop("temporal", None)
        super().__init__(cell, temporal=True, **kwargs)
        self.source = source
        self.pooled_by = pooled_by

    @property
    def neuron(self):
        return self.cell.neuron

    @property
    def threshold(self) -> float:
        """Firing threshold, which is also the amplitude of one spike."""
        return self.cell.threshold

    @property
    def step_size(self) -> float:
        """Step size s of the QANN activation this layer replaces."""
        return self.cell.step_size

    @property
    def levels(self) -> int:
        return self.cell.levels

    @property
    def neuron_shape(self) -> tuple[int, ...]:
        return self.cell.neuron_shape

    def call(self, inputs, mask=None, training=None, initial_state=None):
        if mask is not None:
            return super().call(inputs, mask, training, initial_state)
        if initial_state is None:
            initial_state = self.initial_state(tf.shape(inputs)[0], inputs.dtype)
        return self.window(inputs, list(initial_state))[0]

    def window(
        self,
        inputs,
        state,
        start: int = 0,
        steps: int | None = None,
        quiet_from: int | None = None,
    ):
        """See `SpikingLayer.window`. `inputs` may also be the static (B, ...) value, with
        `steps` given: the input coding of the neuron model then delivers it (at step 0
        only, or at every step) without a (B, T, ...) tensor of its copies and zeros.
        `quiet_from` is a step from which the caller knows these neurons quiet
        (`Program.quiet_from`, from the graph and `zero_from`)."""
        static = inputs.shape.rank == len(self.neuron_shape) + 1
        total = int(steps) if static else inputs.shape[1]
        computed = None
        if quiet_from is not None and total is not None and start + total > quiet_from:
            # Steps from `quiet_from` on carry no spike and leave the state as it is: only the
            # ones before are computed, and zeros stand for the rest (the same numbers).
            computed = max(0, quiet_from - start)
        if computed is not None and (computed == 0 or total > MAX_UNROLLED_STEPS):
            if computed > 0 and static:
                outputs, state = self.window(inputs, state, start, computed)
            elif computed > 0:
                outputs, state = self.window(inputs[:, :computed], state, start)
            else:  # the whole run is after the bound: no step to compute
                outputs, state = tf.expand_dims(tf.zeros_like(state[0]), 1)[:, :0], list(state)
            padding = [[0, 0], [0, total - computed]] + [[0, 0]] * len(self.neuron_shape)
            return tf.pad(outputs, padding), state
        if total is None or total > MAX_UNROLLED_STEPS:
            # Unknown or long window: the generic RNN loop (XLA would compile one unrolled
            # window per layer shape, which costs more than it saves on long windows).
            if static:
                inputs = self._laid_over(inputs, total, start)
            _, outputs, state = keras.backend.rnn(
                lambda x, s: self.cell.update(x, s), inputs, list(state)
            )
            return outputs, list(state)
        # Threshold and cap as tensors: layers of the same shape share one compiled window.
        threshold = tf.constant(self.threshold, inputs.dtype)
        levels = tf.constant(self.levels, inputs.dtype)
        args = (inputs, list(state), threshold, levels)
        options = {"steps": total, "first": start == 0} if static else {}
        if computed is not None:  # the unrolled window writes the quiet tail itself
            options["computed"] = computed
        both = _window_function(self.neuron, "both")
        window = fused(both, int(np.prod(self.neuron_shape)))
        if total == 1 or window is not both:  # one step, or plain ops (nothing to split)
            outputs, state = window(*args, **options)
        else:
            outputs = _window_function(self.neuron, "outputs")(*args, **options)
            state = _window_function(self.neuron, "state")(*args, **options)
        return outputs, list(state)

    def zero_from(self, inputs):
        """No input from step s on: no spike (and no change of state) from s + k on, with k
        the neuron model's `quiet_within(L)`; None where either is not known."""
        start = latest(inputs)
        bound = self.neuron.quiet_within(self.levels)
        return None if start is None or bound is None else start + int(bound)

    def _laid_over(self, value: tf.Tensor, steps: int, start: int) -> tf.Tensor:
        """The static value as the neuron model's input coding delivers it over `steps`
        steps from step `start`: (B, steps, ...)."""
        value = tf.expand_dims(value, 1)
        if self.neuron.input_coding == "constant":
            return tf.tile(value, [1, steps] + [1] * (value.shape.rank - 2))
        if start > 0:
            value = tf.zeros_like(value)
        return tf.pad(value, [[0, 0], [0, steps - 1]] + [[0, 0]] * (value.shape.rank - 2))

    def initial_state(self, batch_size, dtype=tf.float32):
        return self.cell.get_initial_state(batch_size=batch_size, dtype=dtype)

    def step(self, inputs, state, first, arithmetic: bool = False):
        if inputs is None:
            inputs = tf.zeros_like(state[0])
        if arithmetic:  # plain ops for TFLite
            return self.cell.update(inputs, state, arithmetic)
        # A one-step window: the update fused into one XLA cluster, one pass over memory.
        outputs, state = self.window(tf.expand_dims(inputs, 1), state)
        return outputs[:, 0], state

    def count(self, state) -> tf.Tensor:
        """Net spike count held in a state returned by `step`."""
        return self.neuron.count(state)

    def get_config(self):
        config = super().get_config()
        config.pop("temporal", None)
        return {**config, "source": self.source, "pooled_by": self.pooled_by}
