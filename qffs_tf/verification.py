"""`verify`: the user's proof that a conversion is right.

Runs the QAT network (QANN) and the SNN on the same images and reports, per neuron layer,
whether every neuron's final net spike count equals the QANN's integer activation, and how
often the top-1 answers agree after each time step.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qffs_tf._keras import keras
from qffs_tf.simulation import SimulationResult, simulate
from qffs_tf.snn.neuron_layer import SpikingNeurons


@dataclasses.dataclass
class LayerCheck:
    """Agreement of one neuron layer with the QANN activation it replaced."""

    snn_layer: str
    qann_layer: str
    neurons: int  # per sample
    mismatches: int  # over the whole batch
    max_count_error: int

    @property
    def exact(self) -> bool:
        return self.mismatches == 0


@dataclasses.dataclass
class VerificationReport:
    """What `verify` found; `exact` is the headline."""

    layers: list[LayerCheck]
    agreement_per_step: list[float]  # top-1 agreement SNN vs QANN after steps 1..T
    max_logit_error: float  # max |SNN logits after T steps - QANN logits|
    quiet_fraction: float  # samples with no spike left by the last step
    samples: int
    simulation: SimulationResult

    @property
    def exact(self) -> bool:
        return all(layer.exact for layer in self.layers)

    def first_full_agreement_step(self) -> int | None:
        """First step (1-based) from which on top-1 agreement stays 1.0."""
        return first_full_agreement_step(self.agreement_per_step)

    def __str__(self) -> str:
        lines = [f"{'SNN layer':<28}{'QANN layer':<28}{'neurons':>9}{'mismatches':>12}"]
        for layer in self.layers:
            lines.append(
                f"{layer.snn_layer:<28}{layer.qann_layer:<28}{layer.neurons:>9}"
                f"{layer.mismatches:>12}"
            )
        shown = self.agreement_per_step[:16]
        agreement = " ".join(f"{value:.3f}" for value in shown)
        if len(self.agreement_per_step) > len(shown):
            agreement += f" ... ({len(self.agreement_per_step)} steps)"
        lines += [
            f"exact spike counts: {self.exact}   samples: {self.samples}   "
            f"quiet by the last step: {self.quiet_fraction:.3f}",
            f"top-1 agreement per step: {agreement}",
            f"max |logit error| after {len(self.agreement_per_step)} steps: "
            f"{self.max_logit_error:.3g}",
        ]
        return "\n".join(lines)


def first_full_agreement_step(agreement_per_step: list[float]) -> int | None:
    """First step (1-based) from which on top-1 agreement stays 1.0; None if it never does."""
    for step in range(len(agreement_per_step)):
        if all(value == 1.0 for value in agreement_per_step[step:]):
            return step + 1
    return None


def snn_counts_in_qann_units(
    layer: SpikingNeurons, counts: np.ndarray, snn: keras.Model
) -> np.ndarray:
    """An IF layer's final counts, shaped like the QANN activation it replaced.

    Where the converter moved a max-pool behind the neurons, the QANN pooled before
    quantizing, so the counts are compared after that pool.
    """
    if layer.pooled_by:
        return snn.get_layer(layer.pooled_by).pool(counts).numpy()
    return counts


def qann_integer_activations(
    qat_model: keras.Model, x, names: list[str], thresholds: list[float]
) -> tuple[list[np.ndarray], np.ndarray]:
    """The QANN's integer activations q = a / s of the named layers, and its logits."""
    from qffs_tf.conversion.graph import flatten_nested, layer_output

    qat_model = flatten_nested(qat_model)
    probe = keras.Model(
        qat_model.inputs, [layer_output(qat_model, name) for name in names] + qat_model.outputs
    )
    outputs = probe(x, training=False)
    outputs = [np.asarray(value) for value in (outputs if isinstance(outputs, list) else [outputs])]
    levels = [
        np.round(value / threshold)
        for value, threshold in zip(outputs[:-1], thresholds, strict=True)
    ]
    return levels, outputs[-1]


def verify(
    qat_model: keras.Model,
    snn: keras.Model,
    x,
    timesteps: int | None = None,
    mode: str = "layerwise",
) -> VerificationReport:
    """Compare the SNN with the QANN on images `x`, neuron by neuron and step by step."""
    result = simulate(snn, x, timesteps=timesteps, mode=mode)
    if_layers = [layer for layer in snn.layers if isinstance(layer, SpikingNeurons)]
    sources = [layer.source for layer in if_layers]
    expected, qann_logits = qann_integer_activations(
        qat_model, x, sources, [layer.step_size for layer in if_layers]
    )
    checks = []
    for layer, want in zip(if_layers, expected, strict=True):
        got = snn_counts_in_qann_units(layer, result.counts[layer.name], snn)
        error = np.abs(got - want)
        checks.append(
            LayerCheck(
                layer.name,
                layer.source,
                int(np.prod(want.shape[1:])),
                int((error > 0).sum()),
                int(error.max(initial=0)),
            )
        )
    qann_top1 = np.argmax(qann_logits, axis=-1)
    agreement = (np.argmax(result.logits, axis=-1) == qann_top1[:, None]).mean(axis=0)
    return VerificationReport(
        layers=checks,
        agreement_per_step=[float(value) for value in agreement],
        max_logit_error=float(np.abs(result.final_logits - qann_logits).max()),
        quiet_fraction=float((result.quiet_step > 0).mean()),
        samples=int(result.logits.shape[0]),
        simulation=result,
    )
