"""quantize_model: every ReLU form becomes a QFFS activation; tfmot QAT trains and saves."""

import math

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import qffs_tf
from qffs_tf._keras import keras, tf
from qffs_tf.errors import UnsupportedModelError
from qffs_tf.quantization import quantized_activations


def all_relu_forms_model():
    inp = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_fused")(inp)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu_layer")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw_fused")(x)
    x = keras.layers.Conv2D(4, 1, name="pw")(x)
    x = keras.layers.Activation("relu", name="act_relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(6, activation="relu", name="dense_fused")(x)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    out = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inp, out)


def data(n=32, shape=(8, 8, 2), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, classes, n)


def test_every_relu_form_is_quantized_and_logits_are_not():
    model = all_relu_forms_model()
    qat = qffs_tf.quantize_model(model, activation_bits=3)
    specs = quantized_activations(qat)
    assert set(specs) == {
        "quant_conv_fused",
        "quant_relu_layer",
        "quant_dw_fused",
        "quant_act_relu",
        "quant_dense_fused",
    }
    assert {spec.bits for spec in specs.values()} == {3}
    assert {spec.kind for spec in specs.values()} == {"fused", "output"}
    assert isinstance(qat.get_layer("logits"), keras.layers.Dense)
    # Weights are carried over unchanged.
    np.testing.assert_array_equal(
        qat.get_layer("bn").get_weights()[0], model.get_layer("bn").get_weights()[0]
    )


def test_outputs_take_only_quantized_levels():
    inp = keras.Input((5,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(hidden))
    x, _ = data(64, (5,))
    qat = qffs_tf.quantize_model(model, activation_bits=2, calibration_data=x)
    step = quantized_activations(qat)["quant_hidden"].step_size
    probe = keras.Model(qat.input, qat.get_layer("quant_hidden").output)
    levels = probe(x).numpy() / step
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    assert set(np.round(levels).astype(int).ravel()) <= {0, 1, 2, 3}
    # Calibration used LSQ's rule on this layer's ReLU output.
    relu_out = np.maximum(
        x @ model.layers[1].get_weights()[0] + model.layers[1].get_weights()[1], 0
    )
    assert step == pytest.approx(2 * relu_out.mean() / math.sqrt(3), rel=1e-5)


def test_qat_model_trains_loss_goes_down():
    keras.utils.set_random_seed(1)
    qat = qffs_tf.quantize_model(all_relu_forms_model(), activation_bits=2)
    x, _ = data(64)
    y = np.digitize(x[..., 0].mean(axis=(1, 2)), [-0.1, 0.1])  # a learnable target
    qat.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = qat.fit(x, y, epochs=40, batch_size=32, verbose=0).history["loss"]
    assert history[-1] < 0.7 * history[0]


@pytest.mark.parametrize("suffix", [".keras", "_savedmodel"])
def test_qat_model_saves_and_loads_with_identical_outputs(tmp_path, suffix):
    x, _ = data()
    qat = qffs_tf.quantize_model(all_relu_forms_model(), 2, weight_bits=8, calibration_data=x)
    path = str(tmp_path / f"qat{suffix}")
    qat.save(path)
    loaded = qffs_tf.load_model(path)
    np.testing.assert_array_equal(loaded(x).numpy(), qat(x).numpy())
    assert quantized_activations(loaded) == quantized_activations(qat)


def test_weight_bits_adds_tfmot_weight_fake_quantization():
    x, _ = data()
    qat = qffs_tf.quantize_model(all_relu_forms_model(), 2, weight_bits=8, calibration_data=x)
    logits = qat.get_layer("quant_logits")
    assert isinstance(logits, tfmot.quantization.keras.QuantizeWrapperV2)
    assert any("kernel_min" in w.name for w in logits.weights)


def test_sequential_model_is_supported():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4), keras.layers.ReLU(), keras.layers.Dense(2)]
    )
    qat = qffs_tf.quantize_model(model, 1)
    assert len(quantized_activations(qat)) == 1


def test_model_without_relu_is_rejected():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(UnsupportedModelError, match="no ReLU"):
        qffs_tf.quantize_model(model)


def test_unsupported_layer_is_named():
    model = keras.Sequential(
        [keras.Input((4, 3)), keras.layers.Conv1D(2, 2, name="c1d"), keras.layers.ReLU()]
    )
    with pytest.raises(UnsupportedModelError, match=r"'c1d' \(Conv1D\).*Supported layers"):
        qffs_tf.quantize_model(model)


def test_relu6_and_other_activations_are_rejected():
    relu6 = keras.Sequential([keras.Input((4,)), keras.layers.ReLU(max_value=6.0, name="r6")])
    with pytest.raises(UnsupportedModelError, match="'r6'.*not a plain ReLU"):
        qffs_tf.quantize_model(relu6)
    sigmoid = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="sigmoid")])
    with pytest.raises(UnsupportedModelError, match="sigmoid"):
        qffs_tf.quantize_model(sigmoid)


def test_subclassed_model_is_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2, activation="relu")

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(tf.zeros((1, 3)))
    with pytest.raises(UnsupportedModelError, match="subclassed"):
        qffs_tf.quantize_model(net)


def test_keras3_model_gets_a_clear_error():
    keras3 = pytest.importorskip("keras")
    if not keras3.__version__.startswith("3"):
        pytest.skip("Keras 3 not installed")
    model = keras3.Sequential([keras3.Input((3,)), keras3.layers.Dense(2, activation="relu")])
    with pytest.raises(UnsupportedModelError, match="Keras 3.*tf_keras"):
        qffs_tf.quantize_model(model)


def test_bad_bits_are_rejected():
    with pytest.raises(ValueError, match="activation_bits"):
        qffs_tf.quantize_model(all_relu_forms_model(), activation_bits=0)
    with pytest.raises(ValueError, match="weight_bits"):
        qffs_tf.quantize_model(all_relu_forms_model(), weight_bits=16)


def test_nan_calibration_data_is_reported():
    x, _ = data(4)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        qffs_tf.quantize_model(all_relu_forms_model(), calibration_data=x)
