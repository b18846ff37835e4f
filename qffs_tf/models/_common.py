"""Pieces every zoo builder shares: argument checks, BatchNormalization, conv-BN-ReLU, logits."""

from __future__ import annotations

from collections.abc import Sequence

from qffs_tf._keras import keras
from qffs_tf.errors import UnsupportedModelError

layers = keras.layers

# BatchNormalization as in PyTorch (momentum 0.1 there = 0.9 here, eps 1e-5): the Keras default
# 0.99 leaves the moving statistics far from the batch statistics after a short training (a
# few hundred steps), and QFFS folds BN into the weights with the moving statistics.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Inputs with a shorter side of at least this many pixels use the ImageNet layout.
IMAGENET_MIN_SIDE = 64


def scaled(count: int, width: float) -> int:
    """Channel / unit count times `width`, rounded, at least 1."""
    return max(1, int(round(count * width)))


def l2(weight_decay: float):
    """L2 kernel regularizer, or None when weight decay is off (keeps configs clean)."""
    return keras.regularizers.L2(weight_decay) if weight_decay > 0 else None


def check_common(input_shape: Sequence[int], num_classes: int, width: float, wd: float) -> None:
    """Reject arguments that would build a broken or meaningless model."""
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise UnsupportedModelError(
            f"input_shape={tuple(input_shape)} is not (height, width, channels) with positive "
            "sizes: pass e.g. (32, 32, 3)."
        )
    if int(num_classes) < 1:
        raise UnsupportedModelError(f"num_classes={num_classes} must be at least 1.")
    if not width > 0:
        raise UnsupportedModelError(f"width={width} must be > 0 (1.0 is the standard size).")
    if wd < 0:
        raise UnsupportedModelError(f"weight_decay={wd} must be >= 0 (0 turns it off).")


def is_imagenet_sized(input_shape: Sequence[int]) -> bool:
    return min(int(input_shape[0]), int(input_shape[1])) >= IMAGENET_MIN_SIDE


def batch_norm(name: str):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def relu(name: str, max_value: float | None = None):
    """A ReLU layer; ``max_value=6`` gives the ReLU6 of MobileNet (quantize_model keeps the cap)."""
    return layers.ReLU(max_value=max_value, name=name)


def conv_bn_relu(
    x, filters: int, kernel: int, stride: int, wd: float, name: str, relu_on=True, max_value=None
):
    """Conv2D (no bias, 'same') -> BatchNormalization -> optional ReLU, named name_conv/bn/relu."""
    x = layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_regularizer=l2(wd),
        name=f"{name}_conv",
    )(x)
    x = batch_norm(name=f"{name}_bn")(x)
    if relu_on:
        x = relu(f"{name}_relu", max_value)(x)
    return x


def logits(x, num_classes: int, wd: float):
    """Final Dense with bias and no activation: the logits, which QFFS never quantizes."""
    return layers.Dense(num_classes, kernel_regularizer=l2(wd), name="logits")(x)


def check_pooling_fits(input_shape: Sequence[int], halvings: int, model: str) -> None:
    """Raise if `halvings` 2x2 'valid' poolings would shrink the input to nothing."""
    side = min(int(input_shape[0]), int(input_shape[1]))
    if side < 2**halvings:
        raise UnsupportedModelError(
            f"{model} halves the image {halvings} times, so it needs inputs of at least "
            f"{2**halvings}x{2**halvings} pixels; got {tuple(input_shape)}. Resize the images "
            "(e.g. tf.image.resize) or pick a shallower model such as small_cnn."
        )
