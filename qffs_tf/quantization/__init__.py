"""QFFS quantization: the quantizer, its tfmot configs, the support registry, quantize_model.

Modules, one job each:

- ``quantizer``: the LSQ quantizer math (``quantize``, ``effective_step_size``, step-size
  initialisation) and the ``QuantReLU`` layer.
- ``configs``: the tfmot ``Quantizer`` / ``QuantizeConfig`` objects and ``activation_spec``
  (what the converter reads back: bits, effective step, cap).
- ``rules``: the registry of supported layers and activations, with the reason and the closest
  alternative for what is refused.
- ``support``: applies the registry to a model (what to quantize, what to refuse).
- ``graph``: a model as a flat list of layer calls (nested models inlined), and rebuilt.
- ``apply``: ``quantize_model``, calibration, ``quantized_activations``.
"""

from __future__ import annotations

from qffs_tf.quantization.apply import (
    MAX_CALIBRATION_EXAMPLES,
    QFFSQuantizeScheme,
    calibrate,
    calibration_images,
    output_activations,
    quantize_model,
    quantized_activations,
)
from qffs_tf.quantization.configs import (
    ActivationSpec,
    QFFSActivationQuantizer,
    QFFSLinearConfig,
    QFFSOutputConfig,
    activation_spec,
    custom_objects,
    kernel_attributes,
    weight_quantizer,
)
from qffs_tf.quantization.quantizer import (
    INIT_METHODS,
    MAX_BITS,
    MIN_BITS,
    QuantReLU,
    check_bits,
    check_init,
    check_max_value,
    effective_step_size,
    initial_step_size,
    levels,
    quantize,
    step_cap,
)
from qffs_tf.quantization.support import (
    HEAD_ACTIVATIONS,
    QUANTIZED_ACTIVATIONS,
    check_model,
    supported_layers,
)

__all__ = [
    "ActivationSpec",
    "HEAD_ACTIVATIONS",
    "INIT_METHODS",
    "MAX_BITS",
    "MAX_CALIBRATION_EXAMPLES",
    "MIN_BITS",
    "QFFSActivationQuantizer",
    "QFFSLinearConfig",
    "QFFSOutputConfig",
    "QFFSQuantizeScheme",
    "QUANTIZED_ACTIVATIONS",
    "QuantReLU",
    "activation_spec",
    "calibrate",
    "calibration_images",
    "check_bits",
    "check_init",
    "check_max_value",
    "check_model",
    "custom_objects",
    "effective_step_size",
    "initial_step_size",
    "kernel_attributes",
    "levels",
    "output_activations",
    "quantize",
    "quantize_model",
    "quantized_activations",
    "step_cap",
    "supported_layers",
    "weight_quantizer",
]
