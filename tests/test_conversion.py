"""convert + verify: the SNN's spike counts equal the QANN's integer activations exactly."""

import numpy as np
import pytest
from snn_fixtures import every_layer_model, flatten_model, images

import qffs_tf
from qffs_tf._keras import keras
from qffs_tf.errors import ConversionError
from qffs_tf.snn import layers as spiking


def converted(model_fn, bits, timesteps, seed=0, noise_suppression=True):
    model = model_fn(seed)
    x = images(24, model.input_shape[1:], seed)
    qat = qffs_tf.quantize_model(model, activation_bits=bits, calibration_data=x)
    snn = qffs_tf.convert(qat, timesteps=timesteps, noise_suppression=noise_suppression)
    return qat, snn, x


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_every_layer_kind_converts_exactly(bits):
    qat, snn, x = converted(every_layer_model, bits, timesteps=16 * 2**bits, seed=bits)
    report = qffs_tf.verify(qat, snn, x)
    assert report.quiet_fraction == 1.0, report
    assert report.exact, report
    assert len(report.layers) == 7
    scale = np.abs(qat.predict(x, verbose=0)).max()
    assert report.max_logit_error <= 1e-5 * max(scale, 1.0)
    assert report.agreement_per_step[-1] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flatten_network_converts_exactly(seed):
    qat, snn, x = converted(flatten_model, 2, timesteps=24, seed=seed)
    report = qffs_tf.verify(qat, snn, x)
    assert report.exact and report.quiet_fraction == 1.0, report
    np.testing.assert_allclose(snn.predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-5)


def test_rewrites_fold_batchnorm_and_move_the_max_pool():
    qat, snn, _ = converted(every_layer_model, 2, timesteps=4)
    names = [layer.name for layer in snn.layers]
    assert "bn1" not in names and "bn4" not in names and "bn5" not in names  # folded back
    assert "bn_after_act" not in names  # folded into the next (valid, 1x1) conv
    assert isinstance(snn.get_layer("bn_before_gap"), spiking.SpikingAffine)  # no linear next
    assert names.index("quant_r2") < names.index("pool_before_act")  # pool moved behind
    assert snn.get_layer("quant_r2").pooled_by == "pool_before_act"
    assert "drop" not in names
    # The analog input and its first conv are computed once, not T times.
    assert snn.get_layer("c1").temporal is False
    assert snn.get_layer("c2").temporal is True


def test_predict_returns_logits_after_timesteps_and_needs_no_copies_of_the_input():
    qat, snn, x = converted(flatten_model, 2, timesteps=3)
    assert snn.input_shape == qat.input_shape
    assert snn.output_shape == qat.output_shape
    result = qffs_tf.simulate(snn, x)
    np.testing.assert_allclose(snn.predict(x, verbose=0), result.logits[:, -1], atol=1e-6)
    lifted = [layer for layer in snn.layers if isinstance(layer, spiking.ToTemporal)]
    assert all(len(layer.input_shape) == 4 and layer.input_shape[-1] != 1 for layer in lifted)


@pytest.mark.parametrize("suffix", [".keras", "_savedmodel"])
def test_snn_saves_and_loads_with_identical_outputs(tmp_path, suffix):
    _, snn, x = converted(every_layer_model, 2, timesteps=6)
    path = str(tmp_path / f"snn{suffix}")
    snn.save(path)
    loaded = qffs_tf.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), snn.predict(x, verbose=0))


def late_negative_network():
    """Unit A fires at steps 0,1,2 into a negative weight, unit B once at step 0 into a positive
    one: the output neuron gets +1.5, -1, -1. Its QANN activation is q(-0.5) = 0, but a plain
    IF neuron fires at step 0 and can never take the spike back."""
    model = keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(2, name="d1"),
            qffs_tf.QuantReLU(2, name="a1"),
            keras.layers.Dense(1, name="d2"),
            qffs_tf.QuantReLU(2, name="a2"),
            keras.layers.Dense(1, name="out"),
        ]
    )
    model.get_layer("d1").set_weights([np.array([[3.0, 1.0]]), np.zeros(2)])
    model.get_layer("d2").set_weights([np.array([[-1.0], [2.5]]), np.zeros(1)])
    model.get_layer("out").set_weights([np.ones((1, 1)), np.zeros(1)])
    for name in ("a1", "a2"):
        layer = model.get_layer(name)
        layer.step_size.assign(1.0)
        layer._vars["initialized"].assign(1.0)
    return model


def test_negative_spikes_remove_the_occasional_noise_of_plain_if():
    model = late_negative_network()
    x = np.ones((1, 1), np.float32)
    assert model.predict(x, verbose=0)[0, 0] == 0.0  # QANN: q(-0.5) = 0
    plain = qffs_tf.verify(model, qffs_tf.convert(model, 8, noise_suppression=False), x)
    qffs = qffs_tf.verify(model, qffs_tf.convert(model, 8, noise_suppression=True), x)
    assert [layer.mismatches for layer in plain.layers] == [0, 1]
    assert plain.max_logit_error == pytest.approx(1.0)
    assert qffs.exact and qffs.max_logit_error == 0.0
    assert qffs.simulation.negative_spikes["a2"].sum() == 1


def test_unsupported_layer_is_named_with_the_supported_types():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(2, 3, name="conv"),
            qffs_tf.QuantReLU(2, name="act"),
            keras.layers.LayerNormalization(name="up"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    with pytest.raises(
        ConversionError, match=r"'up' \(LayerNormalization\).*Supported layer types"
    ):
        qffs_tf.convert(model)


def test_unquantized_relu_and_float_models_are_rejected():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)]
    )
    with pytest.raises(ConversionError, match="quantize_model"):
        qffs_tf.convert(model)
    linear = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ConversionError, match="no QFFS activation"):
        qffs_tf.convert(linear)


def test_shared_layers_are_rejected():
    inp = keras.Input((4,))
    dense = keras.layers.Dense(4, name="shared")
    x = qffs_tf.QuantReLU(2)(dense(inp))
    x = dense(x)
    model = keras.Model(inp, keras.layers.Dense(2)(x))
    with pytest.raises(ConversionError, match="'shared'.*more than once"):
        qffs_tf.convert(model)


def test_bad_timesteps_are_rejected():
    model = late_negative_network()
    with pytest.raises(ValueError, match="timesteps"):
        qffs_tf.convert(model, timesteps=0)


def test_weight_quantized_model_converts_exactly_with_its_int8_kernels():
    model = every_layer_model(7)
    x = images(16, model.input_shape[1:], 7)
    qat = qffs_tf.quantize_model(model, 2, weight_bits=8, calibration_data=x)
    qat.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, np.arange(16) % 5, epochs=1, verbose=0)  # sets tfmot's kernel ranges
    snn = qffs_tf.convert(qat, timesteps=48)
    report = qffs_tf.verify(qat, snn, x)
    assert report.exact and report.quiet_fraction == 1.0, report
    float_model = every_layer_model(7)
    float_model.set_weights(model.get_weights())
    # The fake-quantized kernels differ from the float ones: exactness is not by accident.
    assert not np.allclose(qat.predict(x, verbose=0), float_model.predict(x, verbose=0))
