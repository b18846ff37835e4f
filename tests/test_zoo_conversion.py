"""Every model of the zoo, shrunk, converts exactly: quantized (2-bit) with calibration, BN
statistics randomised, converted with qffs_tf.convert, verified spike-count exact and quiet.

Random weights: this checks the conversion's mechanics on each topology (VGG, basic and
bottleneck ResNets with projection shortcuts, depthwise MobileNet), not any accuracy.
"""

import numpy as np
import pytest
from test_applications_quantize import randomise_batch_norm

# name, width, input size, time steps, images. ImageNet variants at 64x64 (their layout:
# strided stem, max-pool, 4096-unit VGG classifier scaled by width).
ZOO = [
    # A plain conv stack with max-pools: `make test` converts tf_keras.applications' VGG16
    # (test_applications_conversion.py), so this copy of the topology runs in `make test-all`.
    pytest.param("vgg16", 0.125, 32, 128, 8, marks=pytest.mark.slow),
    ("resnet18", 0.125, 32, 128, 8),
    ("resnet20", 0.25, 32, 128, 8),
    # The two largest ImageNet-layout graphs add no topology the others lack (resnet18 at 64
    # has the strided stem and max-pool, resnet50 the bottleneck): `make test-all` runs them.
    pytest.param("vgg16", 0.0625, 64, 128, 4, marks=pytest.mark.slow),
    ("resnet18", 0.0625, 64, 128, 4),
    pytest.param("resnet34", 0.0625, 64, 160, 4, marks=pytest.mark.slow),
    ("resnet50", 0.0625, 64, 160, 4),
    ("mobilenet_v1", 0.125, 32, 128, 8),
]


@pytest.mark.parametrize("name, width, size, timesteps, images", ZOO)
def test_zoo_model_converts_exactly(name, width, size, timesteps, images):
    import qffs_tf
    from qffs_tf import models
    from qffs_tf._keras import keras

    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = models.build(name, input_shape=(size, size, 3), num_classes=10, width=width)
    randomise_batch_norm(model, rng)
    calibration = rng.random((16, size, size, 3), dtype=np.float32)
    qat = qffs_tf.quantize_model(model, activation_bits=2, calibration_data=calibration)
    snn = qffs_tf.convert(qat, timesteps)
    x = rng.random((images, size, size, 3), dtype=np.float32)
    report = qffs_tf.verify(qat, snn, x)
    assert report.samples == images
    assert report.exact, report
    assert report.quiet_fraction == 1.0, report
    # Spikes happen (the check is not vacuous): some neuron fires in every network.
    assert sum(int(v.sum()) for v in report.simulation.positive_spikes.values()) > 0
