"""Tests of the model zoo: shapes, allowed layers, topology, parameter counts, errors."""

from __future__ import annotations

import numpy as np
import pytest

from qffs_tf import models
from qffs_tf._keras import check_tf_keras_model, keras, tf
from qffs_tf.errors import UnsupportedModelError

L = keras.layers
ALLOWED = {
    L.Conv2D,
    L.DepthwiseConv2D,
    L.Dense,
    L.BatchNormalization,
    L.ReLU,
    L.MaxPooling2D,
    L.AveragePooling2D,
    L.GlobalAveragePooling2D,
    L.Flatten,
    L.Add,
    L.Concatenate,
    L.ZeroPadding2D,
    L.Dropout,
    L.InputLayer,
}
SMALL = (32, 32, 3)
IMAGENET_SMALL = (64, 64, 3)


def _of_type(model, cls) -> list:
    return [layer for layer in model.layers if type(layer) is cls]


def _inbound(layer) -> list:
    """The layers that feed `layer` in the functional graph."""
    layers = layer.inbound_nodes[0].inbound_layers
    return layers if isinstance(layers, list) else [layers]


def _trainable_count(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _tiny(name: str, input_shape=SMALL, num_classes: int = 7) -> keras.Model:
    kwargs = dict(input_shape=input_shape, num_classes=num_classes, width=0.125)
    if name == "small_cnn":
        kwargs["input_shape"] = (28, 28, 1)
    return models.build(name, **kwargs)


# densenet121 (428 layers, seconds to build) is checked by its parameter count at 224x224;
# "densenet" has the same blocks.
CASES = [(name, SMALL) for name in models.NAMES if name != "densenet121"] + [
    (name, IMAGENET_SMALL)
    for name in ("vgg16", "resnet18", "resnet50", "mobilenet_v1", "mobilenet_v2")
]


@pytest.mark.parametrize(("name", "input_shape"), CASES)
def test_every_model_builds_with_allowed_layers_and_logits(name, input_shape):
    model = _tiny(name, input_shape)
    check_tf_keras_model(model)  # functional, tf_keras
    x = np.random.default_rng(0).normal(size=(2, *model.input_shape[1:])).astype("float32")
    y = model(x, training=False).numpy()
    assert y.shape == (2, 7)
    assert np.all(np.isfinite(y))

    assert {type(layer) for layer in model.layers} <= ALLOWED
    last = model.layers[-1]
    assert type(last) is L.Dense and last.name == "logits"
    assert last.activation is keras.activations.linear and last.use_bias
    for layer in model.layers:
        if isinstance(layer, L.Conv2D | L.Dense):  # DepthwiseConv2D is a Conv2D subclass
            assert layer.activation is keras.activations.linear, layer.name
        if type(layer) is L.ReLU:  # plain ReLU: no cap (not ReLU6), no leak, no threshold
            assert layer.max_value is None, layer.name
            assert float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0
            assert type(_inbound(layer)[0]) in (L.BatchNormalization, L.Add), layer.name
        if type(layer) is L.BatchNormalization:
            (source,) = _inbound(layer)
            if hasattr(source, "use_bias"):
                assert not source.use_bias, source.name  # the BN carries the bias
            else:  # DenseNet's pre-activation BN after a Concatenate or a pooling layer
                assert type(source) in (L.Concatenate, L.AveragePooling2D, L.MaxPooling2D)
            assert (layer.momentum, layer.epsilon) == (0.9, 1e-5)  # PyTorch-like, fast stats
    assert len(_of_type(model, L.ReLU)) > 0


def test_layer_names_are_readable():
    names = [layer.name for layer in models.small_cnn().layers]
    assert names == [
        "input",
        "block1_conv",
        "block1_bn",
        "block1_relu",
        "block1_pool",
        "block2_conv",
        "block2_bn",
        "block2_relu",
        "block2_pool",
        "flatten",
        "fc1",
        "fc1_bn",
        "fc1_relu",
        "fc1_dropout",
        "logits",
    ]


def test_small_cnn_exact_parameter_count_and_width_scaling():
    def expected(c1, c2, units, classes=10):
        return (
            (9 * 1 * c1 + 4 * c1)  # conv3x3 + BN (gamma, beta, mean, var)
            + (9 * c1 * c2 + 4 * c2)
            + (7 * 7 * c2 * units + 4 * units)  # 28 -> 14 -> 7 after two pools
            + (units * classes + classes)
        )

    assert models.small_cnn().count_params() == expected(32, 64, 128) == 422314
    assert models.small_cnn(width=0.5).count_params() == expected(16, 32, 64)
    assert models.small_cnn(width=0.25, num_classes=3).count_params() == expected(8, 16, 32, 3)
    assert [type(la) for la in models.small_cnn(dropout=0).layers].count(L.Dropout) == 0


@pytest.mark.parametrize(
    ("name", "kwargs", "trainable"),
    [  # reference counts: torchvision resnet18/34/50 and keras.applications.MobileNet
        ("resnet18", dict(input_shape=(224, 224, 3), num_classes=1000), 11_689_512),
        ("resnet50", dict(input_shape=(224, 224, 3), num_classes=1000), 25_557_032),
        ("mobilenet_v1", dict(input_shape=(224, 224, 3), num_classes=1000), 4_231_976),
        # keras.applications.MobileNetV2 / DenseNet121(weights=None), trainable weights
        ("mobilenet_v2", dict(input_shape=(224, 224, 3), num_classes=1000), 3_504_872),
        ("densenet121", dict(input_shape=(224, 224, 3), num_classes=1000), 7_978_856),
    ],
)
def test_full_size_imagenet_models_match_reference_parameter_counts(name, kwargs, trainable):
    assert _trainable_count(models.build(name, **kwargs)) == trainable


def test_resnet20_exact_parameter_count():
    def conv_bn(k, cin, cout):
        return k * k * cin * cout + 2 * cout  # trainable: kernel, gamma, beta

    stage1 = 6 * conv_bn(3, 16, 16)
    stage2 = conv_bn(3, 16, 32) + conv_bn(3, 32, 32) + conv_bn(1, 16, 32) + 4 * conv_bn(3, 32, 32)
    stage3 = conv_bn(3, 32, 64) + conv_bn(3, 64, 64) + conv_bn(1, 32, 64) + 4 * conv_bn(3, 64, 64)
    expected = conv_bn(3, 3, 16) + stage1 + stage2 + stage3 + 64 * 10 + 10
    model = models.resnet(20, input_shape=SMALL, num_classes=10)
    assert _trainable_count(model) == expected == 272_474


@pytest.mark.parametrize("name", ["vgg11", "resnet18", "resnet50", "resnet20", "mobilenet_v1"])
def test_width_scales_parameter_count(name):
    small = models.build(name, input_shape=SMALL, width=0.125).count_params()
    large = models.build(name, input_shape=SMALL, width=0.25).count_params()
    # Doubling channels roughly quadruples conv weights; BN and logits grow linearly.
    assert 2.5 * small < large < 4.0 * small


def test_width_never_rounds_channels_to_zero():
    model = models.resnet(18, input_shape=SMALL, width=0.001)
    convs = _of_type(model, L.Conv2D)
    assert min(c.filters for c in convs) == 1
    assert model(np.zeros((1, *SMALL), "float32")).shape == (1, 10)


@pytest.mark.parametrize(
    ("depth", "blocks", "projections"),
    [(18, 8, 3), (34, 16, 3), (50, 16, 4), (20, 9, 2), (56, 27, 2)],
)
def test_resnet_residual_topology(depth, blocks, projections):
    model = models.resnet(depth, input_shape=SMALL, width=0.125)
    adds = _of_type(model, L.Add)
    assert len(adds) == blocks
    for add in adds:  # ReLU after the Add, fed by two BN branches (projection or not)
        assert len(_inbound(add)) == 2
        (relu,) = [la for la in model.layers if type(la) is L.ReLU and _inbound(la) == [add]]
        assert relu.name.endswith("_out_relu")
    shortcuts = [la for la in _of_type(model, L.Conv2D) if "shortcut" in la.name]
    assert len(shortcuts) == projections
    assert all(la.kernel_size == (1, 1) for la in shortcuts)


def test_resnet50_uses_bottleneck_blocks():
    model = models.resnet(50, input_shape=SMALL, width=0.25)
    convs = _of_type(model, L.Conv2D)
    one_by_one = [c for c in convs if c.kernel_size == (1, 1)]
    three_by_three = [c for c in convs if c.kernel_size == (3, 3)]
    assert len(one_by_one) == 16 * 2 + 4  # two per block + four projections
    assert len(three_by_three) == 16 + 1  # one per block + the small-image stem
    block = {c.name: c.filters for c in convs if c.name.startswith("stage1_block1_")}
    assert block == {
        "stage1_block1_1_conv": 16,
        "stage1_block1_2_conv": 16,
        "stage1_block1_3_conv": 64,  # expansion 4
        "stage1_block1_shortcut_conv": 64,
    }
    strided = [c.name for c in convs if c.strides == (2, 2)]
    assert sorted(strided) == sorted(
        f"stage{s}_block1_{part}_conv" for s in (2, 3, 4) for part in ("2", "shortcut")
    )


def test_resnet_stems_depend_on_input_size():
    small = models.resnet(18, input_shape=SMALL, width=0.125)
    assert small.get_layer("stem_conv").kernel_size == (3, 3)
    assert small.get_layer("stem_conv").strides == (1, 1)
    assert not _of_type(small, L.MaxPooling2D) and not _of_type(small, L.ZeroPadding2D)
    assert small.get_layer("avg_pool").input_shape[1:3] == (4, 4)  # 32 / 8

    big = models.resnet(18, input_shape=IMAGENET_SMALL, width=0.125)
    stem = big.get_layer("stem_conv")
    assert (stem.kernel_size, stem.strides) == ((7, 7), (2, 2))
    assert big.get_layer("stem_pool_pad").padding == ((1, 1), (1, 1))
    pool = big.get_layer("stem_pool")
    assert (pool.pool_size, pool.strides, pool.padding) == ((3, 3), (2, 2), "valid")
    assert pool.output_shape[1:3] == (16, 16)  # 64 -> 32 (conv) -> 16 (pool)
    assert big.get_layer("avg_pool").input_shape[1:3] == (2, 2)  # 64 / 32


@pytest.mark.parametrize(("depth", "convs"), [(11, 8), (13, 10), (16, 13), (19, 16)])
def test_vgg_conv_and_pool_counts(depth, convs):
    model = models.vgg(depth, input_shape=SMALL, width=0.125)
    assert len(_of_type(model, L.Conv2D)) == convs
    assert len(_of_type(model, L.MaxPooling2D)) == 5
    assert all(c.kernel_size == (3, 3) for c in _of_type(model, L.Conv2D))
    assert [c.filters for c in _of_type(model, L.Conv2D)][-1] == 64  # 512 * 0.125


def test_vgg_classifier_options():
    def hidden_units(model):
        return [d.units for d in _of_type(model, L.Dense)][:-1]

    assert hidden_units(models.vgg(16, input_shape=SMALL, width=0.125)) == [64]
    assert hidden_units(models.vgg(16, input_shape=IMAGENET_SMALL, width=0.125)) == [512, 512]
    assert hidden_units(models.vgg(11, input_shape=SMALL, width=0.5, classifier_units=100)) == [50]
    bare = models.vgg(11, input_shape=SMALL, width=0.125, classifier_units=())
    assert hidden_units(bare) == [] and _inbound(bare.layers[-1])[0].name == "flatten"
    dropped = models.vgg(11, input_shape=SMALL, width=0.125, dropout=0.5, classifier_units=(8, 8))
    rates = [d.rate for d in _of_type(dropped, L.Dropout)]
    assert rates == [0.5, 0.5]


def test_mobilenet_v1_structure():
    model = models.mobilenet_v1(input_shape=IMAGENET_SMALL, num_classes=5, width=0.25)
    dws = _of_type(model, L.DepthwiseConv2D)
    assert len(dws) == 13
    assert [d.strides[0] for d in dws] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    pointwise = [c for c in _of_type(model, L.Conv2D) if c.kernel_size == (1, 1)]
    assert [c.filters for c in pointwise][-1] == 256  # 1024 * 0.25
    assert model.get_layer("stem_conv").strides == (2, 2)
    assert model.get_layer("avg_pool").input_shape[1:3] == (2, 2)  # 64 / 32
    small = models.mobilenet_v1(input_shape=SMALL, num_classes=5, width=0.25)
    assert small.get_layer("stem_conv").strides == (1, 1)
    assert small.get_layer("avg_pool").input_shape[1:3] == (2, 2)  # 32 / 16


def test_weight_decay_adds_l2_on_every_kernel():
    model = models.resnet(20, input_shape=SMALL, width=0.125, weight_decay=1e-3)
    kernels = [la for la in model.layers if isinstance(la, L.Conv2D | L.Dense)]
    assert len(model.losses) == len(kernels)
    expected = sum(1e-3 * float(tf.reduce_sum(k.kernel**2)) for k in kernels)
    assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-5)
    dw = models.mobilenet_v1(input_shape=SMALL, width=0.125, weight_decay=1e-4)
    assert len(dw.losses) == len(_of_type(dw, L.DepthwiseConv2D)) * 2 + 2  # dw, pw, stem, logits
    assert models.resnet(20, input_shape=SMALL, width=0.125).losses == []


@pytest.mark.parametrize("name", ["small_cnn", "resnet20"])
def test_every_trainable_weight_gets_a_gradient(name):
    model = _tiny(name)
    x = tf.random.stateless_normal((4, *model.input_shape[1:]), seed=(1, 2))
    labels = tf.constant([0, 1, 2, 3])
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    grads = tape.gradient(loss, model.trainable_weights)
    for weight, grad in zip(model.trainable_weights, grads, strict=True):
        assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0, weight.name


def test_config_round_trip_gives_the_same_outputs():
    model = models.resnet(18, input_shape=IMAGENET_SMALL, width=0.125)
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(1).normal(size=(2, *IMAGENET_SMALL)).astype("float32")
    np.testing.assert_allclose(clone(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_build_by_name_and_names():
    for required in (
        "small_cnn",
        "vgg11",
        "vgg16",
        "resnet18",
        "resnet20",
        "resnet34",
        "resnet50",
        "mobilenet_v1",
        "mobilenet_v2",
        "densenet",
        "densenet121",
    ):
        assert required in models.NAMES
    model = models.build("resnet34", input_shape=SMALL, num_classes=4, width=0.125)
    assert model.name == "resnet34" and model.output_shape == (None, 4)
    assert len(_of_type(model, L.Add)) == 16
    assert models.build("VGG-16", input_shape=SMALL, width=0.125).name == "vgg16"
    assert models.build("MobileNetV1", input_shape=SMALL, width=0.125).name == "mobilenet_v1"
    assert models.build("MobileNetV2", input_shape=SMALL, width=0.125).name == "mobilenet_v2"
    assert models.build("Dense_Net", input_shape=SMALL, blocks=(1,), width=0.125).name == "densenet"


def test_unknown_name_lists_the_known_names():
    with pytest.raises(UnsupportedModelError, match="Unknown model name 'alexnet'") as info:
        models.build("alexnet")
    assert all(name in str(info.value) for name in models.NAMES)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: models.build("resnet18", depth=34), "takes no depth"),
        (lambda: models.vgg(12), "VGG depth 12"),
        (lambda: models.resnet(19), "ResNet depth 19"),
        (lambda: models.vgg(16, input_shape=(28, 28, 1)), "at least 32x32"),
        (lambda: models.small_cnn(input_shape=(3, 3, 1)), "at least 4x4"),
        (lambda: models.small_cnn(width=0), "width=0"),
        (lambda: models.resnet(18, input_shape=(32, 32)), "input_shape"),
        (lambda: models.mobilenet_v1(num_classes=0), "num_classes"),
        (lambda: models.small_cnn(weight_decay=-1.0), "weight_decay"),
        (lambda: models.densenet(blocks=()), "blocks=()"),
        (lambda: models.densenet(growth_rate=0), "growth_rate=0"),
        (lambda: models.densenet(compression=1.5), "compression=1.5"),
        (lambda: models.densenet((2,) * 6, input_shape=(16, 16, 3)), "at least 32x32"),
        (lambda: models.mobilenet_v2(width=-1), "width=-1"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(UnsupportedModelError, match=message):
        call()


def test_mobilenet_v2_structure():
    model = models.mobilenet_v2(
        input_shape=IMAGENET_SMALL, num_classes=5, width=0.25, relu_max_value=6.0
    )
    assert {float(la.max_value) for la in _of_type(model, L.ReLU)} == {6.0}  # ReLU6 throughout
    dws = _of_type(model, L.DepthwiseConv2D)
    assert len(dws) == 17
    assert [d.strides[0] for d in dws] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    # Residual Adds where a block keeps the shape: 1 + 2 + 3 + 2 + 2 of the repeated blocks.
    adds = _of_type(model, L.Add)
    assert len(adds) == 10
    for add in adds:  # linear bottleneck: the projection's BN feeds the Add, no ReLU after it
        assert any(type(la) is L.BatchNormalization for la in _inbound(add))
        assert not [la for la in model.layers if type(la) is L.ReLU and _inbound(la) == [add]]
    assert model.get_layer("block1_expand_conv").filters == 16 * 6 // 4  # expansion 6
    assert "block0_expand_conv" not in [la.name for la in model.layers]  # t = 1: no expansion
    assert model.get_layer("last_conv").filters == 320  # 1280 * 0.25
    assert model.get_layer("avg_pool").input_shape[1:3] == (2, 2)  # 64 / 32
    small = models.mobilenet_v2(input_shape=SMALL, num_classes=5, width=0.25)
    assert small.get_layer("stem_conv").strides == (1, 1)
    assert small.get_layer("avg_pool").input_shape[1:3] == (4, 4)  # 32 / 8
    assert {la.max_value for la in _of_type(small, L.ReLU)} == {None}  # plain ReLU by default


def test_densenet_structure_and_channel_counts():
    model = models.densenet(input_shape=SMALL, num_classes=10)  # DenseNet-BC-40, k = 12
    concats = _of_type(model, L.Concatenate)
    assert len(concats) == 18  # 3 blocks x 6 dense layers
    # channels: stem 2k = 24, + 6k per block, halved by each transition
    assert model.get_layer("block1_layer6_concat").output_shape[-1] == 24 + 72
    assert model.get_layer("transition1_conv").filters == 48
    assert model.get_layer("block2_layer6_concat").output_shape[-1] == 48 + 72
    assert model.get_layer("avg_pool").input_shape[1:] == (8, 8, 60 + 72)
    # Pre-activation: every dense layer starts with BN -> ReLU on the concatenation.
    first = model.get_layer("block2_layer3_1_bn")
    assert _inbound(first)[0].name == "block2_layer2_concat"
    assert _inbound(model.get_layer("block2_layer3_1_relu"))[0] is first
    assert model.get_layer("block1_layer1_1_conv").filters == 48  # bottleneck 4k
    pools = _of_type(model, L.AveragePooling2D)
    assert [p.name for p in pools] == ["transition1_pool", "transition2_pool"]
    wide = models.densenet(input_shape=(28, 28, 1), growth_rate=12, width=2.0, blocks=(2, 2))
    assert wide.get_layer("block1_layer1_2_conv").filters == 24
    assert wide.get_layer("avg_pool").input_shape[1:3] == (14, 14)
    big = models.densenet((1, 2, 1, 1), input_shape=IMAGENET_SMALL, growth_rate=32, width=0.125)
    assert len(_of_type(big, L.Concatenate)) == 5
    assert big.get_layer("stem_conv").kernel_size == (7, 7)
    assert big.get_layer("stem_pool").output_shape[1:3] == (16, 16)
    assert big.get_layer("avg_pool").input_shape[1:3] == (2, 2)  # 64 / 32


def test_densenet_quantizes():
    # MobileNetV2 with ReLU6 goes through quantize_model in test_applications_quantize.py.
    import qffs_tf

    model = models.build("densenet", input_shape=SMALL, num_classes=5, width=0.5, blocks=(2, 2))
    x = np.random.default_rng(0).random((4, *SMALL), dtype=np.float32)
    qat = qffs_tf.quantize_model(model, 2, calibration_data=x)
    specs = qffs_tf.quantization.quantized_activations(qat)
    assert len(specs) == len(_of_type(model, L.ReLU))  # every ReLU, none left out
    assert {spec.max_value for spec in specs.values()} == {None}
    assert qat(x).shape == (4, 5)


# ----------------------------------------------------------------------------- applications


def test_from_keras_application_by_name_and_by_constructor():
    by_name = models.from_keras_application("mobilenet_v2", (32, 32, 3), 7, alpha=0.35)
    assert by_name.name.startswith("mobilenetv2_0.35") and by_name.output_shape == (None, 7)
    assert by_name.input_shape == (None, 32, 32, 3)
    assert by_name.layers[-1].activation is keras.activations.softmax  # default head kept
    by_constructor = models.from_keras_application(
        keras.applications.MobileNet, (32, 32, 1), 3, alpha=0.25, classifier_activation=None
    )
    assert by_constructor.output_shape == (None, 3)
    assert by_constructor.layers[-1].activation is keras.activations.linear
    assert "MobileNetV2" in models.application_names()


def test_from_keras_application_errors():
    with pytest.raises(UnsupportedModelError, match="'AlexNet' is not a tf_keras.applications"):
        models.from_keras_application("AlexNet", (32, 32, 3), 10)
    with pytest.raises(UnsupportedModelError, match=r"ResNet50.*refused.*32.*pad or resize"):
        models.from_keras_application("ResNet50", (28, 28, 1), 10)
    with pytest.raises(UnsupportedModelError, match="input_shape"):
        models.from_keras_application("ResNet50", (32, 32), 10)
    # check=True (the default) refuses what quantize_model would refuse, before training;
    # test_applications_quantize.py builds it with check=False and gets the same refusal.
    with pytest.raises(UnsupportedModelError, match="'stem_activation'.*swish"):
        models.from_keras_application("EfficientNetB0", (32, 32, 3), 10)
