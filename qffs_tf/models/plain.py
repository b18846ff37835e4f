"""Plain convolution stacks: the quickstart CNN and VGG-11/13/16/19."""

from __future__ import annotations

from collections.abc import Sequence

from qffs_tf._keras import keras
from qffs_tf.errors import UnsupportedModelError
from qffs_tf.models._common import (
    batch_norm,
    check_common,
    check_pooling_fits,
    conv_bn_relu,
    is_imagenet_sized,
    l2,
    layers,
    logits,
    relu,
    scaled,
)

_VGG_CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ),  # fmt: skip
}


def small_cnn(
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    width: float = 1.0,
    weight_decay: float = 0.0,
    dropout: float = 0.25,
) -> keras.Model:
    """Quickstart CNN for MNIST-sized images (two conv blocks, one hidden Dense).

    conv3x3(32)-BN-ReLU-maxpool2, conv3x3(64)-BN-ReLU-maxpool2, flatten, dense(128)-BN-ReLU,
    dropout, dense(num_classes) logits. About 0.42 M parameters at width 1 on 28x28x1.
    """
    check_common(input_shape, num_classes, width, weight_decay)
    check_pooling_fits(input_shape, 2, "small_cnn")
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = inputs
    for i, filters in enumerate((32, 64), start=1):
        x = conv_bn_relu(x, scaled(filters, width), 3, 1, weight_decay, f"block{i}")
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(
        scaled(128, width), use_bias=False, kernel_regularizer=l2(weight_decay), name="fc1"
    )(x)
    x = batch_norm(name="fc1_bn")(x)
    x = relu("fc1_relu")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="fc1_dropout")(x)
    return keras.Model(inputs, logits(x, num_classes, weight_decay), name="small_cnn")


def vgg(
    depth: int = 16,
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    width: float = 1.0,
    weight_decay: float = 0.0,
    dropout: float = 0.0,
    classifier_units: int | Sequence[int] | None = None,
) -> keras.Model:
    """VGG-11/13/16/19 with BatchNormalization after every conv and 2x2 max-pooling.

    The classifier is Flatten, then hidden Dense-BN-ReLU(-Dropout) layers, then logits.
    `classifier_units` lists the hidden Dense sizes before width scaling (an int is one
    layer, () none); by default (512,) for small images and (4096, 4096) for ImageNet-sized
    ones. `dropout` > 0 adds Dropout after each hidden Dense.
    """
    if depth not in _VGG_CONFIGS:
        raise UnsupportedModelError(
            f"VGG depth {depth} is not available: use one of {sorted(_VGG_CONFIGS)}."
        )
    check_common(input_shape, num_classes, width, weight_decay)
    check_pooling_fits(input_shape, 5, f"VGG-{depth}")
    if classifier_units is None:
        classifier_units = (4096, 4096) if is_imagenet_sized(input_shape) else (512,)
    elif isinstance(classifier_units, int):
        classifier_units = (classifier_units,)

    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = inputs
    block, conv = 1, 1
    for item in _VGG_CONFIGS[depth]:
        if item == "M":
            x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
            block, conv = block + 1, 1
            continue
        x = conv_bn_relu(x, scaled(item, width), 3, 1, weight_decay, f"block{block}_{conv}")
        conv += 1
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(classifier_units, start=1):
        x = layers.Dense(
            scaled(units, width),
            use_bias=False,
            kernel_regularizer=l2(weight_decay),
            name=f"fc{i}",
        )(x)
        x = batch_norm(name=f"fc{i}_bn")(x)
        x = relu(f"fc{i}_relu")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
    return keras.Model(inputs, logits(x, num_classes, weight_decay), name=f"vgg{depth}")
