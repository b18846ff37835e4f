"""`quantize_model`: a float tf_keras CNN with ReLUs -> a QFFS quantization-aware model.

Every ReLU in the middle of the network (a ReLU or ReLU(max_value=m) layer, Activation('relu')
or 'relu6', tf.nn.relu / tf.nn.relu6, or activation='relu' / 'relu6' on a linear layer)
becomes the QFFS b-bit activation, applied through real tfmot QAT: the model is read as a flat
graph (nested models inlined), checked against the support registry before anything is built,
rebuilt with `quantize_annotate_layer` on the layers to quantize, then `quantize_apply` with a
QFFS scheme whose layout transform is the identity (BatchNormalization stays unfolded during
training; the converter folds it exactly). The output layer keeps its activation (logits, or
probabilities for a softmax head).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import tensorflow_model_optimization as tfmot

from qffs_tf._keras import check_tf_keras_model, keras, tf
from qffs_tf.errors import QuantizationError, UnsupportedModelError
from qffs_tf.quantization.configs import (
    QFFSLinearConfig,
    QFFSOutputConfig,
    activation_spec,
    custom_objects,
)
from qffs_tf.quantization.graph import LayerCall, flatten_graph, rebuild
from qffs_tf.quantization.quantizer import QuantReLU, check_bits, check_init
from qffs_tf.quantization.support import check_graph, quantized_activation, rule_for

__all__ = [
    "MAX_CALIBRATION_EXAMPLES",
    "QFFSQuantizeScheme",
    "quantize_model",
    "calibrate",
    "calibration_images",
    "quantized_activations",
    "output_activations",
]

MAX_CALIBRATION_EXAMPLES = 512


class _IdentityLayoutTransform(tfmot.quantization.keras.QuantizeLayoutTransform):
    """Keeps the model graph as it is: QFFS folds BatchNormalization only at conversion."""

    def apply(self, model, layer_quantize_map):
        return model, layer_quantize_map


class _ExplicitOnlyRegistry(tfmot.quantization.keras.QuantizeRegistry):
    """Quantizes only what quantize_model annotated explicitly; nothing by default."""

    def supports(self, layer):
        return False

    def get_quantize_config(self, layer):
        return None


class QFFSQuantizeScheme(tfmot.quantization.keras.QuantizeScheme):
    """The tfmot scheme behind quantize_model: identity layout, explicit annotations only.

    Example
    -------
    >>> isinstance(QFFSQuantizeScheme().get_quantize_registry().supports(None), bool)
    True
    """

    def get_layout_transformer(self):
        return _IdentityLayoutTransform()

    def get_quantize_registry(self):
        return _ExplicitOnlyRegistry()


def calibration_images(calibration_data, model: keras.Model | None = None):
    """Up to MAX_CALIBRATION_EXAMPLES finite images from `calibration_data`, checked up front.

    Parameters
    ----------
    calibration_data : array-like, tf.Tensor or tf.data.Dataset
        Images, or a dataset of images or of (images, labels) batches.
    model : keras.Model, optional
        When given (single input), the images' shape must fit its input.

    Returns
    -------
    np.ndarray or tf.Tensor
        The first images (at most 512).

    Raises
    ------
    QuantizationError
        If the data is empty, not numeric, contains NaN or Inf, or does not fit the model's
        input shape.

    Example
    -------
    >>> calibration_images(np.zeros((1000, 4), np.float32)).shape
    (512, 4)
    """
    if isinstance(calibration_data, tf.data.Dataset):
        images, count = [], 0
        for element in calibration_data:
            batch = element[0] if isinstance(element, tuple | list) else element
            images.append(batch)
            count += int(batch.shape[0])
            if count >= MAX_CALIBRATION_EXAMPLES:
                break
        if not images:
            raise QuantizationError(
                "calibration_data is an empty dataset; pass a few batches of training images."
            )
        calibration_data = tf.concat(images, axis=0)
    elif isinstance(calibration_data, Iterable) and not hasattr(calibration_data, "shape"):
        calibration_data = np.asarray(calibration_data)
    images = calibration_data[:MAX_CALIBRATION_EXAMPLES]
    try:
        values = np.asarray(images, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise QuantizationError(
            f"calibration_data must be numeric images (an array, tensor or tf.data.Dataset); "
            f"got {type(calibration_data).__name__}: {error}"
        ) from error
    if values.ndim == 0 or values.shape[0] == 0:
        raise QuantizationError(
            "calibration_data is empty; pass some training images (e.g. x_train[:512]) or "
            "leave it out to initialise the step sizes from the first training batch."
        )
    if not np.all(np.isfinite(values)):
        raise QuantizationError("calibration_data contains NaN or Inf values; pass finite images.")
    if model is not None and len(model.inputs) == 1:
        expected = tuple(model.inputs[0].shape[1:])
        got = values.shape[1:]
        fits = len(got) == len(expected) and all(
            e is None or e == g for e, g in zip(expected, got, strict=True)
        )
        if not fits:
            raise QuantizationError(
                f"calibration_data has images of shape {got}, the model expects "
                f"{tuple(None if e is None else int(e) for e in expected)}; pass images shaped "
                "like the model's input."
            )
    return images


def calibrate(qat_model: keras.Model, calibration_data) -> None:
    """Initialise every uninitialised QFFS step size from one forward pass over data.

    Parameters
    ----------
    qat_model : keras.Model
        A model returned by ``quantize_model``.
    calibration_data : array-like, tf.Tensor or tf.data.Dataset
        As for ``calibration_images``.

    Raises
    ------
    QuantizationError
        If the data is unusable (see ``calibration_images``) or the model produces NaN/Inf.

    Example
    -------
    >>> calibrate(qat, x_train[:256])  # doctest: +SKIP
    """
    images = calibration_images(calibration_data, qat_model)
    outputs = qat_model(images, training=False)
    if not all(np.all(np.isfinite(np.asarray(o))) for o in tf.nest.flatten(outputs)):
        raise QuantizationError(
            "The model produced NaN or Inf on calibration_data; check the model's weights."
        )


def _fresh(layer: keras.layers.Layer, name: str, **overrides) -> keras.layers.Layer:
    config = {**layer.get_config(), "name": name, **overrides}
    return type(layer).from_config(config)


def _layer_factory(graph, bits: int, wbits: int | None, init: str):
    heads = {id(call) for call in graph.output_calls()}
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def make_layer(call: LayerCall) -> keras.layers.Layer:
        layer = call.layer
        use = quantized_activation(call, head=id(call) in heads)
        role = rule_for(layer).role if rule_for(layer) is not None else "activation"
        if role == "linear" and (use is not None or wbits is not None):
            if use is None:
                return annotate(_fresh(layer, call.name), QFFSLinearConfig(None, wbits, init))
            # tfmot wraps only a few activation names; the capped quantizer makes the fused
            # relu6's clip redundant (its top level is at most 6), so relu carries it exactly.
            config = QFFSLinearConfig(bits, wbits, init, use.max_value)
            return annotate(_fresh(layer, call.name, activation="relu"), config)
        if use is not None:
            if type(layer).__name__ == "TFOpLambda":
                layer = keras.layers.ReLU(max_value=use.max_value, name=call.name)
            else:
                layer = _fresh(layer, call.name)
            return annotate(layer, QFFSOutputConfig(bits, init, use.max_value))
        return _fresh(layer, call.name)

    return make_layer


def quantize_model(
    model: keras.Model,
    activation_bits: int = 2,
    weight_bits: int | None = None,
    calibration_data=None,
    init: str = "lsq",
) -> keras.Model:
    """Return the QFFS quantization-aware (tfmot QAT) version of a float tf_keras model.

    Every ReLU in the middle of the network becomes an ``activation_bits``-bit QFFS activation
    with a learned step size; a ReLU6 / ``ReLU(max_value=m)`` keeps its cap (the effective step
    is at most m / L). The output layer keeps its activation and is not quantized: logits, or
    probabilities for a softmax (or other monotone) head, so the QAT model returns what the
    float model returns. Nested Sequential/functional models are inlined. Everything that
    cannot be exact is refused here, before anything is built or trained.

    Parameters
    ----------
    model : keras.Model
        A built tf_keras Sequential or functional model (e.g. from ``qffs_tf.models`` or
        ``qffs_tf.models.from_keras_application``).
    activation_bits : int
        Bits b of every QFFS activation, 1 to 8 (L = 2^b - 1 levels).
    weight_bits : int, optional
        2 to 8: adds tfmot's symmetric weight fake-quantization to every kernel (8 for int8
        edge export); None keeps float kernels (the paper's setting).
    calibration_data : array-like, tf.Tensor or tf.data.Dataset, optional
        Images (or (images, labels) batches); the step sizes initialise from one forward pass
        over up to 512 of them. Without it they initialise from the first batch the model sees.
    init : str
        Step-size initialisation: "lsq" (2 mean|x| / sqrt(L)) or "percentile".

    Returns
    -------
    keras.Model
        The QAT model (functional, not compiled). Layer names are the float model's, with
        tfmot's "quant_" prefix on wrapped layers.

    Raises
    ------
    UnsupportedModelError
        For a Keras 3, subclassed or unbuilt model, a model without any ReLU, or any layer or
        activation that cannot be exact (named, with why and the closest alternative).
    QuantizationError
        For invalid bits, ``init`` or calibration data (empty, NaN/Inf, wrong shape).

    Example
    -------
    >>> model = qffs_tf.models.build("small_cnn", width=0.25)
    >>> qat = quantize_model(model, activation_bits=2, calibration_data=x_train[:512])
    >>> qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    """
    check_tf_keras_model(model)
    bits = check_bits(activation_bits, "activation_bits")
    wbits = None if weight_bits is None else check_bits(weight_bits, "weight_bits", minimum=2)
    check_init(init)
    if not model.built:
        raise UnsupportedModelError("The model is not built; give it an Input or call build().")
    images = None if calibration_data is None else calibration_images(calibration_data, model)
    graph = flatten_graph(model)
    check_graph(graph)
    heads = {id(call) for call in graph.output_calls()}
    relus = [call for call in graph.calls if quantized_activation(call, id(call) in heads)]
    already = [call for call in graph.calls if isinstance(call.layer, QuantReLU)]
    if not relus and not already:
        raise UnsupportedModelError(
            "The model has no ReLU to quantize (outside the output layer). QFFS quantizes ReLU "
            "activations: use ReLU layers, Activation('relu') or activation='relu' (or 'relu6') "
            "on Conv2D/DepthwiseConv2D/SeparableConv2D/Conv2DTranspose/Dense."
        )
    with tfmot.quantization.keras.quantize_scope(custom_objects()):
        annotated = rebuild(graph, _layer_factory(graph, bits, wbits, init))
        if not relus and wbits is None:
            qat_model = annotated
        else:
            qat_model = tfmot.quantization.keras.quantize_apply(
                annotated, scheme=QFFSQuantizeScheme()
            )
    if images is not None:
        calibrate(qat_model, images)
    return qat_model


def quantized_activations(model: keras.Model) -> dict[str, object]:
    """Layer name -> ActivationSpec for every QFFS activation in `model` (in layer order).

    Parameters
    ----------
    model : keras.Model
        A QAT model (from ``quantize_model``) or a model with ``QuantReLU`` layers.

    Returns
    -------
    dict
        ``{layer name: ActivationSpec}``; each spec's ``step_size`` is the effective step.

    Example
    -------
    >>> {name: spec.bits for name, spec in quantized_activations(qat).items()}  # doctest: +SKIP
    {'quant_block1_relu': 2, ...}
    """
    specs = {}
    for layer in model.layers:
        spec = activation_spec(layer)
        if spec is not None:
            specs[layer.name] = spec
    return specs


def output_activations(model: keras.Model) -> dict[str, str]:
    """Output layer name -> the activation it applies ("linear" for logits, "softmax", ...).

    The converter applies this activation to the SNN's integrated logits; a training loop can
    use it to pick ``from_logits``.

    Parameters
    ----------
    model : keras.Model
        A float or QAT model.

    Returns
    -------
    dict
        One entry per model output, in output order.

    Example
    -------
    >>> output_activations(keras.applications.ResNet50(weights=None))  # doctest: +SKIP
    {'predictions': 'softmax'}
    """
    result = {}
    for tensor in model.outputs:
        layer = tensor._keras_history.layer
        inner = getattr(layer, "layer", layer)  # tfmot wrapper
        if type(inner) is keras.layers.Softmax:
            name = "softmax"
        elif type(inner) is keras.layers.ReLU:
            cap = inner.get_config().get("max_value")
            name = "relu" if cap is None else ("relu6" if float(cap) == 6.0 else "relu_capped")
        else:
            activation = getattr(inner, "activation", None)
            name = "linear" if activation is None else getattr(activation, "__name__", "custom")
        result[layer.name] = name
    return result
