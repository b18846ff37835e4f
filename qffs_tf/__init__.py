"""qffs_tf: QFFS (Li, Ma and Furber, 2022) for TensorFlow / tf_keras.

Train a Keras CNN with b-bit quantized ReLUs, convert it into a spiking network of
integrate-and-fire layers that gives the same answers within a few time steps, simulate it
step by step, and export both networks to TFLite.

The whole project runs on tf_keras (Keras 2), because tensorflow-model-optimization supports
only Keras 2. Importing this package sets ``TF_USE_LEGACY_KERAS=1`` so that ``tf.keras`` is
tf_keras too; import ``qffs_tf`` before TensorFlow when you can.
"""

from __future__ import annotations

import importlib
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

# Public name -> module that defines it. Resolved lazily so that `import qffs_tf` stays cheap
# and a command-line tool pays only for what it uses.
_PUBLIC = {
    "QFFSError": "errors",
    "ConversionError": "errors",
    "DatasetNotFoundError": "errors",
    "QuantReLU": "quantization",
    "QFFSActivationQuantizer": "quantization",
    "custom_objects": "quantization",
    "quantize_model": "qat",
    "load_model": "serialization",
    "convert": "conversion",
    "integer_reference": "conversion.integer_reference",
    "choose_timesteps": "conversion.auto_timesteps",
    "simulate": "simulation",
    "verify": "verification",
    "export_tflite": "export",
}
_SUBMODULES = {
    "models",
    "data",
    "training",
    "conversion",
    "snn",
    "simulation",
    "verification",
    "certificate",
    "evaluation",
    "reports",
    "export",
    "quantization",
    "qat",
    "distribute",
}

__all__ = sorted(_PUBLIC) + sorted(_SUBMODULES)


def __getattr__(name: str):
    if name in _PUBLIC:
        module = importlib.import_module(f"{__name__}.{_PUBLIC[name]}")
        value = getattr(module, name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'qffs_tf' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
