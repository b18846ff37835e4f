"""simulate: layerwise and stepwise agree spike for spike; statistics; early exit."""

import numpy as np
import pytest
from snn_fixtures import every_layer_model, flatten_model, images

import qffs_tf
from qffs_tf.errors import QFFSError


@pytest.fixture(scope="module")
def network():
    model = every_layer_model(3)
    x = images(16, model.input_shape[1:], 3)
    qat = qffs_tf.quantize_model(model, activation_bits=2, calibration_data=x)
    return qat, qffs_tf.convert(qat, timesteps=40), x


def test_layerwise_and_stepwise_give_identical_spikes(network):
    _, snn, x = network
    layerwise = qffs_tf.simulate(snn, x, mode="layerwise")
    stepwise = qffs_tf.simulate(snn, x, mode="stepwise")
    for name in layerwise.positive_spikes:
        np.testing.assert_array_equal(
            layerwise.positive_spikes[name], stepwise.positive_spikes[name]
        )
        np.testing.assert_array_equal(
            layerwise.negative_spikes[name], stepwise.negative_spikes[name]
        )
        np.testing.assert_array_equal(layerwise.counts[name], stepwise.counts[name])
    np.testing.assert_array_equal(layerwise.quiet_step, stepwise.quiet_step)
    np.testing.assert_allclose(layerwise.logits, stepwise.logits, atol=1e-5)
    assert layerwise.spikes_per_step().sum() > 0
    assert (layerwise.quiet_step > 1).all()


def test_early_exit_stops_when_quiet_and_keeps_logits_exact(network):
    qat, snn, x = network
    full = qffs_tf.simulate(snn, x, mode="stepwise")
    early = qffs_tf.simulate(snn, x, mode="stepwise", early_exit=True)
    assert early.steps_run == full.quiet_step.max() + 1 < full.timesteps
    np.testing.assert_allclose(early.logits, full.logits, atol=1e-6)
    for name in full.counts:
        np.testing.assert_array_equal(early.counts[name], full.counts[name])
        np.testing.assert_array_equal(early.positive_spikes[name], full.positive_spikes[name])
        np.testing.assert_array_equal(early.negative_spikes[name], full.negative_spikes[name])
    # Each sample is computed up to the step after its last spike, then leaves the batch.
    expected_active = [int((full.quiet_step >= t).sum()) for t in range(full.timesteps)]
    assert early.active_per_step == expected_active
    assert early.active_per_step[0] == 16 and early.active_per_step[-1] == 0
    np.testing.assert_allclose(early.final_logits, qat.predict(x, verbose=0), atol=1e-5)


def test_quiet_step_is_the_last_spiking_step_and_logits_are_final_from_then_on(network):
    _, snn, x = network
    result = qffs_tf.simulate(snn, x)
    spikes = result.spikes_per_step()
    for sample, quiet in enumerate(result.quiet_step):
        logits = result.logits[sample]
        np.testing.assert_array_equal(
            logits[quiet - 1 :], np.repeat(logits[-1:], 40 - quiet + 1, 0)
        )
        assert spikes[sample, quiet - 1] > 0 and not spikes[sample, quiet:].any()


def test_short_window_is_not_quiet_and_says_so(network):
    _, snn, x = network
    result = qffs_tf.simulate(snn, x, timesteps=2)
    assert result.logits.shape == (16, 2, 5)
    assert (result.quiet_step == -1).all()


def test_xla_gives_the_same_spikes(network):
    _, snn, x = network
    plain = qffs_tf.simulate(snn, x, timesteps=12)
    xla = qffs_tf.simulate(snn, x, timesteps=12, jit_compile=True)
    for name in plain.counts:
        np.testing.assert_array_equal(plain.counts[name], xla.counts[name])
    np.testing.assert_allclose(plain.logits, xla.logits, atol=1e-5)


def test_synaptic_operations_count_events_times_fanout():
    model = flatten_model(1)
    x = images(8, model.input_shape[1:], 1)
    qat = qffs_tf.quantize_model(model, 2, calibration_data=x)
    snn = qffs_tf.convert(qat, timesteps=10)
    result = qffs_tf.simulate(snn, x)
    # The logits Dense (4 units) is fed by the spikes of the 12 'd1' neurons.
    events = result.positive_spikes["quant_d1"] + result.negative_spikes["quant_d1"]
    np.testing.assert_array_equal(result.synaptic_ops["logits"], 4 * events)
    # The first conv acts on the analog input once: 8x8 outputs x 3x3x1 kernel x 4 filters.
    assert result.input_macs == 8 * 8 * 9 * 4


def test_bad_inputs_get_clear_errors(network):
    _, snn, x = network
    with pytest.raises(QFFSError, match="Input shape"):
        qffs_tf.simulate(snn, x[:, :6])
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(QFFSError, match="NaN"):
        qffs_tf.simulate(snn, bad)
    with pytest.raises(QFFSError, match="mode"):
        qffs_tf.simulate(snn, x, mode="eventwise")
    with pytest.raises(QFFSError, match="stepwise"):
        qffs_tf.simulate(snn, x, early_exit=True)


@pytest.mark.parametrize(
    "kind,kernel,strides,padding,dilation",
    [
        ("conv2d", (3, 3, 2, 5), (1, 1), "same", (1, 1)),
        ("conv2d", (3, 3, 2, 5), (2, 2), "same", (1, 1)),
        ("conv2d", (4, 2, 2, 3), (2, 1), "valid", (1, 1)),
        ("conv2d", (3, 3, 2, 3), (1, 1), "same", (2, 2)),
        ("depthwise_conv2d", (3, 3, 2, 2), (2, 2), "same", (1, 1)),
    ],
)
def test_fanout_matches_brute_force_one_hot_convolutions(kind, kernel, strides, padding, dilation):
    """Each input position's fanout = outputs it feeds x taps, found by convolving one-hots."""
    from qffs_tf._keras import keras, tf
    from qffs_tf.simulation import fanout
    from qffs_tf.snn import layers as spiking

    layer = spiking.SpikingLinear(kind, kernel, strides, padding, dilation, temporal=False)
    layer(keras.Input((7, 6, 2)))
    positions = np.eye(7 * 6 * 2, dtype=np.float32).reshape(-1, 7, 6, 2)
    brute = tf.reduce_sum(layer.linear(tf.constant(positions), tf.ones(kernel)), [1, 2, 3])
    np.testing.assert_array_equal(fanout(layer).reshape(-1), brute.numpy())
