"""Model zoo: plain float tf_keras functional CNNs with ordinary ReLUs, ready for QFFS.

Every builder returns a functional model made only of layers quantize_model and the converter
carry. Each activation is a standalone ``ReLU`` layer (after BatchNormalization, or before a
convolution in DenseNet's pre-activation units), so the QFFS tooling can swap it for a
quantized activation; the last layer is a Dense that produces logits (no softmax).

``width`` multiplies every channel / unit count (rounded, at least 1), so tiny versions build
fast in tests. Inputs whose shorter side is at least 64 pixels get the ImageNet layout (strided
stems, 4096-unit VGG classifier); smaller inputs (MNIST, CIFAR) get the small-image layout.
``from_keras_application`` takes the ``tf_keras.applications`` architectures as they come.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from qffs_tf._keras import keras
from qffs_tf.errors import UnsupportedModelError
from qffs_tf.models._common import BN_EPSILON, BN_MOMENTUM, IMAGENET_MIN_SIDE
from qffs_tf.models.applications import application_names, from_keras_application
from qffs_tf.models.densenet import densenet
from qffs_tf.models.mobilenet import mobilenet_v1, mobilenet_v2
from qffs_tf.models.plain import _VGG_CONFIGS, small_cnn, vgg
from qffs_tf.models.resnet import _CIFAR_RESNET_DEPTHS, _RESNET_CONFIGS, resnet

__all__ = [
    "NAMES",
    "BN_EPSILON",
    "BN_MOMENTUM",
    "IMAGENET_MIN_SIDE",
    "build",
    "small_cnn",
    "vgg",
    "resnet",
    "mobilenet_v1",
    "mobilenet_v2",
    "densenet",
    "from_keras_application",
    "application_names",
]

_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "small_cnn": small_cnn,
    **{f"vgg{d}": partial(vgg, depth=d) for d in sorted(_VGG_CONFIGS)},
    **{
        f"resnet{d}": partial(resnet, depth=d)
        for d in sorted((*_RESNET_CONFIGS, *_CIFAR_RESNET_DEPTHS))
    },
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "densenet": densenet,
    "densenet121": partial(densenet, blocks=(6, 12, 24, 16), growth_rate=32, name="densenet121"),
}

NAMES: tuple[str, ...] = tuple(_BUILDERS)


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def build(name: str, **kwargs) -> keras.Model:
    """Build a zoo model by name; keyword arguments go to its builder.

    Parameters
    ----------
    name : str
        One of ``NAMES``, matched without case, "-" or "_" ("VGG-16", "MobileNetV2").
    **kwargs
        Builder arguments: ``input_shape``, ``num_classes``, ``width``, ``weight_decay`` and
        the builder's own (``dropout``, ``relu_max_value``, ``growth_rate``, ...).

    Returns
    -------
    keras.Model
        A float functional model producing logits.

    Raises
    ------
    UnsupportedModelError
        For an unknown name, a ``depth`` argument (the name fixes it) or invalid builder
        arguments.

    Example
    -------
    >>> model = build("resnet20", input_shape=(32, 32, 3), num_classes=10, width=0.5)
    >>> model.name
    'resnet20'
    """
    by_key = {_key(known): known for known in NAMES}
    key = by_key.get(_key(name))
    if key is None:
        raise UnsupportedModelError(
            f"Unknown model name {name!r}: use one of {', '.join(NAMES)} "
            "(or from_keras_application, or build your own tf_keras functional model)."
        )
    if "depth" in kwargs:
        raise UnsupportedModelError(
            f"build({name!r}) takes no depth: the name fixes it (e.g. 'resnet34'); drop "
            f"depth={kwargs['depth']} or call vgg()/resnet() directly."
        )
    return _BUILDERS[key](**kwargs)
