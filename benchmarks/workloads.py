"""The benchmark networks of issue 13's table, built the same way by every benchmark.

Untrained zoo models with step sizes calibrated on uniform random images. The speed of a
simulation depends on the shapes and on how many steps carry spikes, not on what the weights
learned; the activity of these networks is not a trained network's (untrained MobileNet-v1
falls silent after a few blocks), so BUILD.md states it beside the numbers it affects.
"""

from __future__ import annotations

MODELS = {
    # name: (zoo name, input shape, classes)
    "small_cnn": ("small_cnn", (28, 28, 1), 10),
    "resnet18": ("resnet18", (32, 32, 3), 10),
    "mobilenet_v1": ("mobilenet_v1", (64, 64, 3), 100),
}


def benchmark_images(name: str, batch_size: int):
    """The benchmark batch for model `name`: uniform random images, seed 0."""
    import numpy as np

    shape = MODELS[name][1]
    return np.random.default_rng(0).uniform(0, 1, (batch_size, *shape)).astype(np.float32)


def calibrated_qat(name: str, x, activation_bits: int, package=None, **build_options):
    """Model `name` from `package`'s zoo (default: qffs_tf), seeded, quantized with
    `activation_bits` and calibrated on `x`."""
    from qffs_tf._keras import keras

    if package is None:
        import qffs_tf as package
    zoo, shape, classes = MODELS[name]
    keras.utils.set_random_seed(0)
    model = package.models.build(zoo, input_shape=shape, num_classes=classes, **build_options)
    return package.quantize_model(model, activation_bits, calibration_data=x)


def check_names(names) -> None:
    """Raise a usage error (printed by `cli.run`, exit 2) naming any unknown model."""
    from qffs_tf import cli

    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise cli.UsageError(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
