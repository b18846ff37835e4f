"""tf_keras.applications architectures, as they come, quantized, converted and verified.

Random weights and images (mechanics, not accuracy), BatchNorm statistics randomised; each SNN
runs for the window `timesteps="auto"` picks on the same images (all quiet), and `verify` must
find the final top-1 equal to the QANN's and no mismatched neuron that a float32 tie does not
explain. All but VGG16 and MobileNet are marked slow (`make test-all` runs them).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_applications_quantize import APPLICATIONS, BITS, randomise_batch_norm

import qffs_tf
from qffs_tf import models
from qffs_tf._keras import keras

# Converting and verifying doubles the quantize test's cost: `make test` keeps the two
# smallest graphs (plain convolutions; depthwise with ReLU6), `make test-all` runs all eight.
FAST = ("VGG16", "MobileNet")
CASES = [
    case if case.id in FAST else pytest.param(*case.values, id=case.id, marks=pytest.mark.slow)
    for case in APPLICATIONS
]


@pytest.mark.parametrize(("name", "shape", "kwargs", "cap"), CASES)
def test_application_converts_and_verifies(name, shape, kwargs, cap):
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    model = models.from_keras_application(name, shape, 10, **kwargs)
    randomise_batch_norm(model, rng)
    calibration = rng.random((8, *shape), dtype=np.float32)
    qat = qffs_tf.quantize_model(model, BITS, calibration_data=calibration)
    x = rng.random((3, *shape), dtype=np.float32)
    # T = the step at which these very images are quiet (measured stepwise with early exit),
    # so the layerwise verification below compares settled counts.
    snn = qffs_tf.convert(qat, timesteps="auto", calibration_data=x)
    report = qffs_tf.verify(qat, snn, x)
    assert report.quiet_fraction == 1.0, report
    assert report.agreement_per_step[-1] == 1.0, report
    assert report.certified, report
    # The head is kept: the SNN returns probabilities, as the Keras model does.
    probabilities = snn.predict(x, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # `predict` runs the SNN's Program (quiet steps skipped); Keras's layer-by-layer call of
    # the same layers computes every step, and must give the same floats.
    layer_by_layer = keras.Model(snn.inputs, snn.outputs)
    np.testing.assert_array_equal(probabilities, layer_by_layer.predict(x, verbose=0))
