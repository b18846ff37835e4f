"""qffs_tf: QFFS (Li, Ma and Furber, 2022) for TensorFlow / tf_keras.

Train a Keras CNN with b-bit quantized ReLUs, convert it into a spiking network of
integrate-and-fire layers that gives the same answers within a few time steps, simulate it
step by step, and export both networks to TFLite.

The whole project runs on tf_keras (Keras 2), because tensorflow-model-optimization supports
only Keras 2. Importing this package sets ``TF_USE_LEGACY_KERAS=1`` so that ``tf.keras`` is
tf_keras too; import ``qffs_tf`` before TensorFlow when you can.

Importing the package also registers every class a saved qffs_tf model refers to (see
`qffs_tf.serialization`), so plain ``tf_keras.models.load_model`` opens QAT models and SNNs.
"""

from __future__ import annotations

import importlib
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

# Public name -> module that defines it, resolved on first use.
_PUBLIC = {
    "QFFSError": "errors",
    "ConversionError": "errors",
    "DatasetNotFoundError": "errors",
    "UnsupportedModelError": "errors",
    "ExportError": "errors",
    "InvalidArgumentError": "errors",
    "InvalidTypeError": "errors",
    "InvalidInputError": "errors",
    "ModelLoadError": "errors",
    "ModelNotFoundError": "errors",
    "QuantReLU": "quantization",
    "QFFSActivationQuantizer": "quantization",
    "custom_objects": "serialization",
    "quantize_model": "quantization",
    "load_model": "serialization",
    "convert": "conversion",
    "integer_reference": "conversion.integer_reference",
    "choose_timesteps": "conversion.auto_timesteps",
    "simulate": "simulation",
    "verify": "verification",
    "export_tflite": "export",
    "analyze": "evaluation",
    "Analysis": "evaluation",
    "SimulationResult": "simulation",
    "SpikingNetwork": "snn",
    "folded_qann": "conversion",
}
_SUBMODULES = {
    "errors",
    "serialization",
    "models",
    "data",
    "training",
    "conversion",
    "snn",
    "simulation",
    "verification",
    "certificate",
    "evaluation",
    "export",
    "quantization",
    "qat",
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


# Registration with Keras must not wait for a lazy attribute: a user who only calls
# tf_keras.models.load_model never touches one. TensorFlow's C++ start-up messages are muted.
from qffs_tf.cli import muted_stderr as _muted_stderr  # noqa: E402

with _muted_stderr():
    from qffs_tf import serialization as _serialization  # noqa: E402, F401
