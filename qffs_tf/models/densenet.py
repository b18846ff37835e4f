"""DenseNet (Huang et al. 2017): densely connected blocks, BN-ReLU-conv pre-activation."""

from __future__ import annotations

from collections.abc import Sequence

from qffs_tf._keras import keras
from qffs_tf.errors import UnsupportedModelError
from qffs_tf.models._common import (
    batch_norm,
    check_common,
    check_pooling_fits,
    is_imagenet_sized,
    l2,
    layers,
    logits,
    relu,
    scaled,
)

# Bottleneck width of a dense layer (the "B" of DenseNet-BC): 4 x growth rate.
_BOTTLENECK = 4


def _bn_relu_conv(x, filters: int, kernel: int, wd: float, name: str):
    """Pre-activation unit: BatchNormalization -> ReLU -> Conv2D (no bias, 'same')."""
    x = batch_norm(name=f"{name}_bn")(x)
    x = relu(f"{name}_relu")(x)
    return layers.Conv2D(
        filters, kernel, padding="same", use_bias=False, kernel_regularizer=l2(wd),
        name=f"{name}_conv",
    )(x)  # fmt: skip


def _dense_block(x, layers_count: int, growth: int, wd: float, name: str):
    for i in range(1, layers_count + 1):
        y = _bn_relu_conv(x, _BOTTLENECK * growth, 1, wd, f"{name}_layer{i}_1")
        y = _bn_relu_conv(y, growth, 3, wd, f"{name}_layer{i}_2")
        x = layers.Concatenate(name=f"{name}_layer{i}_concat")([x, y])
    return x


def _transition(x, compression: float, wd: float, name: str):
    channels = max(1, int(int(x.shape[-1]) * compression))
    x = _bn_relu_conv(x, channels, 1, wd, name)
    return layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def densenet(
    blocks: Sequence[int] = (6, 6, 6),
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    growth_rate: int = 12,
    width: float = 1.0,
    compression: float = 0.5,
    weight_decay: float = 0.0,
    dropout: float = 0.0,
    name: str = "densenet",
) -> keras.Model:
    """DenseNet-BC: dense blocks of bottleneck layers joined by compressing transitions.

    A dense layer is BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k) concatenated to its input (k =
    growth rate); a transition is BN-ReLU-conv1x1(compression x channels)-avgpool2. The head
    is BN-ReLU, global average pool, optional Dropout, logits. Small images get a conv3x3(2k)
    stem (the CIFAR DenseNet-BC); images with a shorter side >= 64 get the ImageNet stem
    (conv7x7/2(2k)-BN-ReLU, zero padding, maxpool3/2). The defaults are DenseNet-BC-40
    (k = 12) for 32x32 images; ``blocks=(16, 16, 16)`` is DenseNet-BC-100, and
    ``build("densenet121")`` is ``blocks=(6, 12, 24, 16), growth_rate=32`` (same parameter
    count as ``keras.applications.DenseNet121`` on 224x224 images).

    Every BatchNormalization here follows a Concatenate or a convolution and feeds a ReLU
    directly (pre-activation): quantize_model keeps it, the converter keeps it as a
    per-channel affine map of the charges or folds it forward.

    Parameters
    ----------
    blocks : sequence of int
        Dense layers per dense block (one transition between consecutive blocks).
    input_shape : sequence of int
        (height, width, channels).
    num_classes : int
        Number of logits.
    growth_rate : int
        Channels each dense layer adds (k), before ``width``.
    width : float
        Multiplier of the growth rate (and so of every layer), rounded, at least 1.
    compression : float
        Channel factor of each transition, in (0, 1].
    weight_decay : float
        L2 factor on every kernel (0 for none).
    dropout : float
        Dropout rate before the logits (0 for none).
    name : str
        The model's name.

    Returns
    -------
    keras.Model
        A functional model producing logits.

    Raises
    ------
    UnsupportedModelError
        For an invalid shape, class count, width, weight decay, block list, growth rate or
        compression, or an image too small for the transitions.

    Example
    -------
    >>> model = densenet(input_shape=(28, 28, 1), num_classes=10, width=0.5)
    >>> model.output_shape
    (None, 10)
    """
    check_common(input_shape, num_classes, width, weight_decay)
    blocks = tuple(int(b) for b in blocks)
    if not blocks or min(blocks) < 1:
        raise UnsupportedModelError(
            f"blocks={blocks} must list at least one dense block of at least one layer, "
            "e.g. (6, 6, 6)."
        )
    if int(growth_rate) < 1:
        raise UnsupportedModelError(f"growth_rate={growth_rate} must be at least 1 (e.g. 12).")
    if not 0 < compression <= 1:
        raise UnsupportedModelError(f"compression={compression} must be in (0, 1] (e.g. 0.5).")
    imagenet = is_imagenet_sized(input_shape)
    check_pooling_fits(input_shape, len(blocks) - 1 + (2 if imagenet else 0), "This DenseNet")
    growth = scaled(growth_rate, width)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    conv_kwargs = dict(use_bias=False, kernel_regularizer=l2(weight_decay), name="stem_conv")
    if imagenet:
        x = layers.Conv2D(2 * growth, 7, strides=2, padding="same", **conv_kwargs)(inputs)
        x = batch_norm(name="stem_bn")(x)
        x = relu("stem_relu")(x)
        x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    else:
        x = layers.Conv2D(2 * growth, 3, padding="same", **conv_kwargs)(inputs)
    for i, count in enumerate(blocks, start=1):
        x = _dense_block(x, count, growth, weight_decay, f"block{i}")
        if i < len(blocks):
            x = _transition(x, compression, weight_decay, f"transition{i}")
    x = batch_norm(name="final_bn")(x)
    x = relu("final_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, logits(x, num_classes, weight_decay), name=name)
