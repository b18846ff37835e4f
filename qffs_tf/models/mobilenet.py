"""MobileNet v1 and v2: depthwise-separable blocks; v2 adds inverted residuals."""

from __future__ import annotations

from collections.abc import Sequence

from qffs_tf._keras import keras
from qffs_tf.models._common import (
    batch_norm,
    check_common,
    conv_bn_relu,
    is_imagenet_sized,
    l2,
    layers,
    logits,
    relu,
    scaled,
)

# MobileNet v1 depthwise-separable blocks: (pointwise filters, depthwise stride).
_MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip

# MobileNet v2 stages (Sandler et al. 2018, table 2): expansion t, channels c, repeats n,
# stride s of the first block.
_MOBILENET_V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)  # fmt: skip
_MOBILENET_V2_LAST = 1280


def _depthwise_bn_relu(x, stride: int, wd: float, name: str, max_value: float | None):
    """DepthwiseConv2D 3x3 (no bias, 'same') -> BatchNormalization -> ReLU."""
    x = layers.DepthwiseConv2D(
        3,
        strides=stride,
        padding="same",
        use_bias=False,
        depthwise_regularizer=l2(wd),
        name=f"{name}_dw_conv",
    )(x)
    x = batch_norm(name=f"{name}_dw_bn")(x)
    return relu(f"{name}_dw_relu", max_value)(x)


def mobilenet_v1(
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    width: float = 1.0,
    weight_decay: float = 0.0,
    dropout: float = 0.0,
    relu_max_value: float | None = None,
) -> keras.Model:
    """MobileNet v1 (Howard et al. 2017), with plain ReLU unless ``relu_max_value`` is set.

    Stem conv3x3(32)-BN-ReLU, 13 depthwise-separable blocks
    (DepthwiseConv2D-BN-ReLU-Conv1x1-BN-ReLU), global average pool, optional Dropout, logits.
    ImageNet-sized inputs use the stride-2 stem (output stride 32); small images use a
    stride-1 stem so a 32x32 image still ends at 2x2.

    Parameters
    ----------
    input_shape : sequence of int
        (height, width, channels).
    num_classes : int
        Number of logits.
    width : float
        Channel multiplier (the paper's alpha); counts are rounded, at least 1.
    weight_decay : float
        L2 factor on every kernel (0 for none).
    dropout : float
        Dropout rate before the logits (0 for none).
    relu_max_value : float, optional
        6.0 gives the paper's ReLU6 (quantize_model keeps the cap); None gives plain ReLUs.

    Returns
    -------
    keras.Model
        A functional model named "mobilenet_v1" producing logits.

    Raises
    ------
    UnsupportedModelError
        For an invalid shape, class count, width or weight decay.

    Example
    -------
    >>> model = mobilenet_v1(input_shape=(32, 32, 3), num_classes=10, width=0.25)
    >>> model.output_shape
    (None, 10)
    """
    check_common(input_shape, num_classes, width, weight_decay)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    stem_stride = 2 if is_imagenet_sized(input_shape) else 1
    x = conv_bn_relu(
        inputs, scaled(32, width), 3, stem_stride, weight_decay, "stem", max_value=relu_max_value
    )
    for i, (filters, stride) in enumerate(_MOBILENET_V1_BLOCKS, start=1):
        x = _depthwise_bn_relu(x, stride, weight_decay, f"block{i}", relu_max_value)
        x = conv_bn_relu(
            x, scaled(filters, width), 1, 1, weight_decay, f"block{i}_pw", max_value=relu_max_value
        )
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, logits(x, num_classes, weight_decay), name="mobilenet_v1")


def _inverted_residual(x, expansion: int, filters: int, stride: int, wd: float, name: str, cap):
    """[expand 1x1-BN-ReLU] -> depthwise 3x3-BN-ReLU -> project 1x1-BN (linear) [+ input]."""
    channels = int(x.shape[-1])
    y = x
    if expansion != 1:
        y = conv_bn_relu(y, channels * expansion, 1, 1, wd, f"{name}_expand", max_value=cap)
    y = _depthwise_bn_relu(y, stride, wd, name, cap)
    y = conv_bn_relu(y, filters, 1, 1, wd, f"{name}_project", relu_on=False)
    if stride == 1 and channels == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def mobilenet_v2(
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    width: float = 1.0,
    weight_decay: float = 0.0,
    dropout: float = 0.0,
    relu_max_value: float | None = None,
) -> keras.Model:
    """MobileNet v2 (Sandler et al. 2018): inverted residual blocks with linear bottlenecks.

    Stem conv3x3(32)-BN-ReLU; 17 inverted residual blocks (expand 1x1-BN-ReLU, depthwise
    3x3-BN-ReLU, project 1x1-BN, Add when the shape is kept); conv1x1(1280)-BN-ReLU; global
    average pool; optional Dropout; logits. ImageNet-sized inputs use the paper's strides
    (output stride 32, same layer and parameter counts as ``keras.applications.MobileNetV2``
    at alpha 1); small images use a stride-1 stem and a stride-1 second stage (output stride
    8, as in the usual CIFAR variant), so a 32x32 image ends at 4x4.

    Parameters
    ----------
    input_shape : sequence of int
        (height, width, channels).
    num_classes : int
        Number of logits.
    width : float
        Channel multiplier (alpha), applied to every layer including the last 1280.
    weight_decay : float
        L2 factor on every kernel (0 for none).
    dropout : float
        Dropout rate before the logits (0 for none).
    relu_max_value : float, optional
        6.0 gives the paper's ReLU6 (quantize_model keeps the cap); None gives plain ReLUs.

    Returns
    -------
    keras.Model
        A functional model named "mobilenet_v2" producing logits.

    Raises
    ------
    UnsupportedModelError
        For an invalid shape, class count, width or weight decay.

    Example
    -------
    >>> model = mobilenet_v2(input_shape=(32, 32, 3), num_classes=10, width=0.25)
    >>> model.get_layer("avg_pool").input_shape
    (None, 4, 4, 320)
    """
    check_common(input_shape, num_classes, width, weight_decay)
    imagenet = is_imagenet_sized(input_shape)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = conv_bn_relu(
        inputs, scaled(32, width), 3, 2 if imagenet else 1, weight_decay, "stem",
        max_value=relu_max_value,
    )  # fmt: skip
    block = 0
    for stage, (expansion, channels, repeats, stride) in enumerate(_MOBILENET_V2_STAGES):
        if not imagenet and stage == 1:
            stride = 1
        for i in range(repeats):
            x = _inverted_residual(
                x, expansion, scaled(channels, width), stride if i == 0 else 1, weight_decay,
                f"block{block}", relu_max_value,
            )  # fmt: skip
            block += 1
    x = conv_bn_relu(
        x, scaled(_MOBILENET_V2_LAST, width), 1, 1, weight_decay, "last",
        max_value=relu_max_value,
    )  # fmt: skip
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, logits(x, num_classes, weight_decay), name="mobilenet_v2")
