"""The neuron-model interface: one small class per model, chosen by name at conversion.

A neuron model says how a layer of neurons that replaces one QANN activation behaves: its
state, its update rule for one step, its initial state, its firing threshold, how its net
spike count is read, and how the network around it codes the input (charge delivered once,
or a constant current at every step). The spiking layer (`qffs_tf.snn.SpikingNeurons`), the
simulator and both TFLite programs all call these methods; nothing else knows the rule.
"""

from __future__ import annotations

from qffs_tf._keras import tf

INPUT_CODINGS = ("once", "constant")


def indicator(value: tf.Tensor) -> tf.Tensor:
    """clip(value, 0, 1): with integer-valued arguments, a {0, 1} test made of min and max."""
    return tf.minimum(tf.maximum(value, 0.0), 1.0)


class NeuronModel:
    """Base class of neuron models.

    A subclass sets `name` (its registry key), may set `input_coding`, and implements
    `update`; the rest has defaults for a neuron whose state is (membrane, net count).

    Attributes
    ----------
    name : str
        Registry key, e.g. "qffs".
    input_coding : str
        "once": the analog input and every bias arrive at step 0 (QFFS); "constant": they
        are applied at every step and the output layer reports the mean charge per step
        (conventional rate coding).
    state_names : tuple of str
        Names of the state tensors, each shaped like the layer's neurons.

    Example
    -------
    >>> class LeakyIF(NeuronModel):
    ...     name = "leaky_if"
    ...     def update(self, current, state, threshold, levels, arithmetic=False):
    ...         membrane, count = state
    ...         membrane = 0.9 * membrane + current
    ...         spikes = tf.cast(membrane >= threshold, current.dtype)
    ...         return spikes, [membrane - spikes * threshold, count + spikes]
    """

    name: str = ""
    input_coding: str = "once"
    state_names: tuple[str, ...] = ("membrane", "count")

    def threshold(self, step_size: float, levels: int) -> float:
        """The firing threshold (also the spike amplitude) for a QANN step size and L."""
        return float(step_size)

    def initial_state(self, shape, threshold, levels: int, dtype=tf.float32) -> list[tf.Tensor]:
        """State before step 0: membrane at threshold/2 (half-up rounding), count 0."""
        half = tf.cast(threshold, dtype) / 2
        return [tf.fill(shape, half), tf.zeros(shape, dtype)]

    def update(self, current, state, threshold, levels, arithmetic: bool = False):
        """One step: (spikes in {-1, 0, +1} as floats, new state).

        `arithmetic=True` asks for the same numbers computed with floor/min/max instead of
        comparisons and logical ops (XNNPACK runs the former in TFLite).
        """
        raise NotImplementedError

    def quiet_within(self, levels: int) -> int | None:
        """A bound k: a neuron whose input stops spikes in at most the first k steps without
        input and then keeps its state; None if the model gives no bound.

        The bound must hold from every state the engine can hand over at the step the input
        stops: the model's initial state, and any state an update (with any input) left.
        A bound that holds from every state whatsoever is also valid, only looser.

        The engine then knows a layer whose input is zero from step z quiet from z + k
        (`Program.quiet_from`), and neither computes nor stores those steps (exact only
        if the bound holds).

        Parameters
        ----------
        levels : int
            L, the QANN activation's top level.

        Returns
        -------
        int or None
            The bound; the default, None, makes the engine compute every step.

        Example
        -------
        >>> get_neuron("qffs").quiet_within(3)
        2
        """
        return None

    def count(self, state: list[tf.Tensor]) -> tf.Tensor:
        """The net spike count held in the state."""
        return state[self.state_names.index("count")]

    def level(self, count, steps: int, levels: int):
        """The QANN level (integer activation q) that a net count after `steps` steps codes."""
        return count

    def get_config(self) -> dict:
        """Constructor arguments (none by default); registered models serialize with them."""
        return {}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.get_config().items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({args})"
