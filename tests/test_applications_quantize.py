"""tf_keras.applications architectures, as they come, through quantize_model.

Each model is built with weights=None at the smallest input it accepts (width multiplier small
where there is one), its default softmax head and BatchNorm statistics randomised (so no layer
is trivially zero), then quantized with 2-bit activations and calibrated on random images.
Random weights: this checks the quantization's mechanics on each topology (fused and standalone
ReLUs, ReLU6, Concatenate, SeparableConv2D, pre-activation BN, pooling 'same' stride 1), not
any accuracy. EfficientNetB0 is refused up front, naming swish.
"""

from __future__ import annotations

import numpy as np
import pytest

import qffs_tf
from qffs_tf import models
from qffs_tf._keras import keras
from qffs_tf.errors import UnsupportedModelError
from qffs_tf.quantization import output_activations, quantized_activations, step_cap
from qffs_tf.quantization.support import QUANTIZED_ACTIVATIONS, layer_activation

L = keras.layers
BITS = 2

# name, input shape (the smallest each accepts), constructor arguments, ReLU cap. The two
# largest graphs (300-430 layers; tfmot's quantize_apply clones a model three times) are
# marked slow: about 15 s each on an idle 2-core CPU, 60 s when the machine is shared.
SLOW = pytest.mark.slow
APPLICATIONS = [
    pytest.param("VGG16", (32, 32, 3), {}, None, id="VGG16"),
    pytest.param("ResNet50", (32, 32, 3), {}, None, id="ResNet50"),
    pytest.param("ResNet50V2", (32, 32, 3), {}, None, id="ResNet50V2"),
    pytest.param("MobileNet", (32, 32, 3), {"alpha": 0.25}, 6.0, id="MobileNet"),
    pytest.param("MobileNetV2", (32, 32, 3), {"alpha": 0.35}, 6.0, id="MobileNetV2"),
    pytest.param("DenseNet121", (32, 32, 3), {}, None, id="DenseNet121", marks=SLOW),
    pytest.param("InceptionV3", (75, 75, 3), {}, None, id="InceptionV3", marks=SLOW),
    pytest.param("Xception", (71, 71, 3), {}, None, id="Xception"),
]


def randomise_batch_norm(model: keras.Model, rng: np.random.Generator) -> None:
    """Scales, shifts and running statistics away from 1 / 0 (works with scale=False too)."""
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            values = []
            for weight in layer.weights:
                kind = weight.name.split("/")[-1].split(":")[0]
                shape = weight.shape
                values.append(
                    {
                        "gamma": rng.uniform(0.5, 1.5, shape),
                        "beta": rng.normal(0.1, 0.2, shape),
                        "moving_mean": rng.normal(0.0, 0.2, shape),
                        "moving_variance": rng.uniform(0.5, 2.0, shape),
                    }[kind].astype(np.float32)
                )
            layer.set_weights(values)


def relu_count(model: keras.Model) -> int:
    """ReLUs outside the output layer: what quantize_model must turn into QFFS activations."""
    head = model.outputs[0]._keras_history.layer
    return sum(
        1
        for layer in model.layers
        if layer is not head
        and (use := layer_activation(layer)) is not None
        and use.name in QUANTIZED_ACTIVATIONS
    )


@pytest.mark.parametrize(("name", "shape", "kwargs", "cap"), APPLICATIONS)
def test_application_quantizes_as_it_comes(name, shape, kwargs, cap):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = models.from_keras_application(name, shape, 10, **kwargs)
    randomise_batch_norm(model, rng)
    calibration = rng.random((8, *shape), dtype=np.float32)
    qat = qffs_tf.quantize_model(model, BITS, calibration_data=calibration)

    specs = quantized_activations(qat)
    # One forward pass for the output and every QFFS activation.
    probe = keras.Model(qat.input, [qat.output] + [qat.get_layer(n).output for n in specs])
    x = rng.random((4, *shape), dtype=np.float32)
    y, *outputs = probe(x)

    # The head is kept: the QAT model returns probabilities, as the Keras model does.
    y = y.numpy()
    assert y.shape == (4, 10) and np.all(np.isfinite(y)) and np.all(y >= 0)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=0, atol=1e-5)  # float32 softmax sum
    assert output_activations(qat) == {"predictions": "softmax"}

    # Every ReLU (fused, ReLU layer, Activation('relu'), ReLU6) became a QFFS activation,
    # calibrated from the data, with ReLU6's cap on the effective step.
    assert len(specs) == relu_count(model) > 0
    assert {spec.max_value for spec in specs.values()} == {cap}
    for spec in specs.values():
        assert 0 < spec.step_size < 1e3 and spec.step_size != 1.0  # 1.0 = never initialised
        if cap is not None:
            assert spec.step_size <= step_cap(BITS, cap)

    # Each activation outputs whole levels of its effective step, and most are not all zero.
    active = 0
    for (layer_name, spec), out in zip(specs.items(), outputs, strict=True):
        out = out.numpy()
        step = np.float32(spec.step_size)
        levels = np.round(out / step)
        np.testing.assert_array_equal(out, levels.astype(np.float32) * step, err_msg=layer_name)
        assert 0 <= levels.min() and levels.max() <= 2**BITS - 1, layer_name
        active += bool(levels.max() > 0)
    assert active >= 0.9 * len(specs), f"{active} of {len(specs)} activations fire"


def test_efficientnet_is_refused_before_training_naming_swish():
    model = models.from_keras_application("EfficientNetB0", (32, 32, 3), 10, check=False)
    with pytest.raises(UnsupportedModelError) as info:
        qffs_tf.quantize_model(model, BITS, calibration_data=np.zeros((2, 32, 32, 3), "float32"))
    message = str(info.value)
    assert "\n" not in message
    assert "layer 'stem_activation' (Activation)" in message
    assert "uses activation 'swish'" in message and "not monotone" in message
    assert "Closest supported alternative: 'relu'" in message
    # Its squeeze-and-excitation gates are named too, with their own reason.
    assert "(Multiply)" in message and "multiplies two activations" in message
