"""A neuron model defined here, outside the package, runs everywhere the built-in ones do.

The plug-in is a burst IF neuron: it may emit up to two spikes (of either sign) in one step,
so it settles in fewer steps, and it keeps QFFS's cap and negative spikes, so once quiet its
count is still the QANN level: conversion, both simulation modes, verification, saving and
both TFLite programs must take it without any change to qffs_tf.
"""

import numpy as np
import pytest
from snn_fixtures import every_layer_model, images

import qffs_tf
from qffs_tf._keras import tf
from qffs_tf.export import runtime
from qffs_tf.snn import NeuronModel, register_neuron

TIMESTEPS = 12


@register_neuron
class BurstIF(NeuronModel):
    """Up to `burst` spikes per step, count kept within [0, L]."""

    name = "test_burst_if"

    def __init__(self, burst: int = 2):
        self.burst = int(burst)

    def update(self, current, state, threshold, levels, arithmetic=False):
        membrane, count = state
        theta = tf.cast(threshold, current.dtype)
        levels = tf.cast(levels, current.dtype)
        membrane = membrane + current
        # floor/min/max only: the same expression serves the arithmetic (TFLite) form.
        wanted = tf.clip_by_value(tf.floor(membrane / theta), -self.burst, self.burst)
        spikes = tf.minimum(tf.maximum(wanted, -count), levels - count)
        return spikes, [membrane - spikes * theta, count + spikes]

    def get_config(self):
        return {"burst": self.burst}


@pytest.fixture(scope="module")
def network():
    model = every_layer_model(seed=2)
    x = images(16, model.input_shape[1:], seed=5)
    qat = qffs_tf.quantize_model(model, activation_bits=2, calibration_data=x)
    snn = qffs_tf.convert(qat, timesteps=TIMESTEPS, neuron="test_burst_if")
    return qat, snn, x


def test_converted_layers_run_the_plugin(network):
    _, snn, _ = network
    neurons = [layer for layer in snn.layers if isinstance(layer, qffs_tf.snn.SpikingNeurons)]
    assert neurons and all(isinstance(layer.neuron, BurstIF) for layer in neurons)
    by_instance = qffs_tf.convert(network[0], timesteps=TIMESTEPS, neuron=BurstIF(burst=3))
    assert {layer.neuron.burst for layer in by_instance.layers if hasattr(layer, "neuron")} == {3}


def test_layerwise_equals_stepwise_spike_for_spike(network):
    _, snn, x = network
    layerwise = qffs_tf.simulate(snn, x, mode="layerwise")
    stepwise = qffs_tf.simulate(snn, x, mode="stepwise")
    for name in layerwise.counts:
        np.testing.assert_array_equal(layerwise.counts[name], stepwise.counts[name])
        np.testing.assert_array_equal(
            layerwise.positive_spikes[name], stepwise.positive_spikes[name]
        )
        np.testing.assert_array_equal(
            layerwise.negative_spikes[name], stepwise.negative_spikes[name]
        )
    # Same charges summed in the same order per step; only the time-folded convolutions may
    # group the additions differently, so the logits agree to float32 rounding.
    np.testing.assert_allclose(layerwise.logits, stepwise.logits, rtol=1e-5, atol=1e-5)


def test_verify_finds_the_plugin_exact_and_faster_than_qffs(network):
    qat, snn, x = network
    report = qffs_tf.verify(qat, snn, x)
    assert report.exact, str(report)
    qffs = qffs_tf.simulate(qffs_tf.convert(qat, timesteps=40), x)
    burst = report.simulation
    assert (burst.quiet_step > 0).all() and (qffs.quiet_step > 0).all()
    assert burst.quiet_step.mean() < qffs.quiet_step.mean()  # bursts settle sooner


def test_saved_snn_with_the_plugin_loads(network, tmp_path):
    _, snn, x = network
    path = tmp_path / "burst.keras"
    snn.save(path)
    loaded = qffs_tf.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), snn.predict(x, verbose=0))


def test_tflite_programs_run_the_plugin_with_parity(network, tmp_path):
    _, snn, x = network
    full = qffs_tf.export_tflite(snn, tmp_path / "full.tflite", kind="snn_full")
    step = qffs_tf.export_tflite(snn, tmp_path / "step.tflite", kind="snn_step", batch_size=4)
    simulation = qffs_tf.simulate(snn, x)
    scale = np.abs(simulation.logits).max()
    # LiteRT sums convolutions in its own order: float32 rounding relative to the logit scale.
    tolerance = 1e-4 * scale
    np.testing.assert_allclose(
        runtime.predict(full.path, x), snn.predict(x, verbose=0), atol=tolerance
    )
    per_step, spikes = runtime.stream(step.path, x, TIMESTEPS)
    np.testing.assert_allclose(per_step, simulation.logits, atol=tolerance)
    np.testing.assert_array_equal(spikes, simulation.spikes_per_step())
