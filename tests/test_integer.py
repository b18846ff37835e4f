"""Integer-exact arithmetic: the SNN equals the integer reference QANN bit for bit, in
layerwise and stepwise simulation and in the exported TFLite programs (LiteRT)."""

import numpy as np
import pytest
from snn_fixtures import every_layer_model, images, randomize

import qffs_tf
from qffs_tf._keras import keras
from qffs_tf.errors import ConversionError, InvalidArgumentError
from qffs_tf.export import parity, runtime
from qffs_tf.snn.integer import ExactMembrane


def integer_model(seed: int) -> keras.Model:
    """Every layer kind integer mode carries: zero padding, signed BatchNorm before each
    activation, a max-pool before an activation (moved behind it), a residual Add of spikes
    and a conv branch, depthwise conv, average and global average pooling, dense layers."""
    # The kernels come from Keras's initializers: seed them, or they depend on which tests
    # ran before in this process (randomize sets only biases and BatchNorm statistics).
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inp = keras.Input((12, 12, 2))
    x = layers.ZeroPadding2D(1, name="pad")(inp)
    x = layers.Conv2D(6, 3, name="c1")(x)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="r1")(x)
    x = layers.Conv2D(6, 3, padding="same", name="c2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.ReLU(name="r2")(x)
    x = layers.Conv2D(6, 1, activation="relu", name="c3")(x)
    branch = layers.Conv2D(6, 3, padding="same", name="c4")(x)
    branch = layers.BatchNormalization(name="bn4")(branch)
    x = layers.Add(name="add")([x, branch])
    x = layers.ReLU(name="r4")(x)
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    x = layers.AveragePooling2D(name="avg")(x)
    x = layers.Conv2D(8, 3, padding="same", name="c5")(x)
    x = layers.BatchNormalization(name="bn5")(x)
    x = layers.ReLU(name="r5")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(10, activation="relu", name="d1")(x)
    out = layers.Dense(5, name="logits")(x)
    return randomize(keras.Model(inp, out), seed)


def weight_quantized(model: keras.Model, bits: int, x: np.ndarray) -> keras.Model:
    """8-bit weights and b-bit activations; one training-mode call sets tfmot's weight ranges
    from the kernels, as the first training step does."""
    qat = qffs_tf.quantize_model(model, activation_bits=bits, weight_bits=8, calibration_data=x)
    qat(x, training=True)
    return qat


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_random_networks_equal_the_integer_reference_bit_for_bit(bits):
    model = integer_model(bits)
    x = images(32, model.input_shape[1:], bits)
    qat = weight_quantized(model, bits, x)
    snn = qffs_tf.convert(qat, timesteps=6 * 2**bits, arithmetic="integer")
    report = qffs_tf.verify(qat, snn, x)
    assert report.reference == "integer"
    assert report.quiet_fraction == 1.0, report
    assert report.exact and report.verdict == "exact", report
    assert report.max_logit_error == 0.0  # exactly: same integers, same affine expression
    reference = qffs_tf.integer_reference(qat)(x)
    layerwise = report.simulation
    stepwise = qffs_tf.simulate(snn, x, mode="stepwise")
    np.testing.assert_array_equal(stepwise.logits, layerwise.logits)
    np.testing.assert_array_equal(stepwise.final_logits, reference["logits"])
    for name in qffs_tf.integer_reference(qat).activations:
        np.testing.assert_array_equal(stepwise.counts[name], reference[name])
    # The integer reference is the QAT model up to float rounding: a level may differ only at a
    # float32 tie of the QAT model's pass (its rounding depends on oneDNN's summation order,
    # which changes with the threads available) and downstream of one, never unexplained.
    for check in report.reference_checks:
        assert check.unexplained == 0, report
        assert check.mismatches == check.ties + check.inherited, report
    scale = np.abs(reference["logits"]).max()
    assert report.reference_logit_difference <= 1e-5 * max(scale, 1.0)
    # Unit spikes, integer kernels: what the integer accumulators add.
    first = snn.get_layer("quant_c3_linear")
    np.testing.assert_array_equal(first.kernel.numpy(), np.round(first.kernel.numpy()))
    assert np.abs(first.kernel.numpy()).max() <= 127


def test_a_deep_residual_network_is_bit_exact():
    model = randomize(
        qffs_tf.models.build("resnet20", input_shape=(8, 8, 3), num_classes=5, width=0.25), 7
    )
    x = images(8, (8, 8, 3), 7)
    qat = weight_quantized(model, 2, x)
    snn = qffs_tf.convert(qat, timesteps=48, arithmetic="integer")
    report = qffs_tf.verify(qat, snn, x)
    assert len(report.layers) == 19
    assert report.quiet_fraction == 1.0 and report.exact, report
    assert report.max_logit_error == 0.0


@pytest.fixture(scope="module")
def two_bit():
    model = integer_model(5)
    x = images(12, model.input_shape[1:], 5)
    qat = weight_quantized(model, 2, x)
    return qat, qffs_tf.convert(qat, timesteps=16, arithmetic="integer"), x


def test_exported_tflite_programs_are_bit_exact(two_bit, tmp_path):
    qat, snn, x = two_bit
    result = qffs_tf.simulate(snn, x)
    assert (result.quiet_step > 0).all()
    reference = qffs_tf.integer_reference(qat)(x)["logits"]
    full = qffs_tf.export_tflite(snn, tmp_path / "full.tflite", "snn_full")
    logits = runtime.predict(full.path, x)
    np.testing.assert_array_equal(logits, result.final_logits)
    np.testing.assert_array_equal(logits, reference)
    step = qffs_tf.export_tflite(snn, tmp_path / "step.tflite", "snn_step", batch_size=4)
    per_step, spikes = runtime.stream(step.path, x, 16)
    np.testing.assert_array_equal(per_step, result.logits)
    np.testing.assert_array_equal(spikes, result.spikes_per_step())
    # The export parity check demands the same: bit equality for integer-mode files.
    checks = parity.check_parity({"snn_full": full, "snn_step": step}, qat, snn, x)
    for kind, check in checks.items():
        assert check["bit_exact"] and check["passed"] and check["tolerance"] == 0.0, kind


def test_integer_snn_saves_and_loads(two_bit, tmp_path):
    _, snn, x = two_bit
    path = str(tmp_path / "snn.keras")
    snn.save(path)
    loaded = qffs_tf.load_model(path)
    assert isinstance(loaded, qffs_tf.SpikingNetwork)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), snn.predict(x, verbose=0))
    # Its call runs the Program; Keras's layer-by-layer call of the same layers agrees.
    layer_by_layer = keras.Model(snn.inputs, snn.outputs)
    np.testing.assert_array_equal(snn.predict(x, verbose=0), layer_by_layer.predict(x, verbose=0))


def test_auto_timesteps_in_integer_mode(two_bit):
    qat, _, x = two_bit
    snn = qffs_tf.convert(qat, timesteps="auto", arithmetic="integer", calibration_data=x)
    choice = snn.qffs_timesteps_choice
    assert choice.timesteps > choice.max_quiet_step >= 1
    report = qffs_tf.verify(qat, snn, x)
    assert report.exact and report.quiet_fraction == 1.0 and report.max_logit_error == 0.0


def test_a_wrong_membrane_scale_is_unexplained(two_bit):
    qat, _, x = two_bit
    snn = qffs_tf.convert(qat, timesteps=16, arithmetic="integer")
    membrane = snn.get_layer("quant_r4_membrane")
    assert isinstance(membrane, ExactMembrane)
    scales, bias = membrane.get_weights()
    membrane.set_weights([scales * 1.5, bias])
    report = qffs_tf.verify(qat, snn, x)
    checks = {layer.snn_layer: layer for layer in report.layers}
    assert checks["quant_c3"].mismatches == 0
    assert checks["quant_r4"].unexplained == checks["quant_r4"].mismatches > 0
    # Whatever the wrong layer changes downstream (how much depends on the random draw) is
    # inherited, never blamed on the downstream layer itself.
    downstream = checks["quant_dw"]
    assert downstream.unexplained == 0
    assert downstream.inherited == downstream.mismatches
    assert not report.certified and report.verdict.startswith("NOT certified: 0 ties")


def test_what_integer_mode_refuses():
    model = integer_model(0)
    x = images(4, model.input_shape[1:])
    float_weights = qffs_tf.quantize_model(model, activation_bits=2, calibration_data=x)
    with pytest.raises(ConversionError, match="weight_bits"):
        qffs_tf.convert(float_weights, 8, arithmetic="integer")
    with pytest.raises(InvalidArgumentError, match="arithmetic"):
        qffs_tf.convert(float_weights, 8, arithmetic="fixed")
    after_act = every_layer_model(0)  # has a BatchNormalization after an activation
    qat = weight_quantized(after_act, 2, images(4, after_act.input_shape[1:]))
    with pytest.raises(ConversionError, match="BatchNormalization before the activation"):
        qffs_tf.convert(qat, 8, arithmetic="integer")
    with pytest.raises(ConversionError, match="QFFS neuron only"):
        qffs_tf.convert(qat, 8, neuron="plain_if", arithmetic="integer")
