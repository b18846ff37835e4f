"""ResNets: v1 post-activation, basic and bottleneck blocks, ImageNet and CIFAR families."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from qffs_tf._keras import keras
from qffs_tf.errors import UnsupportedModelError
from qffs_tf.models._common import (
    check_common,
    conv_bn_relu,
    is_imagenet_sized,
    layers,
    logits,
    relu,
    scaled,
)

# depth -> (block kind, blocks per stage) for ImageNet-style ResNets (64-128-256-512 channels).
_RESNET_CONFIGS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
# CIFAR ResNets (He et al. 2016, section 4.2): depth = 6n + 2, three stages of n basic blocks.
_CIFAR_RESNET_DEPTHS = (20, 32, 44, 56, 110)


def _basic_block(x, filters: int, stride: int, wd: float, name: str):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, Add, ReLU (projection when the shape changes)."""
    shortcut = x
    y = conv_bn_relu(x, filters, 3, stride, wd, f"{name}_1")
    y = conv_bn_relu(y, filters, 3, 1, wd, f"{name}_2", relu_on=False)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv_bn_relu(x, filters, 1, stride, wd, f"{name}_shortcut", relu_on=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return relu(f"{name}_out_relu")(y)


def _bottleneck_block(x, filters: int, stride: int, wd: float, name: str):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN + shortcut, Add, ReLU.

    The stride sits on the 3x3 conv (ResNet v1.5, as in torchvision).
    """
    out = 4 * filters
    shortcut = x
    y = conv_bn_relu(x, filters, 1, 1, wd, f"{name}_1")
    y = conv_bn_relu(y, filters, 3, stride, wd, f"{name}_2")
    y = conv_bn_relu(y, out, 1, 1, wd, f"{name}_3", relu_on=False)
    if stride != 1 or x.shape[-1] != out:
        shortcut = conv_bn_relu(x, out, 1, stride, wd, f"{name}_shortcut", relu_on=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return relu(f"{name}_out_relu")(y)


def resnet(
    depth: int = 18,
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    width: float = 1.0,
    weight_decay: float = 0.0,
) -> keras.Model:
    """ResNet (v1, post-activation): 18/34 basic blocks, 50/101/152 bottleneck blocks,
    or the CIFAR family 20/32/44/56/110 (three stages of basic blocks, 16-32-64 channels).

    Small images get a 3x3 stem conv without pooling; images with a shorter side >= 64 get
    the ImageNet stem (7x7/2 conv-BN-ReLU, 3x3/2 max-pool with explicit zero padding, which
    is exact because its input is a ReLU output). Blocks end with Add then ReLU; the shortcut
    is a 1x1 conv + BN projection when the shape changes. Head: global average pool, logits.
    """
    if depth not in _RESNET_CONFIGS and depth not in _CIFAR_RESNET_DEPTHS:
        raise UnsupportedModelError(
            f"ResNet depth {depth} is not available: use one of "
            f"{sorted(_RESNET_CONFIGS)} (ImageNet family) or {list(_CIFAR_RESNET_DEPTHS)} "
            "(CIFAR family)."
        )
    check_common(input_shape, num_classes, width, weight_decay)
    if depth in _CIFAR_RESNET_DEPTHS:
        kind, stages, base = "basic", ((depth - 2) // 6,) * 3, (16, 32, 64)
    else:
        kind, stages = _RESNET_CONFIGS[depth]
        base = (64, 128, 256, 512)
    block_fn: Callable = _basic_block if kind == "basic" else _bottleneck_block

    inputs = keras.Input(shape=tuple(input_shape), name="input")
    stem_filters = scaled(base[0], width)
    if is_imagenet_sized(input_shape):
        x = conv_bn_relu(inputs, stem_filters, 7, 2, weight_decay, "stem")
        x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="valid", name="stem_pool")(x)
    else:
        x = conv_bn_relu(inputs, stem_filters, 3, 1, weight_decay, "stem")
    for s, (blocks, filters) in enumerate(zip(stages, base, strict=True), start=1):
        for b in range(1, blocks + 1):
            stride = 2 if (s > 1 and b == 1) else 1
            x = block_fn(x, scaled(filters, width), stride, weight_decay, f"stage{s}_block{b}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, logits(x, num_classes, weight_decay), name=f"resnet{depth}")
