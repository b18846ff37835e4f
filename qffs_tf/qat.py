"""`quantize_model`: turn a float tf_keras CNN with ReLUs into a QFFS quantization-aware model.

Every ReLU (a ReLU layer, `Activation('relu')`, or `activation='relu'` fused into Conv2D,
DepthwiseConv2D or Dense) becomes the QFFS b-bit activation, applied through real tfmot QAT:
`quantize_annotate_layer` with QFFS QuantizeConfigs, then `quantize_apply` with a QFFS scheme
whose layout transform is the identity (BatchNormalization stays unfolded during training; the
converter folds it exactly).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import tensorflow_model_optimization as tfmot

from qffs_tf._keras import check_tf_keras_model, keras, tf
from qffs_tf.errors import UnsupportedModelError
from qffs_tf.quantization import (
    INIT_METHODS,
    QFFSLinearConfig,
    QFFSOutputConfig,
    QuantReLU,
    activation_spec,
    check_bits,
    custom_objects,
)

LINEAR_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
PASSIVE_LAYERS = (
    keras.layers.InputLayer,
    keras.layers.BatchNormalization,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.Flatten,
    keras.layers.Add,
    keras.layers.ZeroPadding2D,
    keras.layers.Dropout,
)
ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.Activation, QuantReLU)
SUPPORTED_LAYERS = LINEAR_LAYERS + ACTIVATION_LAYERS + PASSIVE_LAYERS
SUPPORTED_NAMES = ", ".join(cls.__name__ for cls in SUPPORTED_LAYERS)
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
    """The tfmot scheme behind quantize_model."""

    def get_layout_transformer(self):
        return _IdentityLayoutTransform()

    def get_quantize_registry(self):
        return _ExplicitOnlyRegistry()


def _activation_name(activation) -> str:
    return getattr(activation, "__name__", type(activation).__name__)


def _is_plain_relu_layer(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, keras.layers.Activation):
        return _activation_name(layer.activation) == "relu"
    if type(layer) is keras.layers.ReLU:
        config = layer.get_config()
        return (
            config.get("max_value") is None
            and float(config.get("negative_slope", 0.0)) == 0.0
            and float(config.get("threshold", 0.0)) == 0.0
        )
    return False


def _describe(layer: keras.layers.Layer) -> str:
    return f"layer '{layer.name}' ({type(layer).__name__})"


def check_supported_layers(model: keras.Model) -> None:
    """Raise UnsupportedModelError for any layer the QFFS method cannot carry."""
    for layer in model.layers:
        if type(layer) not in SUPPORTED_LAYERS:
            raise UnsupportedModelError(
                f"{_describe(layer)} is not supported by QFFS. Supported layers: "
                f"{SUPPORTED_NAMES}. Replace it or remove it from the model."
            )
        if isinstance(layer, keras.layers.Activation) and _activation_name(
            layer.activation
        ) not in ("relu", "linear"):
            raise UnsupportedModelError(
                f"{_describe(layer)} uses activation '{_activation_name(layer.activation)}'; "
                "QFFS supports only 'relu' (quantized) and 'linear'."
            )
        if type(layer) is keras.layers.ReLU and not _is_plain_relu_layer(layer):
            raise UnsupportedModelError(
                f"{_describe(layer)} is not a plain ReLU (max_value, negative_slope or threshold "
                "is set); QFFS quantizes plain ReLUs. Use ReLU() and let the quantizer clip."
            )
        if isinstance(layer, LINEAR_LAYERS) and _activation_name(layer.activation) not in (
            "relu",
            "linear",
        ):
            raise UnsupportedModelError(
                f"{_describe(layer)} has activation '{_activation_name(layer.activation)}'; "
                "QFFS supports activation='relu' or none on Conv2D, DepthwiseConv2D and Dense."
            )


def _output_layer_names(model: keras.Model) -> set[str]:
    return {tensor._keras_history.layer.name for tensor in model.outputs}


def _as_images(calibration_data) -> np.ndarray | tf.Tensor:
    """Up to MAX_CALIBRATION_EXAMPLES images from an array, tensor or tf.data of (x, y)/x."""
    if isinstance(calibration_data, tf.data.Dataset):
        images, count = [], 0
        for element in calibration_data:
            batch = element[0] if isinstance(element, tuple | list) else element
            images.append(batch)
            count += int(batch.shape[0])
            if count >= MAX_CALIBRATION_EXAMPLES:
                break
        if not images:
            raise ValueError("calibration_data is an empty dataset; pass a few training batches.")
        return tf.concat(images, axis=0)[:MAX_CALIBRATION_EXAMPLES]
    if isinstance(calibration_data, Iterable) and not hasattr(calibration_data, "shape"):
        calibration_data = np.asarray(calibration_data)
    return calibration_data[:MAX_CALIBRATION_EXAMPLES]


def calibrate(qat_model: keras.Model, calibration_data) -> None:
    """Initialise every uninitialised QFFS step size from one forward pass over data."""
    images = _as_images(calibration_data)
    if not np.all(np.isfinite(np.asarray(images))):
        raise ValueError("calibration_data contains NaN or Inf values; pass finite images.")
    outputs = qat_model(images, training=False)
    if not np.all(np.isfinite(np.asarray(outputs))):
        raise ValueError(
            "The model produced NaN or Inf on calibration_data; check the model's weights."
        )


def quantize_model(
    model: keras.Model,
    activation_bits: int = 2,
    weight_bits: int | None = None,
    calibration_data=None,
    init: str = "lsq",
) -> keras.Model:
    """Return the QFFS quantization-aware (tfmot QAT) version of a float tf_keras model.

    Every ReLU becomes a `activation_bits`-bit QFFS activation with a learned step size; the
    output layer (logits) stays unquantized. `weight_bits` (e.g. 8) adds tfmot's weight
    fake-quantization. Step sizes initialise from `calibration_data` (images) when given, or
    else from the first batch the model sees. The returned model is not compiled.
    """
    check_tf_keras_model(model)
    bits = check_bits(activation_bits, "activation_bits")
    wbits = None if weight_bits is None else check_bits(weight_bits, "weight_bits")
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
    if not model.built:
        raise UnsupportedModelError("The model is not built; give it an Input or call build().")
    check_supported_layers(model)
    outputs = _output_layer_names(model)

    def is_relu(layer) -> bool:
        if layer.name in outputs:
            return False
        if isinstance(layer, LINEAR_LAYERS):
            return _activation_name(layer.activation) == "relu"
        return _is_plain_relu_layer(layer)

    relus = [layer.name for layer in model.layers if is_relu(layer)]
    already = [layer.name for layer in model.layers if isinstance(layer, QuantReLU)]
    if not relus and not already:
        raise UnsupportedModelError(
            "The model has no ReLU to quantize (outside the output layer). QFFS quantizes ReLU "
            "activations: use ReLU layers, Activation('relu') or activation='relu' on "
            "Conv2D/DepthwiseConv2D/Dense."
        )

    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def annotate_layer(layer):
        fresh = type(layer).from_config(layer.get_config())
        if isinstance(layer, LINEAR_LAYERS) and (layer.name in relus or wbits is not None):
            config = QFFSLinearConfig(bits if layer.name in relus else None, wbits, init)
            return annotate(fresh, quantize_config=config)
        if layer.name in relus:
            return annotate(fresh, quantize_config=QFFSOutputConfig(bits, init))
        return fresh

    with tfmot.quantization.keras.quantize_scope(custom_objects()):
        annotated = keras.models.clone_model(model, clone_function=annotate_layer)
        annotated.set_weights(model.get_weights())
        if not relus and wbits is None:
            qat_model = annotated
        else:
            qat_model = tfmot.quantization.keras.quantize_apply(
                annotated, scheme=QFFSQuantizeScheme()
            )
    if calibration_data is not None:
        calibrate(qat_model, calibration_data)
    return qat_model


def quantized_activations(model: keras.Model) -> dict[str, object]:
    """Layer name -> ActivationSpec for every QFFS activation in `model` (in layer order)."""
    specs = {}
    for layer in model.layers:
        spec = activation_spec(layer)
        if spec is not None:
            specs[layer.name] = spec
    return specs
