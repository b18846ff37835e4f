"""The conventional rate-coded baseline (QFFS.md section 7), hand-traced and end to end."""

import numpy as np
import pytest
from snn_fixtures import flatten_model, images

import qffs_tf
from qffs_tf._keras import keras
from qffs_tf.export import runtime
from qffs_tf.quantization import QuantReLU


def one_neuron_network(step_size: float, bias: float, weight: float):
    """image (1 value) -> Dense(1) -> QuantReLU(2 bits) -> Dense(1) logits."""
    inp = keras.Input((1,))
    x = keras.layers.Dense(1, name="d1")(inp)
    x = QuantReLU(bits=2, name="q")(x)
    out = keras.layers.Dense(1, name="out")(x)
    model = keras.Model(inp, out)
    model.get_layer("d1").set_weights([np.array([[weight]]), np.array([bias])])
    model.get_layer("out").set_weights([np.array([[1.0]]), np.array([0.25])])
    model.get_layer("q").set_weights(
        [np.float32(step_size), np.float32(1.0)]
    )  # step, "initialised"
    return model


def test_hand_traced_rate_neuron():
    # s = 0.5, L = 3: threshold theta = L*s = 1.5, membrane starts at 0.75.
    # Input current every step: 0.4 * 1 + 0.2 = 0.6.  Membrane before the test:
    # t1 1.35 (no spike), t2 1.95 -> spike (0.45), t3 1.05, t4 1.65 -> spike (0.15).
    # Output charge per step = 1 * spike * 1.5 + bias 0.25 (bias at every step);
    # logits at step t = mean charge per step = (0.25 t + 1.5 * spikes so far) / t.
    model = one_neuron_network(step_size=0.5, bias=0.2, weight=0.4)
    snn = qffs_tf.convert(model, timesteps=4, neuron="rate")
    result = qffs_tf.simulate(snn, np.array([[1.0]], np.float32))
    spikes = np.array([0, 1, 0, 1])
    expected = (0.25 * np.arange(1, 5) + 1.5 * np.cumsum(spikes)) / np.arange(1, 5)
    np.testing.assert_allclose(result.logits[0, :, 0], expected, rtol=1e-6)
    np.testing.assert_array_equal(result.positive_spikes["q"][0], spikes)
    assert (result.negative_spikes["q"] == 0).all()
    assert (result.quiet_step == -1).all()  # a constant current is never "done"


def test_first_layer_over_L_steps_is_the_quantizer():
    # With T = L the first rate-coded layer's count is floor-based rounding of the constant
    # current: the mean charge after L steps equals the QANN's quantized activation.
    rng = np.random.default_rng(0)
    for weight in rng.uniform(0.05, 2.0, 20):
        model = one_neuron_network(step_size=0.5, bias=0.0, weight=float(weight))
        snn = qffs_tf.convert(model, timesteps=3, neuron="rate")
        x = np.array([[1.0]], np.float32)
        np.testing.assert_allclose(
            snn.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
        )


@pytest.fixture(scope="module")
def rate_network():
    model = flatten_model(seed=1)
    x = images(12, model.input_shape[1:], seed=4)
    qat = qffs_tf.quantize_model(model, activation_bits=2, calibration_data=x)
    return qat, qffs_tf.convert(qat, timesteps=6, neuron="rate"), x


def test_rate_layerwise_equals_stepwise(rate_network):
    _, snn, x = rate_network
    layerwise = qffs_tf.simulate(snn, x)
    stepwise = qffs_tf.simulate(snn, x, mode="stepwise")
    for name in layerwise.counts:
        np.testing.assert_array_equal(layerwise.counts[name], stepwise.counts[name])
    np.testing.assert_allclose(layerwise.logits, stepwise.logits, rtol=1e-5, atol=1e-6)
    with pytest.raises(qffs_tf.QFFSError, match="early_exit"):
        qffs_tf.simulate(snn, x, mode="stepwise", early_exit=True)


def test_rate_tflite_programs_match_simulate(rate_network, tmp_path):
    _, snn, x = rate_network
    full = qffs_tf.export_tflite(snn, tmp_path / "rate_full.tflite", kind="snn_full")
    step = qffs_tf.export_tflite(snn, tmp_path / "rate_step.tflite", kind="snn_step")
    simulation = qffs_tf.simulate(snn, x)
    tolerance = 1e-4 * np.abs(simulation.logits).max()  # LiteRT's own summation order
    np.testing.assert_allclose(
        runtime.predict(full.path, x), simulation.final_logits, atol=tolerance
    )
    per_step, spikes = runtime.stream(step.path, x, 6)
    np.testing.assert_allclose(per_step, simulation.logits, atol=tolerance)
    np.testing.assert_array_equal(spikes, simulation.spikes_per_step())
