"""Model zoo: plain float tf_keras functional CNNs with ordinary ReLUs, ready for QFFS.

Every builder returns a functional model made only of the layers the QFFS conversion carries
(Conv2D, DepthwiseConv2D, Dense, BatchNormalization, ReLU, MaxPooling2D, AveragePooling2D,
GlobalAveragePooling2D, Flatten, Add, ZeroPadding2D, Dropout, InputLayer). Each activation is a
standalone ``ReLU`` layer after BatchNormalization, so the QFFS tooling can swap it for a
quantized activation; the last layer is a Dense that produces logits (no softmax).

``width`` multiplies every channel / unit count (rounded, at least 1), so tiny versions build
fast in tests. Inputs whose shorter side is at least 64 pixels get the ImageNet layout (strided
stems, 4096-unit VGG classifier); smaller inputs (MNIST, CIFAR) get the small-image layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from qffs_tf._keras import keras
from qffs_tf.errors import UnsupportedModelError

__all__ = ["NAMES", "build", "small_cnn", "vgg", "resnet", "mobilenet_v1"]

layers = keras.layers

# BatchNormalization as in PyTorch (momentum 0.1 there = 0.9 here, eps 1e-5): the Keras default
# 0.99 leaves the moving statistics far from the batch statistics after a short training (a
# few hundred steps), and QFFS folds BN into the weights with the moving statistics.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Inputs with a shorter side of at least this many pixels use the ImageNet layout.
IMAGENET_MIN_SIDE = 64

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

# MobileNet v1 depthwise-separable blocks: (pointwise filters, depthwise stride).
_MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


# ----------------------------------------------------------------------------- helpers


def _scaled(count: int, width: float) -> int:
    """Channel / unit count times `width`, rounded, at least 1."""
    return max(1, int(round(count * width)))


def _l2(weight_decay: float):
    """L2 kernel regularizer, or None when weight decay is off (keeps configs clean)."""
    return keras.regularizers.L2(weight_decay) if weight_decay > 0 else None


def _check_common(input_shape: Sequence[int], num_classes: int, width: float, wd: float) -> None:
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


def _is_imagenet_sized(input_shape: Sequence[int]) -> bool:
    return min(int(input_shape[0]), int(input_shape[1])) >= IMAGENET_MIN_SIDE


def _batch_norm(name: str):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _conv_bn_relu(x, filters: int, kernel: int, stride: int, wd: float, name: str, relu=True):
    """Conv2D (no bias, 'same') -> BatchNormalization -> optional ReLU, named name_conv/bn/relu."""
    x = layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_regularizer=_l2(wd),
        name=f"{name}_conv",
    )(x)
    x = _batch_norm(name=f"{name}_bn")(x)
    if relu:
        x = layers.ReLU(name=f"{name}_relu")(x)
    return x


def _logits(x, num_classes: int, wd: float):
    """Final Dense with bias and no activation: the logits, which QFFS never quantizes."""
    return layers.Dense(num_classes, kernel_regularizer=_l2(wd), name="logits")(x)


def _check_pooling_fits(input_shape: Sequence[int], halvings: int, model: str) -> None:
    """Raise if `halvings` 2x2 'valid' max-pools would shrink the input to nothing."""
    side = min(int(input_shape[0]), int(input_shape[1]))
    if side < 2**halvings:
        raise UnsupportedModelError(
            f"{model} halves the image {halvings} times, so it needs inputs of at least "
            f"{2**halvings}x{2**halvings} pixels; got {tuple(input_shape)}. Resize the images "
            "(e.g. tf.image.resize) or pick a shallower model such as small_cnn."
        )


# ----------------------------------------------------------------------------- builders


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
    _check_common(input_shape, num_classes, width, weight_decay)
    _check_pooling_fits(input_shape, 2, "small_cnn")
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = inputs
    for i, filters in enumerate((32, 64), start=1):
        x = _conv_bn_relu(x, _scaled(filters, width), 3, 1, weight_decay, f"block{i}")
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(
        _scaled(128, width), use_bias=False, kernel_regularizer=_l2(weight_decay), name="fc1"
    )(x)
    x = _batch_norm(name="fc1_bn")(x)
    x = layers.ReLU(name="fc1_relu")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="fc1_dropout")(x)
    return keras.Model(inputs, _logits(x, num_classes, weight_decay), name="small_cnn")


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
    _check_common(input_shape, num_classes, width, weight_decay)
    _check_pooling_fits(input_shape, 5, f"VGG-{depth}")
    if classifier_units is None:
        classifier_units = (4096, 4096) if _is_imagenet_sized(input_shape) else (512,)
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
        x = _conv_bn_relu(x, _scaled(item, width), 3, 1, weight_decay, f"block{block}_{conv}")
        conv += 1
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(classifier_units, start=1):
        x = layers.Dense(
            _scaled(units, width),
            use_bias=False,
            kernel_regularizer=_l2(weight_decay),
            name=f"fc{i}",
        )(x)
        x = _batch_norm(name=f"fc{i}_bn")(x)
        x = layers.ReLU(name=f"fc{i}_relu")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
    return keras.Model(inputs, _logits(x, num_classes, weight_decay), name=f"vgg{depth}")


def _basic_block(x, filters: int, stride: int, wd: float, name: str):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, Add, ReLU (projection when the shape changes)."""
    shortcut = x
    y = _conv_bn_relu(x, filters, 3, stride, wd, f"{name}_1")
    y = _conv_bn_relu(y, filters, 3, 1, wd, f"{name}_2", relu=False)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn_relu(x, filters, 1, stride, wd, f"{name}_shortcut", relu=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out_relu")(y)


def _bottleneck_block(x, filters: int, stride: int, wd: float, name: str):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN + shortcut, Add, ReLU.

    The stride sits on the 3x3 conv (ResNet v1.5, as in torchvision).
    """
    out = 4 * filters
    shortcut = x
    y = _conv_bn_relu(x, filters, 1, 1, wd, f"{name}_1")
    y = _conv_bn_relu(y, filters, 3, stride, wd, f"{name}_2")
    y = _conv_bn_relu(y, out, 1, 1, wd, f"{name}_3", relu=False)
    if stride != 1 or x.shape[-1] != out:
        shortcut = _conv_bn_relu(x, out, 1, stride, wd, f"{name}_shortcut", relu=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out_relu")(y)


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
    _check_common(input_shape, num_classes, width, weight_decay)
    if depth in _CIFAR_RESNET_DEPTHS:
        kind, stages, base = "basic", ((depth - 2) // 6,) * 3, (16, 32, 64)
    else:
        kind, stages = _RESNET_CONFIGS[depth]
        base = (64, 128, 256, 512)
    block_fn: Callable = _basic_block if kind == "basic" else _bottleneck_block

    inputs = keras.Input(shape=tuple(input_shape), name="input")
    stem_filters = _scaled(base[0], width)
    if _is_imagenet_sized(input_shape):
        x = _conv_bn_relu(inputs, stem_filters, 7, 2, weight_decay, "stem")
        x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="valid", name="stem_pool")(x)
    else:
        x = _conv_bn_relu(inputs, stem_filters, 3, 1, weight_decay, "stem")
    for s, (blocks, filters) in enumerate(zip(stages, base, strict=True), start=1):
        for b in range(1, blocks + 1):
            stride = 2 if (s > 1 and b == 1) else 1
            x = block_fn(x, _scaled(filters, width), stride, weight_decay, f"stage{s}_block{b}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, _logits(x, num_classes, weight_decay), name=f"resnet{depth}")


def mobilenet_v1(
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    width: float = 1.0,
    weight_decay: float = 0.0,
    dropout: float = 0.0,
) -> keras.Model:
    """MobileNet v1 (Howard et al. 2017) with plain ReLU instead of ReLU6.

    Stem conv3x3(32)-BN-ReLU, 13 depthwise-separable blocks
    (DepthwiseConv2D-BN-ReLU-Conv1x1-BN-ReLU), global average pool, optional Dropout, logits.
    ImageNet-sized inputs use the stride-2 stem (output stride 32); small images use a
    stride-1 stem so a 32x32 image still ends at 2x2.
    """
    _check_common(input_shape, num_classes, width, weight_decay)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    stem_stride = 2 if _is_imagenet_sized(input_shape) else 1
    x = _conv_bn_relu(inputs, _scaled(32, width), 3, stem_stride, weight_decay, "stem")
    for i, (filters, stride) in enumerate(_MOBILENET_V1_BLOCKS, start=1):
        x = layers.DepthwiseConv2D(
            3,
            strides=stride,
            padding="same",
            use_bias=False,
            depthwise_regularizer=_l2(weight_decay),
            name=f"block{i}_dw_conv",
        )(x)
        x = _batch_norm(name=f"block{i}_dw_bn")(x)
        x = layers.ReLU(name=f"block{i}_dw_relu")(x)
        x = _conv_bn_relu(x, _scaled(filters, width), 1, 1, weight_decay, f"block{i}_pw")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, _logits(x, num_classes, weight_decay), name="mobilenet_v1")


# ----------------------------------------------------------------------------- registry

_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "small_cnn": small_cnn,
    **{f"vgg{d}": partial(vgg, depth=d) for d in sorted(_VGG_CONFIGS)},
    **{
        f"resnet{d}": partial(resnet, depth=d)
        for d in sorted((*_RESNET_CONFIGS, *_CIFAR_RESNET_DEPTHS))
    },
    "mobilenet_v1": mobilenet_v1,
}

NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build(name: str, **kwargs) -> keras.Model:
    """Build a model by name (see NAMES); keyword arguments go to the builder.

    Example: ``build("resnet20", input_shape=(32, 32, 3), num_classes=10, width=0.5)``.
    """
    key = name.strip().lower().replace("-", "").replace("mobilenetv1", "mobilenet_v1")
    if key not in _BUILDERS:
        raise UnsupportedModelError(
            f"Unknown model name {name!r}: use one of {', '.join(NAMES)} "
            "(or build your own tf_keras functional model)."
        )
    if "depth" in kwargs:
        raise UnsupportedModelError(
            f"build({name!r}) takes no depth: the name fixes it (e.g. 'resnet34'); drop "
            f"depth={kwargs['depth']} or call vgg()/resnet() directly."
        )
    return _BUILDERS[key](**kwargs)
