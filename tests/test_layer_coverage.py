"""Layer kinds beyond the paper's: every one converts exactly, in both simulation modes and
in the TFLite programs (random networks built with QuantReLU; random tensors: mechanics)."""

import numpy as np
import pytest
from snn_fixtures import images, randomize

import qffs_tf
from qffs_tf._keras import keras
from qffs_tf.errors import ConversionError
from qffs_tf.export import runtime

L = keras.layers
TIMESTEPS = 40


def q(name):
    return qffs_tf.QuantReLU(2, name=name)


def inception_dense_model(seed=0):
    """Preprocessing, SeparableConv2D, Concatenate (with a max-pool after it), an Inception
    branch with AveragePooling2D(stride 1, same), pre-activation BN after Concatenate and
    after Add, Conv2DTranspose, UpSampling2D (nearest and bilinear), Cropping2D, Reshape,
    Permute, GlobalMaxPooling2D, a nested model and a softmax head."""
    inp = keras.Input((12, 12, 3))
    x = L.Rescaling(2.0, offset=-1.0, name="rescale")(inp)
    x = L.Conv2D(8, 3, padding="same", name="stem")(x)
    x = q("a0")(x)
    a = L.SeparableConv2D(6, 3, padding="same", depth_multiplier=2, name="sep")(x)
    a = q("a1")(a)
    b = L.AveragePooling2D(3, strides=1, padding="same", name="avg_same")(x)
    b = L.Conv2D(4, 1, name="branch_1x1")(b)
    b = q("a2")(b)
    x = L.Concatenate(name="cat")([a, b, x])
    x = L.MaxPooling2D(name="pool_after_cat")(x)
    x = L.BatchNormalization(name="bn_preact")(x)
    x = q("a3")(x)
    inner_in = keras.Input(x.shape[1:])
    inner = L.Conv2D(6, 3, padding="same", name="inner_conv")(inner_in)
    inner = q("inner_act")(inner)
    nested = keras.Model(inner_in, inner, name="block")
    y = nested(x)
    y = L.Conv2DTranspose(6, 3, strides=2, padding="same", name="deconv")(y)
    y = L.BatchNormalization(name="bn_deconv")(y)
    y = q("a4")(y)
    z = L.UpSampling2D(2, interpolation="bilinear", name="up_bilinear")(x)
    z = L.Conv2D(6, 1, name="z_conv")(z)
    y = L.Add(name="add")([y, z])
    y = L.BatchNormalization(name="bn_after_add")(y)
    y = q("a5")(y)
    y = L.Cropping2D(((1, 1), (2, 0)), name="crop")(y)
    y = L.UpSampling2D((1, 2), name="up_nearest")(y)
    y = L.Permute((2, 1, 3), name="permute")(y)
    y = L.Conv2D(4, 3, strides=2, name="c_last")(y)
    y = q("a6")(y)
    y = L.Reshape((-1, 4), name="reshape")(y)
    y = L.Reshape((y.shape[1], 2, 2), name="reshape_back")(y)
    y = L.GlobalMaxPooling2D(name="gmp")(y)
    out = L.Dense(5, activation="softmax", name="probs")(y)
    return randomize(keras.Model(inp, out), seed)


@pytest.fixture(scope="module")
def network():
    model = inception_dense_model(1)
    x = images(12, model.input_shape[1:], 3)
    model(x)  # QuantReLU initialises its step sizes from the first batch it sees
    snn = qffs_tf.convert(model, timesteps=TIMESTEPS)
    return model, snn, x


def test_every_count_equals_the_qann_and_the_head_is_kept(network):
    model, snn, x = network
    report = qffs_tf.verify(model, snn, x)
    assert report.exact and report.quiet_fraction == 1.0, report
    probabilities = snn.predict(x, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # Same answers as the Keras model (probabilities, not logits); float32 summation order.
    np.testing.assert_allclose(probabilities, model.predict(x, verbose=0), atol=1e-5)


def test_layerwise_equals_stepwise(network):
    _, snn, x = network
    layerwise = qffs_tf.simulate(snn, x)
    stepwise = qffs_tf.simulate(snn, x, mode="stepwise", early_exit=True)
    for name in layerwise.counts:
        np.testing.assert_array_equal(layerwise.counts[name], stepwise.counts[name])
    np.testing.assert_allclose(layerwise.logits, stepwise.logits, rtol=1e-5, atol=1e-5)


def test_tflite_programs_and_the_folded_qann(network, tmp_path):
    model, snn, x = network
    reference = model.predict(x, verbose=0)
    for kind, source in (("qann_float", model), ("snn_full", snn)):
        file = qffs_tf.export_tflite(source, tmp_path / f"{kind}.tflite", kind=kind)
        assert not [op for op in file.operators if op.startswith("CUSTOM")]
        # Probabilities in [0, 1]: LiteRT's own summation order moves them by float32 ulps.
        np.testing.assert_allclose(runtime.predict(file.path, x), reference, atol=1e-4)
    np.testing.assert_allclose(
        qffs_tf.folded_qann(model).predict(x, verbose=0), reference, atol=1e-5
    )


def test_snn_saves_and_loads(network, tmp_path):
    _, snn, x = network
    snn.save(tmp_path / "snn.keras")
    loaded = qffs_tf.load_model(tmp_path / "snn.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), snn.predict(x, verbose=0))


@pytest.mark.parametrize(
    "layer, message",
    [
        (L.Activation("sigmoid"), "middle of the network"),
        (L.Activation("swish"), "swish"),
        (L.Conv2D(4, 3, groups=2), "groups"),
        (L.UpSampling2D(interpolation="bicubic"), "bicubic"),
    ],
)
def test_what_cannot_be_exact_is_refused_with_a_reason(layer, message):
    inp = keras.Input((8, 8, 4))
    x = L.Conv2D(4, 3, padding="same")(inp)
    x = q("act")(x)
    x = layer(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(3)(x))
    model(images(2, (8, 8, 4)))
    with pytest.raises(ConversionError, match=message):
        qffs_tf.convert(model)
