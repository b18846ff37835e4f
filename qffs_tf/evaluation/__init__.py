"""Evaluation: read data in batches, analyze an SNN beside its baselines, write reports.

- `inputs`: batches from arrays, tensors, tf.data and generators;
- `analysis`: `analyze` (accuracy and agreement per step, spikes, firing rates, synaptic
  operations, energy; QFFS beside the plain-IF ablation and the rate-coded baseline);
- `reports`: the markdown report, console tables and plots.
"""

from qffs_tf.evaluation import reports
from qffs_tf.evaluation.analysis import (
    BASELINES,
    DEFAULT_E_AC_PJ,
    DEFAULT_E_MAC_PJ,
    Analysis,
    analyze,
    evaluate_snn,
    report_key,
)
from qffs_tf.evaluation.inputs import collect_images, iterate_batches

__all__ = [
    "BASELINES",
    "DEFAULT_E_AC_PJ",
    "DEFAULT_E_MAC_PJ",
    "Analysis",
    "analyze",
    "collect_images",
    "evaluate_snn",
    "iterate_batches",
    "report_key",
    "reports",
]
