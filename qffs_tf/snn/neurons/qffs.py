"""The QFFS neuron: integrate-and-fire with negative spikes and a cap (QFFS.md section 3)."""

from __future__ import annotations

from qffs_tf._keras import tf
from qffs_tf.snn.neurons.base import NeuronModel
from qffs_tf.snn.neurons.registry import register_neuron


@register_neuron
class QFFSNeuron(NeuronModel):
    """IF neuron with QFFS negative spikes and the count capped at L.

    Threshold theta = step size s; membrane starts at theta/2; reset by subtraction. Per step:
    v += input; if v >= theta and n < L: +1 spike; else if v < 0 and n > 0: -1 spike. Once the
    inputs stop changing the net count is clip(floor(S/theta + 1/2), 0, L), the QANN level.

    Example
    -------
    >>> snn = qffs_tf.convert(qat_model, timesteps=8, neuron="qffs")
    """

    name = "qffs"
    negative_spikes = True

    def update(self, current, state, threshold, levels, arithmetic: bool = False):
        membrane, count = state
        theta = tf.cast(threshold, current.dtype)
        levels = tf.cast(levels, current.dtype)
        membrane = membrane + current
        if arithmetic:
            # The same integer tests in floor/min/max, which XNNPACK runs (comparisons it does
            # not), in few operators: relu(floor(v - theta) + 1) >= 1 exactly when v >= theta
            # (v - theta >= 0 in IEEE arithmetic) and relu(-floor(v)) >= 1 exactly when v < 0.
            # Counts are integers in [0, L], so min(., L - n) and min(., n) zero a test whose
            # count condition fails; at most one of the two is non-zero, and their difference
            # clipped to [-1, 1] is the spike.
            up = tf.minimum(tf.nn.relu(tf.floor(membrane - theta) + 1.0), levels - count)
            if self.negative_spikes:
                # 0 - floor rather than -floor: TFLite fuses the relu into a subtraction,
                # not into a negation (one operator fewer per layer and step; +0 for -0).
                down = tf.minimum(tf.nn.relu(0.0 - tf.floor(membrane)), count)
                spikes = tf.clip_by_value(up - down, -1.0, 1.0)
            else:
                spikes = tf.minimum(up, 1.0)
        else:
            fire = tf.logical_and(membrane >= theta, count < levels)
            spikes = tf.cast(fire, current.dtype)
            if self.negative_spikes:  # v >= theta > 0 and v < 0 exclude each other
                spikes -= tf.cast(tf.logical_and(membrane < 0, count > 0), current.dtype)
        return spikes, [membrane - spikes * theta, count + spikes]

    def quiet_within(self, levels: int) -> int:
        # Without input, +1 spikes need v >= theta and n < L and leave v >= 0, so no -1 can
        # follow; -1 spikes need v < 0 and n > 0 and leave v < theta, so no +1 can follow.
        # One sign only, then, each spike moving n by one within [0, L]. The state the input
        # leaves is settled (the initial state, or an update that fired nothing: the same
        # tests fail again without input) or just fired: +1 leaves n >= 1, -1 leaves
        # n <= L - 1, so at most L - 1 more spikes. (From an arbitrary state it would be L.)
        return int(levels) - 1


@register_neuron
class PlainIFNeuron(QFFSNeuron):
    """The same-coding ablation: QFFS without negative spikes (the cap at L stays).

    It keeps spikes fired on early positive charge that later negative charge should have
    taken back, the 'occasional noise' QFFS removes (QFFS.md section 3).

    Example
    -------
    >>> plain = qffs_tf.convert(qat_model, timesteps=8, neuron="plain_if")
    """

    name = "plain_if"
    negative_spikes = False
