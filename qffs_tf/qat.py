"""Compatibility: ``quantize_model`` moved to ``qffs_tf.quantization``.

``from qffs_tf.qat import quantize_model`` (training, tests of other areas) keeps working;
new code imports from ``qffs_tf.quantization``.
"""

from __future__ import annotations

from qffs_tf.quantization import (  # noqa: F401
    MAX_CALIBRATION_EXAMPLES,
    QFFSQuantizeScheme,
    calibrate,
    check_model,
    quantize_model,
    quantized_activations,
)

check_supported_layers = check_model

__all__ = [
    "MAX_CALIBRATION_EXAMPLES",
    "QFFSQuantizeScheme",
    "calibrate",
    "check_model",
    "check_supported_layers",
    "quantize_model",
    "quantized_activations",
]
