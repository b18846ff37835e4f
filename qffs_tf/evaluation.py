"""Accuracy per time step, agreement with the QANN, spikes, firing rates, operations, energy.

`evaluate_snn` runs the QANN, the QFFS SNN (negative spikes) and the plain-IF SNN over a data
set batch by batch and aggregates what a user compares: accuracy at every step t = 1..T, how
often the SNN's answer equals the QANN's, when samples become quiet, spikes per image and per
layer, firing rates, and synaptic operations beside the ANN's multiply-accumulates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from qffs_tf._keras import keras
from qffs_tf.conversion import convert
from qffs_tf.simulation import ann_macs, input_macs, simulate
from qffs_tf.snn.neuron_layer import SpikingNeurons
from qffs_tf.snn.timesteps import timesteps_of, with_timesteps
from qffs_tf.verification import (
    first_full_agreement_step,
    qann_integer_activations,
    snn_counts_in_qann_units,
)

# 45 nm CMOS, 32-bit float (Horowitz, ISSCC 2014): the figures most SNN papers use.
DEFAULT_E_AC_PJ = 0.9
DEFAULT_E_MAC_PJ = 4.6


@dataclasses.dataclass
class _Totals:
    """Running sums over the batches of one SNN variant."""

    timesteps: int
    correct: np.ndarray = None
    agree: np.ndarray = None
    quiet_sum: int = 0
    quiet_count: int = 0
    positive: dict = dataclasses.field(default_factory=dict)
    negative: dict = dataclasses.field(default_factory=dict)
    sops: float = 0.0
    mismatches: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.correct = np.zeros(self.timesteps)
        self.agree = np.zeros(self.timesteps)

    def add(self, result, labels, qann_top1, expected, if_layers, snn):
        top1 = np.argmax(result.logits, axis=-1)
        self.correct += (top1 == labels[:, None]).sum(axis=0)
        self.agree += (top1 == qann_top1[:, None]).sum(axis=0)
        quiet = result.quiet_step[result.quiet_step > 0]
        self.quiet_sum += int(quiet.sum())
        self.quiet_count += int(quiet.size)
        for name in result.positive_spikes:
            self.positive[name] = self.positive.get(name, 0) + result.positive_spikes[name].sum()
            self.negative[name] = self.negative.get(name, 0) + result.negative_spikes[name].sum()
        self.sops += float(sum(value.sum() for value in result.synaptic_ops.values()))
        for layer, want in zip(if_layers, expected, strict=True):
            got = snn_counts_in_qann_units(layer, result.counts[layer.name], snn)
            self.mismatches[layer.name] = self.mismatches.get(layer.name, 0) + int(
                (got != want).sum()
            )


def _batches(data, batch_size: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) batches from an (x, y) pair of arrays or a tf.data of batches."""
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        for start in range(0, len(x), batch_size):
            yield (
                np.asarray(x[start : start + batch_size]),
                np.asarray(y[start : start + batch_size]),
            )
    else:
        for x, y in data:
            yield np.asarray(x), np.asarray(y)


def evaluate_snn(
    qat_model: keras.Model,
    snn: keras.Model,
    data,
    timesteps: int | None = None,
    batch_size: int = 256,
    plain_if: bool = True,
    e_ac_pj: float = DEFAULT_E_AC_PJ,
    e_mac_pj: float = DEFAULT_E_MAC_PJ,
    jit_compile: bool = False,
    progress: bool = True,
    num_examples: int | None = None,
) -> dict:
    """Evaluate the QANN and the SNN (and plain IF) on `data`; return a JSON-ready report.

    `data` is (images, labels) arrays or a tf.data.Dataset of such batches.
    """
    steps = timesteps_of(snn) if timesteps is None else int(timesteps)
    snn = with_timesteps(snn, steps)
    variants = {"qffs": snn}
    if plain_if:
        plain = convert(qat_model, steps, neuron="plain_if")
        variants["plain_if"] = plain
    if_layers = [layer for layer in snn.layers if isinstance(layer, SpikingNeurons)]
    sources = [layer.source for layer in if_layers]
    thresholds = [layer.step_size for layer in if_layers]
    totals = {name: _Totals(steps) for name in variants}
    qann_correct = 0
    seen = 0
    progbar = keras.utils.Progbar(num_examples, unit_name="image") if progress else None
    for x, y in _batches(data, batch_size):
        expected, qann_logits = qann_integer_activations(qat_model, x, sources, thresholds)
        qann_top1 = np.argmax(qann_logits, axis=-1)
        qann_correct += int((qann_top1 == y).sum())
        for name, model in variants.items():
            result = simulate(model, x, jit_compile=jit_compile)
            totals[name].add(result, y, qann_top1, expected, if_layers, model)
        seen += len(y)
        if progbar is not None:
            progbar.update(seen, [("qann_acc", qann_correct / seen)])
    if seen == 0:
        raise ValueError("The evaluation data set is empty.")
    return _report(totals, qann_correct, seen, steps, snn, if_layers, e_ac_pj, e_mac_pj)


def _report(totals, qann_correct, seen, steps, snn, if_layers, e_ac_pj, e_mac_pj) -> dict:
    neurons = {layer.name: int(np.prod(layer.neuron_shape)) for layer in if_layers}
    macs = ann_macs(snn)
    first_macs = input_macs(snn)
    report = {
        "timesteps": steps,
        "samples": seen,
        "qann_accuracy": qann_correct / seen,
        "ann_macs_per_image": macs,
        "input_macs_per_image": first_macs,
        "energy_per_op_pj": {"ac": e_ac_pj, "mac": e_mac_pj},
        "ann_energy_uj_per_image": macs * e_mac_pj * 1e-6,
    }
    for name, total in totals.items():
        prefix = "" if name == "qffs" else "plain_if_"
        accuracy = [float(value) for value in total.correct / seen]
        agreement = [float(value) for value in total.agree / seen]
        positive = {layer: float(value) / seen for layer, value in total.positive.items()}
        negative = {layer: float(value) / seen for layer, value in total.negative.items()}
        spikes = sum(positive.values()) + sum(negative.values())
        sops = total.sops / seen
        report.update(
            {
                f"{prefix}snn_accuracy_per_step": accuracy,
                f"{prefix}agreement_per_step": agreement,
                f"{prefix}first_full_agreement_step": first_full_agreement_step(agreement),
                f"{prefix}mean_quiet_step": (
                    total.quiet_sum / total.quiet_count if total.quiet_count else None
                ),
                f"{prefix}quiet_fraction": total.quiet_count / seen,
                f"{prefix}spikes_per_image": spikes,
                f"{prefix}negative_spikes_per_image": sum(negative.values()),
                f"{prefix}spikes_per_layer": {
                    layer: {"positive": positive[layer], "negative": negative[layer]}
                    for layer in positive
                },
                f"{prefix}firing_rate_per_layer": {
                    layer: (positive[layer] + negative[layer]) / (neurons[layer] * steps)
                    for layer in positive
                },
                f"{prefix}count_mismatches_per_layer": dict(total.mismatches),
                f"{prefix}exact_counts": all(value == 0 for value in total.mismatches.values()),
                f"{prefix}synaptic_ops_per_image": sops,
                f"{prefix}snn_energy_uj_per_image": (sops * e_ac_pj + first_macs * e_mac_pj) * 1e-6,
            }
        )
    report["snn_accuracy"] = report["snn_accuracy_per_step"][-1]
    return report
