"""quantize_model: every ReLU form becomes a QFFS activation (ReLU6 with its cap), heads keep
their activation, supported layers are accepted, everything else is refused up front with the
layer, why and the closest alternative; tfmot QAT trains and saves."""

import math
import re

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import qffs_tf
from qffs_tf._keras import keras, tf
from qffs_tf.errors import QFFSError, QuantizationError, UnsupportedModelError
from qffs_tf.quantization import output_activations, quantized_activations, step_cap

L = keras.layers


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


# ----------------------------------------------------------------------------- ReLU6


def relu6_forms_model():
    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = L.ReLU(6.0, name="relu6_layer")(x)
    x = L.Conv2D(4, 3, padding="same", activation="relu6", name="conv_relu6")(x)
    x = L.DepthwiseConv2D(3, padding="same", activation=tf.nn.relu6, name="dw_tf_relu6")(x)
    x = L.Conv2D(4, 1, name="pw")(x)
    x = L.Activation("relu6", name="act_relu6")(x)
    x = L.Conv2D(4, 1, name="pw2")(x)
    x = L.ReLU(max_value=2.5, name="relu_cap")(x)
    x = L.Conv2D(4, 1, name="pw3")(x)
    x = tf.nn.relu6(x)  # a TFOpLambda layer
    x = L.Conv2D(4, 1, name="pw4")(x)
    x = tf.nn.relu(x)
    x = L.Flatten(name="flat")(x)
    return keras.Model(inp, L.Dense(3, name="logits")(x))


def probe(qat, names):
    return keras.Model(qat.input, [qat.get_layer(name).output for name in names])


@pytest.mark.parametrize("bits", [2, 3])
def test_relu6_forms_are_quantized_with_the_effective_step(bits):
    x, _ = data(32, (6, 6, 2))
    x *= 20.0  # large activations: the LSQ initial steps exceed m / L, so the cap is active
    qat = qffs_tf.quantize_model(relu6_forms_model(), bits, calibration_data=x)
    specs = quantized_activations(qat)
    # TFOpLambda layers are named by Keras ("tf.nn.relu6", "tf.nn.relu6_1", ...).
    caps = {re.sub(r"(tf\.nn\.relu6?)_\d+$", r"\1", n): s.max_value for n, s in specs.items()}
    assert caps == {
        "quant_relu6_layer": 6.0,
        "quant_conv_relu6": 6.0,
        "quant_dw_tf_relu6": 6.0,
        "quant_act_relu6": 6.0,
        "quant_relu_cap": 2.5,
        "quant_tf.nn.relu6": 6.0,
        "quant_tf.nn.relu": None,
    }
    num = 2**bits - 1
    outputs = probe(qat, list(specs))(x)
    for (name, spec), out in zip(specs.items(), outputs, strict=True):
        out = out.numpy()
        step = np.float32(spec.step_size)
        if spec.max_value is not None:
            assert spec.step_size <= step_cap(bits, spec.max_value), name
            assert out.max() <= spec.max_value, name
        levels = np.round(out / step)
        # Exactly levels times the spec's step: the converter's threshold is what QAT used.
        np.testing.assert_array_equal(out, levels.astype(np.float32) * step, err_msg=name)
        assert levels.min() >= 0 and levels.max() <= num, name
    assert specs["quant_relu6_layer"].step_size == step_cap(bits, 6.0)  # capped init
    # tfmot wraps only some activation names: the fused relu6 is carried as relu + the cap.
    fused = qat.get_layer("quant_conv_relu6").layer.activation  # tfmot's QuantizeAwareActivation
    assert fused.activation is keras.activations.relu


def test_relu6_qat_model_trains_and_saves(tmp_path):
    keras.utils.set_random_seed(2)
    x, _ = data(64, (6, 6, 2))
    y = (x[..., 0].mean(axis=(1, 2)) > 0).astype(int)
    qat = qffs_tf.quantize_model(relu6_forms_model(), 2, calibration_data=x * 20.0)
    qat.compile(
        keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    history = qat.fit(x, y, epochs=25, batch_size=32, verbose=0).history["loss"]
    assert history[-1] < 0.8 * history[0]
    for name, spec in quantized_activations(qat).items():
        if spec.max_value is not None:  # still within the cap after training
            assert 0 < spec.step_size <= step_cap(2, spec.max_value), name
    path = str(tmp_path / "relu6.keras")
    qat.save(path)
    loaded = qffs_tf.load_model(path)
    np.testing.assert_array_equal(loaded(x).numpy(), qat(x).numpy())
    assert quantized_activations(loaded) == quantized_activations(qat)


# ----------------------------------------------------------------------------- heads


def head_models():
    """Float models whose head applies a softmax in each of the ways Keras models do."""

    def body():
        inp = keras.Input((5,))
        return inp, L.Dense(8, activation="relu", name="hidden")(inp)

    inp, x = body()
    fused = keras.Model(inp, L.Dense(4, activation="softmax", name="predictions")(x))
    inp, x = body()
    x = L.Dense(4, name="logits")(x)
    activation = keras.Model(inp, L.Activation("softmax", name="predictions")(x))
    inp, x = body()
    x = L.Dense(4, name="logits")(x)
    layer = keras.Model(inp, L.Softmax(name="predictions")(x))
    # MobileNet's head: 1x1 conv logits, Reshape, then the softmax Activation.
    inp = keras.Input((4, 4, 3))
    x = L.Conv2D(8, 3, activation="relu", name="conv")(inp)
    x = L.GlobalAveragePooling2D(keepdims=True, name="pool")(x)
    x = L.Conv2D(4, 1, name="conv_preds")(x)
    x = L.Reshape((4,), name="reshape")(x)
    conv = keras.Model(inp, L.Activation("softmax", name="predictions")(x))
    return {"fused": fused, "activation": activation, "layer": layer, "conv": conv}


@pytest.mark.parametrize("form", ["fused", "activation", "layer", "conv"])
@pytest.mark.parametrize("weight_bits", [None, 8])
def test_softmax_head_is_kept_and_outputs_probabilities(form, weight_bits):
    model = head_models()[form]
    x = np.random.default_rng(0).normal(size=(16, *model.input_shape[1:])).astype(np.float32)
    qat = qffs_tf.quantize_model(model, 2, weight_bits=weight_bits, calibration_data=x)
    y = qat(x).numpy()
    assert y.shape == (16, 4) and np.all(y >= 0)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=0, atol=1e-6)  # float32 sum of 4
    assert list(output_activations(qat).values()) == ["softmax"]
    assert list(output_activations(model).values()) == ["softmax"]
    assert len(quantized_activations(qat)) == 1  # only the hidden ReLU


def test_softmax_head_model_trains_with_probability_loss():
    keras.utils.set_random_seed(3)
    x = np.random.default_rng(1).normal(size=(64, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int)
    qat = qffs_tf.quantize_model(head_models()["fused"], 2, calibration_data=x)
    qat.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy())
    history = qat.fit(x, y, epochs=30, batch_size=32, verbose=0).history["loss"]
    assert history[-1] < 0.7 * history[0]
    np.testing.assert_allclose(qat(x).numpy().sum(axis=1), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- accepted layers


def converter_layers_model():
    """Every layer kind the converter carries, with pre-activation BN after Concatenate/Add."""
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Rescaling(1 / 255.0, offset=-0.5, name="rescale")(inp)
    x = L.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 4.0], name="norm")(x)
    x = L.Conv2D(6, 3, padding="same", name="stem")(x)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    a = L.SeparableConv2D(4, 3, padding="same", activation="relu", name="sep")(x)
    b = L.MaxPooling2D(3, strides=1, padding="same", name="maxpool_same")(x)
    x = L.Concatenate(name="concat")([a, b])
    x = L.BatchNormalization(name="pre_bn")(x)  # pre-activation: BN -> ReLU -> conv
    x = L.Activation("relu", name="pre_relu")(x)
    y = L.Conv2D(10, 1, name="pw")(x)
    x = L.Add(name="add")([x, y])
    x = L.BatchNormalization(name="post_add_bn")(x)
    x = L.ReLU(name="post_add_relu")(x)
    x = L.AveragePooling2D(3, strides=1, padding="same", name="avg_same")(x)
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu", name="deconv")(x)
    x = L.UpSampling2D(interpolation="bilinear", name="up")(x)
    x = L.Cropping2D(((2, 2), (4, 4)), name="crop")(x)
    x = L.ZeroPadding2D(1, name="pad")(x)
    x = L.AveragePooling2D(2, name="avg")(x)
    x = L.MaxPooling2D(2, name="maxpool")(x)
    x = L.SpatialDropout2D(0.1, name="sdrop")(x)
    x = L.Permute((2, 1, 3), name="permute")(x)
    g = L.GlobalMaxPooling2D(name="gmax")(x)
    x = L.Reshape((-1,), name="reshape")(x)
    x = L.Concatenate(name="concat_flat")([x, g])
    x = L.Dense(8, name="fc")(x)
    x = L.ReLU(name="fc_relu")(x)
    x = L.Dropout(0.2, name="drop")(x)
    x = L.Flatten(name="flat")(x)
    return keras.Model(inp, L.Dense(3, name="logits")(x))


@pytest.mark.parametrize("weight_bits", [None, 8])
def test_every_converter_layer_is_accepted_and_carried(weight_bits):
    model = converter_layers_model()
    x = np.random.default_rng(0).uniform(0, 255, (8, 8, 8, 3)).astype(np.float32)
    qat = qffs_tf.quantize_model(model, 2, weight_bits=weight_bits, calibration_data=x)
    assert set(quantized_activations(qat)) == {
        f"quant_{name}"
        for name in ("stem_relu", "sep", "pre_relu", "post_add_relu", "deconv", "fc_relu")
    }
    assert qat(x).shape == (8, 3)
    # Passive layers are carried unwrapped, with the float model's weights and settings.
    for name in ("rescale", "norm", "pre_bn", "concat", "up", "crop", "permute", "gmax"):
        assert type(qat.get_layer(name)) is type(model.get_layer(name)), name
        assert qat.get_layer(name).get_config() == model.get_layer(name).get_config(), name
    np.testing.assert_array_equal(
        qat.get_layer("pre_bn").moving_variance.numpy(),
        model.get_layer("pre_bn").moving_variance.numpy(),
    )
    sep = qat.get_layer("quant_sep")
    np.testing.assert_array_equal(
        sep.layer.pointwise_kernel.numpy() if weight_bits is None else sep.weights[1].numpy(),
        model.get_layer("sep").pointwise_kernel.numpy(),
    )
    if weight_bits:  # both kernels of a separable convolution are fake-quantized
        names = [w.name for w in sep.weights]
        assert any("depthwise_kernel_min" in n for n in names), names
        assert any("pointwise_kernel_min" in n for n in names), names


def test_adapted_normalization_weights_are_carried():
    inp = keras.Input((4, 4, 2))
    norm = L.Normalization(name="norm")
    norm.adapt(np.random.default_rng(0).normal(3.0, 2.0, (32, 4, 4, 2)).astype(np.float32))
    x = L.Conv2D(3, 1, activation="relu", name="conv")(norm(inp))
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(x)))
    qat = qffs_tf.quantize_model(model, 2)
    for got, want in zip(qat.get_layer("norm").get_weights(), norm.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- nested models


def nested_model():
    """A backbone used as a layer (frozen BN, training=False), with a clashing layer name."""
    backbone_in = keras.Input((6, 6, 2))
    h = L.Conv2D(4, 3, padding="same", name="conv")(backbone_in)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    backbone = keras.Model(backbone_in, h, name="backbone")
    head = keras.Sequential(
        [keras.Input((4,)), L.Dense(5, activation="relu", name="conv")], name="head"
    )
    inp = keras.Input((6, 6, 2))
    x = backbone(inp, training=False)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = head(x)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="predictions")(x))


def randomise_batch_norm(model, rng):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            randomise_batch_norm(layer, rng)
        elif isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                    rng.normal(0.1, 0.2, beta.shape).astype(np.float32),
                    rng.normal(0.0, 0.2, mean.shape).astype(np.float32),
                    rng.uniform(0.5, 2.0, variance.shape).astype(np.float32),
                ]
            )


def test_nested_models_are_inlined():
    from qffs_tf.quantization.graph import flatten_graph, rebuild

    model = nested_model()
    randomise_batch_norm(model, np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(8, 6, 6, 2)).astype(np.float32)
    graph = flatten_graph(model)
    assert [c.name for c in graph.calls] == [
        "conv",
        "bn",
        "relu",
        "gap",
        "head_conv",
        "predictions",
    ]

    def fresh(call):
        return type(call.layer).from_config({**call.layer.get_config(), "name": call.name})

    flat = rebuild(graph, fresh)
    assert not any(isinstance(layer, keras.Model) for layer in flat.layers)
    np.testing.assert_array_equal(flat(x).numpy(), model(x).numpy())
    # The nested call's training=False reaches the inlined BatchNormalization.
    assert flat.get_layer("bn").inbound_nodes[0].call_kwargs == {"training": False}
    np.testing.assert_array_equal(flat(x, training=True).numpy(), model(x, training=True).numpy())

    qat = qffs_tf.quantize_model(model, 8, calibration_data=x)
    assert set(quantized_activations(qat)) == {"quant_relu", "quant_head_conv"}
    assert output_activations(qat) == {"predictions": "softmax"}
    # 8-bit activations: close to the float model (step ~ range / 255).
    np.testing.assert_allclose(qat(x).numpy(), model(x).numpy(), atol=0.02)


def test_sequential_around_a_nested_model_with_clashing_names():
    inner_in = keras.Input((4,), name="inner_input")
    inner = keras.Model(inner_in, L.Dense(4, activation="relu6", name="features")(inner_in))
    model = keras.Sequential([keras.Input((4,), name="features"), inner, L.Dense(2)])
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    qat = qffs_tf.quantize_model(model, 8, calibration_data=x * 4)
    names = [layer.name for layer in qat.layers]
    assert len(set(names)) == len(names)
    (spec,) = quantized_activations(qat).values()
    assert spec.max_value == 6.0
    np.testing.assert_allclose(qat(x).numpy(), model(x).numpy(), atol=0.05)


def test_subclassed_nested_model_is_refused():
    class Block(keras.Model):
        def __init__(self):
            super().__init__(name="custom_block")
            self.dense = L.Dense(4, activation="relu")

        def call(self, x):
            return self.dense(x)

    inp = keras.Input((3,))
    model = keras.Model(inp, L.Dense(2)(Block()(inp)))
    with pytest.raises(UnsupportedModelError, match="'custom_block'.*functional API"):
        qffs_tf.quantize_model(model)


# ----------------------------------------------------------------------------- refusals


def _single(layer_fn, shape=(8, 8, 4)):
    """Input -> conv+relu -> the layer under test -> flatten -> logits."""

    def build():
        inp = keras.Input(shape)
        x = L.Conv2D(4, 1, activation="relu", name="conv")(inp)
        x = layer_fn(x)
        x = L.Flatten(name="flat")(x)
        return keras.Model(inp, L.Dense(2, name="logits")(x))

    return build


def _multiply():
    inp = keras.Input((8, 8, 4))
    a = L.Conv2D(4, 1, activation="relu", name="a")(inp)
    b = L.Conv2D(4, 1, activation="sigmoid", name="gate")(inp)
    x = L.Multiply(name="excite")([a, b])
    return keras.Model(inp, L.Dense(2)(L.Flatten()(x)))


def _conv3d():
    inp = keras.Input((4, 4, 4, 2))
    x = L.Conv3D(2, 1, activation="relu", name="c3")(inp)
    return keras.Model(inp, L.Dense(2)(L.Flatten()(x)))


def _attention():
    inp = keras.Input((6, 8))
    x = L.Dense(8, activation="relu", name="embed")(inp)
    x = L.MultiHeadAttention(2, 4, name="mha")(x, x)
    return keras.Model(inp, L.Dense(2)(L.Flatten()(x)))


REFUSALS = [
    # (model builder, layer, type, why, closest alternative)
    (_single(L.Activation("swish", name="act")), "act", "Activation", "swish.*not monotone", "'relu'"),  # noqa: E501
    (_single(L.Conv2D(4, 1, activation="gelu", name="c")), "c", "Conv2D", "gelu.*not monotone", "'relu'"),  # noqa: E501
    (_single(L.Activation("sigmoid", name="act")), "act", "Activation", "sigmoid.*saturating", "relu6"),  # noqa: E501
    (_single(L.Activation("tanh", name="act")), "act", "Activation", "tanh.*saturating", "relu6"),
    (_single(L.Activation("elu", name="act")), "act", "Activation", "elu.*negative", "'relu'"),
    (_single(L.Activation("softmax", name="mid")), "mid", "Activation", "softmax.*only allowed as the model's output", "move it to the output"),  # noqa: E501
    (_single(L.Softmax(name="mid")), "mid", "Softmax", "softmax.*only allowed as the model's output", "move it to the output"),  # noqa: E501
    (_single(L.ReLU(negative_slope=0.1, name="leaky")), "leaky", "ReLU", "leaky.*negative", r"ReLU\(\)"),  # noqa: E501
    (_single(L.ReLU(threshold=0.5, name="thr")), "thr", "ReLU", "thresholded", r"ReLU\(\)"),
    (_single(L.LeakyReLU(name="lr")), "lr", "LeakyReLU", "negative", r"ReLU\(\)"),
    (_multiply, "excite", "Multiply", "multiplies two activations", "Add"),
    (_attention, "mha", "MultiHeadAttention", "attention", "convolutional blocks"),
    (_single(L.Conv2D(4, 3, groups=2, name="grouped")), "grouped", "Conv2D", "grouped convolution", "DepthwiseConv2D"),  # noqa: E501
    (_single(L.BatchNormalization(axis=1, name="bn1")), "bn1", "BatchNormalization", "axis", r"axis=-1"),  # noqa: E501
    (_single(L.MaxPooling2D(data_format="channels_first", name="cf")), "cf", "MaxPooling2D", "channels_first", "channels_last"),  # noqa: E501
    (_single(L.Lambda(lambda t: t * 2.0, name="lam")), "lam", "Lambda", "arbitrary Python code", "built-in Keras layers"),  # noqa: E501
    (_single(lambda t: tf.math.sigmoid(t)), "tf.math.sigmoid", "TFOpLambda", "TensorFlow op", "equivalent Keras layer"),  # noqa: E501
    (_single(L.UpSampling2D(interpolation="bicubic", name="up")), "up", "UpSampling2D", "bicubic", "bilinear"),  # noqa: E501
    (_conv3d, "c3", "Conv3D", "not a layer type QFFS supports.*Supported layers: InputLayer, Conv2D", "supported layers"),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "name", "kind", "why", "alternative"),
    REFUSALS,
    ids=[f"{kind}-{name}" for _, name, kind, _, _ in REFUSALS],
)
def test_what_cannot_be_exact_is_refused_with_layer_reason_and_alternative(
    build, name, kind, why, alternative
):
    model = build()
    with pytest.raises(UnsupportedModelError) as info:
        qffs_tf.quantize_model(model, 2)
    message = str(info.value)
    assert "\n" not in message  # one line: the CLI prints it as it is
    assert message.startswith(f"Model '{model.name}' cannot be quantized exactly for QFFS:")
    pattern = rf"layer '{name}' \({kind}\).*{why}.*Closest supported alternative: .*{alternative}"
    assert re.search(pattern, message), message


def test_non_monotone_head_activation_is_refused():
    inp = keras.Input((4,))
    x = L.Dense(4, activation="relu")(inp)
    model = keras.Model(inp, L.Dense(3, activation="swish", name="out")(x))
    with pytest.raises(UnsupportedModelError, match=r"'out' \(Dense\).*output activation 'swish'"):
        qffs_tf.quantize_model(model)


def test_problems_sharing_a_reason_are_grouped_with_a_count():
    inp = keras.Input((4,))
    x = inp
    for i in range(6):
        x = L.Dense(4, activation="swish", name=f"d{i}")(x)
    model = keras.Model(inp, L.Dense(2)(x))
    message = str(pytest.raises(UnsupportedModelError, qffs_tf.quantize_model, model).value)
    assert "layer 'd0' (Dense) (and 5 more: 'd1', 'd2', 'd3', ...) uses activation 'swish'" in (
        message
    )
    assert message.count("swish (x * sigmoid(x))") == 1


def test_check_model_refuses_without_building():
    from qffs_tf.quantization import check_model

    check_model(all_relu_forms_model())  # fine: no error
    with pytest.raises(UnsupportedModelError, match="Multiply"):
        check_model(_multiply())


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(activation_bits=0), "activation_bits must be from 1 to 8, got 0"),
        (dict(activation_bits=9), "activation_bits must be from 1 to 8, got 9"),
        (dict(activation_bits=2.5), "activation_bits must be a whole number"),
        (dict(weight_bits=16), "weight_bits must be from 2 to 8, got 16"),
        (dict(weight_bits=1), "weight_bits must be from 2 to 8, got 1"),
        (dict(init="max"), r"init must be one of \('lsq', 'percentile'\), got 'max'"),
        (dict(calibration_data=np.zeros((0, 8, 8, 2), np.float32)), "calibration_data is empty"),
        (dict(calibration_data=[]), "calibration_data is empty"),
        (
            dict(calibration_data=tf.data.Dataset.from_tensor_slices(np.zeros((0, 8, 8, 2)))),
            "calibration_data is an empty dataset",
        ),
        (dict(calibration_data=np.zeros((4, 8, 8), np.float32)), r"shape \(8, 8\).*\(8, 8, 2\)"),
        (dict(calibration_data=[["a"]]), "calibration_data must be numeric"),
    ],
)
def test_bad_arguments_raise_quantization_errors_up_front(kwargs, message):
    with pytest.raises(QuantizationError, match=message) as info:
        qffs_tf.quantize_model(all_relu_forms_model(), **kwargs)
    assert isinstance(info.value, QFFSError) and isinstance(info.value, ValueError)


def test_numpy_integer_bits_are_accepted():
    qat = qffs_tf.quantize_model(all_relu_forms_model(), np.int64(3), weight_bits=np.int32(8))
    assert {spec.bits for spec in quantized_activations(qat).values()} == {3}


def test_two_bit_weights_work():
    x, _ = data(8)
    qat = qffs_tf.quantize_model(all_relu_forms_model(), 2, weight_bits=2, calibration_data=x)
    assert np.all(np.isfinite(qat(x).numpy()))


def test_nan_calibration_data_is_reported():
    x, _ = data(4)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(QuantizationError, match="NaN"):
        qffs_tf.quantize_model(all_relu_forms_model(), calibration_data=x)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(4))).batch(2)
    with pytest.raises(QuantizationError, match="NaN"):
        qffs_tf.quantize_model(all_relu_forms_model(), calibration_data=dataset)
