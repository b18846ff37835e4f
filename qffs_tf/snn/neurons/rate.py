"""The conventional rate-coded IF neuron: the baseline QFFS is compared with (QFFS.md §7)."""

from __future__ import annotations

from qffs_tf._keras import tf
from qffs_tf.snn.neurons.base import NeuronModel, indicator
from qffs_tf.snn.neurons.registry import register_neuron


@register_neuron
class RateNeuron(NeuronModel):
    """Rate-coded IF neuron, as QCFS and the QFFS author's plain-IF demo run it.

    The analog image and every bias are a constant current at every step; the threshold is
    the clip value theta = L*s, so over T = L steps the spike count spells out the level q;
    the membrane starts at theta/2 and resets by subtraction; no negative spikes, no cap. The
    output layer reports the mean charge per step. For the first spiking layer and T = L this
    is exactly the QANN's quantizer; deeper layers approximate it better as T grows.

    Example
    -------
    >>> baseline = qffs_tf.convert(qat_model, timesteps=16, neuron="rate")
    """

    name = "rate"
    input_coding = "constant"

    def threshold(self, step_size: float, levels: int) -> float:
        return float(step_size) * int(levels)

    def update(self, current, state, threshold, levels, arithmetic: bool = False):
        membrane, count = state
        theta = tf.cast(threshold, current.dtype)
        membrane = membrane + current
        if arithmetic:
            spikes = indicator(tf.floor(membrane - theta) + 1.0)
        else:
            spikes = tf.cast(membrane >= theta, current.dtype)
        return spikes, [membrane - spikes * theta, count + spikes]

    def level(self, count, steps: int, levels: int):
        # Each spike carries L*s: the mean charge per step over `steps` steps, in units of s.
        return count * levels / steps
