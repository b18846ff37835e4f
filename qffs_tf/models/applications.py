"""tf_keras.applications architectures, made ready for quantize_model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from qffs_tf._keras import check_tf_keras_model, keras
from qffs_tf.errors import UnsupportedModelError


def application_names() -> list[str]:
    """The model constructors ``tf_keras.applications`` offers (e.g. "MobileNetV2").

    Returns
    -------
    list of str
        Sorted constructor names.

    Example
    -------
    >>> "ResNet50" in application_names()
    True
    """
    return sorted(
        name
        for name in dir(keras.applications)
        if name[:1].isupper() and callable(getattr(keras.applications, name))
    )


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def _constructor(name_or_constructor) -> tuple[Callable[..., keras.Model], str]:
    if callable(name_or_constructor):
        return name_or_constructor, getattr(name_or_constructor, "__name__", "constructor")
    if isinstance(name_or_constructor, str):
        by_key = {_key(name): name for name in application_names()}
        name = by_key.get(_key(name_or_constructor))
        if name is not None:
            return getattr(keras.applications, name), name
    raise UnsupportedModelError(
        f"{name_or_constructor!r} is not a tf_keras.applications model: pass one of "
        f"{', '.join(application_names())} (as a name or as the constructor itself)."
    )


def from_keras_application(
    name_or_constructor: str | Callable[..., keras.Model],
    input_shape: Sequence[int],
    classes: int,
    check: bool = True,
    **kwargs,
) -> keras.Model:
    """A ``tf_keras.applications`` model with its default head, ready for ``quantize_model``.

    Calls the constructor with ``weights=None`` (random initialisation: train it, or pass
    ``weights=`` yourself), ``include_top=True``, ``input_shape`` and ``classes``; any other
    keyword argument (``alpha=0.35``, ``classifier_activation=None``, ...) is passed through.
    The head keeps its softmax unless you pass ``classifier_activation=None``: the QAT model
    then returns probabilities, so train it with ``from_logits=False`` (see
    ``qffs_tf.quantization.output_activations``). With ``check=True`` the model is checked
    as ``quantize_model`` will check it, so an architecture that cannot be exact (e.g.
    EfficientNet's swish) is refused here, before any training.

    Parameters
    ----------
    name_or_constructor : str or callable
        A constructor from ``tf_keras.applications`` (``keras.applications.MobileNetV2``) or
        its name, matched without case, "_" or "-" ("MobileNetV2", "mobilenet_v2").
    input_shape : sequence of int
        (height, width, channels). Each architecture has a minimum (32x32 for most,
        75x75 for InceptionV3, 71x71 for Xception): pad or resize smaller images.
    classes : int
        Number of classes of the head.
    check : bool
        Run ``qffs_tf.quantization.check_model`` on the result.
    **kwargs
        Passed to the constructor (they override ``weights`` and ``include_top`` too).

    Returns
    -------
    keras.Model
        The functional tf_keras model.

    Raises
    ------
    UnsupportedModelError
        For an unknown name, arguments the constructor refuses (e.g. an input below its
        minimum size), a Keras 3 constructor, or (with ``check``) a layer or activation that
        cannot be exact in a QFFS spiking network.

    Example
    -------
    >>> model = from_keras_application("MobileNetV2", (32, 32, 3), 10, alpha=0.35)
    >>> qat = qffs_tf.quantize_model(model, 2, calibration_data=x_train[:256])  # doctest: +SKIP
    """
    constructor, name = _constructor(name_or_constructor)
    if len(tuple(input_shape)) != 3:
        raise UnsupportedModelError(
            f"input_shape={tuple(input_shape)} is not (height, width, channels): pass e.g. "
            "(32, 32, 3)."
        )
    arguments = {"weights": None, "include_top": True, **kwargs}
    call = f"tf_keras.applications.{name}(input_shape={tuple(input_shape)}, classes={classes})"
    try:
        model = constructor(input_shape=tuple(int(d) for d in input_shape), classes=int(classes),
                            **arguments)  # fmt: skip
    except (ValueError, TypeError) as error:
        reason = " ".join(str(error).split())  # one line: Keras messages span several
        raise UnsupportedModelError(
            f"{call} refused the arguments: {reason} Change input_shape (pad or resize the "
            "images), classes or the keyword arguments accordingly."
        ) from error
    check_tf_keras_model(model, f"model built by {name}")
    if check:
        from qffs_tf.quantization import check_model

        check_model(model)
    return model
