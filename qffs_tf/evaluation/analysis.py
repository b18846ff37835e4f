"""`analyze`: accuracy per time step, agreement with the QANN, spikes, firing rates, operations
and energy, with the conventional baselines beside QFFS.

The data is streamed batch by batch and only aggregates are kept, so memory does not grow with
the number of images. Beside the SNN under study, `analyze` converts the same QAT model with
the same-coding ablation ("plain_if": no negative spikes) and with the conventional rate-coded
baseline ("rate": constant input current, threshold L*s, mean charge per step), so that a
comparison shows what QFFS gains over the method readers know.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from qffs_tf._keras import keras
from qffs_tf.errors import InvalidArgumentError, InvalidInputError
from qffs_tf.evaluation.inputs import DEFAULT_BATCH_SIZE, iterate_batches, num_examples
from qffs_tf.simulation import ann_macs, input_macs, simulate
from qffs_tf.snn.neuron_layer import SpikingNeurons
from qffs_tf.snn.neurons import get_neuron
from qffs_tf.snn.timesteps import check_timesteps, timesteps_of, with_timesteps
from qffs_tf.verification import (
    first_full_agreement_step,
    qann_integer_activations,
    snn_counts_in_qann_units,
)

# 45 nm CMOS, 32-bit float (Horowitz, ISSCC 2014): the figures most SNN papers use.
DEFAULT_E_AC_PJ = 0.9
DEFAULT_E_MAC_PJ = 4.6
BASELINES = ("plain_if", "rate")


def report_key(variant: str, metric: str) -> str:
    """The report key of a metric for one SNN variant ("snn", "plain_if", "rate").

    The SNN under study keeps the plain names (``snn_accuracy_per_step``,
    ``agreement_per_step``); baselines are prefixed (``plain_if_snn_accuracy_per_step``,
    ``rate_accuracy_per_step``, ``rate_agreement_per_step``).
    """
    if variant == "snn":
        return metric
    if variant == "rate" and metric.startswith("snn_"):
        metric = metric[len("snn_") :]
    return f"{variant}_{metric}"


@dataclasses.dataclass
class _Totals:
    """Running sums over the batches of one SNN variant."""

    timesteps: int
    compare_counts: bool
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

    def add(self, result, labels, qann_top1, expected, layers, snn):
        top1 = np.argmax(result.logits, axis=-1)
        if labels is not None:
            self.correct += (top1 == labels[:, None]).sum(axis=0)
        if qann_top1 is not None:
            self.agree += (top1 == qann_top1[:, None]).sum(axis=0)
        quiet = result.quiet_step[result.quiet_step > 0]
        self.quiet_sum += int(quiet.sum())
        self.quiet_count += int(quiet.size)
        for name in result.positive_spikes:
            self.positive[name] = self.positive.get(name, 0) + result.positive_spikes[name].sum()
            self.negative[name] = self.negative.get(name, 0) + result.negative_spikes[name].sum()
        self.sops += float(sum(value.sum() for value in result.synaptic_ops.values()))
        if expected is None or not self.compare_counts:
            return
        for layer, want in zip(layers, expected, strict=True):
            got = snn_counts_in_qann_units(layer, result.counts[layer.name], snn)
            self.mismatches[layer.name] = self.mismatches.get(layer.name, 0) + int(
                (got != want).sum()
            )


@dataclasses.dataclass
class Analysis:
    """What `analyze` measured; `report` holds every number (JSON-ready).

    Attributes
    ----------
    report : dict
        Accuracy and agreement per step (when labels / a QAT model were given), quiet steps,
        spikes per image and per layer, firing rates, synaptic operations, MACs and energy,
        for the SNN and each baseline (keys from `report_key`).
    layers : list of dict
        Per neuron layer: name, neurons, neuron model, threshold, step size, L.

    Example
    -------
    >>> analysis = qffs_tf.analyze(snn, (x_test, y_test), qat_model=qat)
    >>> print(analysis.summary())
    >>> analysis.plot("plots/")
    """

    report: dict
    layers: list[dict]

    def to_dict(self) -> dict:
        """The report as a JSON-ready dict (a copy)."""
        return dict(self.report)

    def summary(self) -> str:
        """A table per neuron layer, like Keras's `model.summary()`, and the headline numbers."""
        report = self.report
        header = (
            f"{'Layer':<26}{'Neuron':<10}{'Neurons':>9}{'Threshold':>11}{'L':>4}"
            f"{'+spikes/img':>13}{'-spikes/img':>13}{'Rate':>8}{'Mismatch':>10}"
        )
        rule = "=" * len(header)
        lines = [
            f'Analysis of "{report.get("model_name", "snn")}": {report["timesteps"]} steps, '
            f"{report['samples']} images",
            rule,
            header,
            "-" * len(header),
        ]
        mismatches = report.get("count_mismatches_per_layer") or {}
        for layer in self.layers:
            name = layer["name"]
            spikes = report["spikes_per_layer"][name]
            mismatch = mismatches.get(name, "-")
            lines.append(
                f"{name[:25]:<26}{layer['neuron']:<10}{layer['neurons']:>9}"
                f"{layer['threshold']:>11.4g}{layer['levels']:>4}"
                f"{spikes['positive']:>13.1f}{spikes['negative']:>13.1f}"
                f"{report['firing_rate_per_layer'][name]:>8.4f}{mismatch!s:>10}"
            )
        lines.append(rule)
        from qffs_tf.evaluation.reports import summary_lines

        lines.extend(summary_lines(report))
        return "\n".join(lines)

    def plot(self, folder: str | os.PathLike) -> dict[str, str]:
        """Write the accuracy/agreement-per-step and firing-rate plots (PNG) into `folder`.

        Returns
        -------
        dict
            Plot name -> path.
        """
        from qffs_tf.evaluation.reports import plot_accuracy, plot_firing_rates

        os.makedirs(folder, exist_ok=True)
        paths = {"firing_rate_plot": os.path.join(folder, "firing_rate_per_layer.png")}
        plot_firing_rates(self.report, paths["firing_rate_plot"])
        if "snn_accuracy_per_step" in self.report or "agreement_per_step" in self.report:
            paths["accuracy_plot"] = os.path.join(folder, "accuracy_per_step.png")
            plot_accuracy(self.report, paths["accuracy_plot"])
        return paths

    def __repr__(self) -> str:
        report = self.report
        accuracy = report.get("snn_accuracy")
        shown = "-" if accuracy is None else f"{accuracy:.4f}"
        return (
            f"Analysis(samples={report['samples']}, timesteps={report['timesteps']}, "
            f"snn_accuracy={shown}, spikes_per_image={report['spikes_per_image']:.1f})"
        )


def _check_baselines(baselines, qat_model) -> tuple[str, ...]:
    baselines = tuple(baselines or ())
    for name in baselines:
        if name not in BASELINES:
            raise InvalidArgumentError(
                f"Unknown baseline {name!r}; choose from {BASELINES} (or pass baselines=())."
            )
    if baselines and qat_model is None:
        raise InvalidArgumentError(
            f"The baselines {baselines} are converted from the QAT model: pass qat_model=..., "
            "or baselines=() to analyze the SNN alone."
        )
    return baselines


def analyze(
    snn: keras.Model,
    data,
    qat_model: keras.Model | None = None,
    *,
    timesteps: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    baselines=BASELINES,
    e_ac_pj: float = DEFAULT_E_AC_PJ,
    e_mac_pj: float = DEFAULT_E_MAC_PJ,
    jit_compile: bool = False,
    progress: bool = True,
) -> Analysis:
    """Run the SNN (and the baselines) over `data` and aggregate what a user compares.

    Parameters
    ----------
    snn : tf_keras.Model
        A model made by `qffs_tf.convert`.
    data : array, (images, labels), tf.data.Dataset or iterable
        Images, or images with labels (then accuracy per step is reported).
    qat_model : tf_keras.Model, optional
        The QAT model the SNN came from: enables agreement with the QANN per step, the
        count check per layer, and the baselines.
    timesteps : int, optional
        Steps to simulate (default: the SNN's own).
    batch_size : int
        Images per simulated batch.
    baselines : sequence of {"plain_if", "rate"}
        Baseline conversions of `qat_model` to run beside the SNN (default both).
    e_ac_pj, e_mac_pj : float
        Energy of one accumulate (synaptic operation) and one multiply-accumulate, in pJ.
    jit_compile : bool
        Simulate under XLA.
    progress : bool
        Show a Keras progress bar.

    Returns
    -------
    Analysis

    Raises
    ------
    InvalidInputError
        Empty data, or images the SNN cannot take.
    InvalidArgumentError
        An unknown baseline, baselines without a QAT model, negative energies.

    Example
    -------
    >>> analysis = qffs_tf.analyze(snn, (x_test, y_test), qat_model=qat)
    >>> analysis.report["rate_accuracy_per_step"][-1]
    """
    baselines = _check_baselines(baselines, qat_model)
    if e_ac_pj < 0 or e_mac_pj < 0:
        raise InvalidArgumentError("Energies per operation must be >= 0 pJ.")
    steps = timesteps_of(snn) if timesteps is None else check_timesteps(timesteps)
    snn = with_timesteps(snn, steps)
    variants = {"snn": snn}
    if baselines:
        from qffs_tf.conversion import convert

        for name in baselines:
            variants[name] = convert(qat_model, steps, neuron=name)
    layers = [layer for layer in snn.layers if isinstance(layer, SpikingNeurons)]
    once = {
        name: get_neuron(_neuron_of(model)).input_coding == "once"
        for name, model in variants.items()
    }
    totals = {name: _Totals(steps, once[name]) for name in variants}
    sources = [layer.source for layer in layers]
    step_sizes = [layer.step_size for layer in layers]
    labelled, qann_correct, seen = False, 0, 0
    progbar = None
    if progress:
        progbar = keras.utils.Progbar(num_examples(data), unit_name="image")
    for x, y in iterate_batches(data, batch_size, tuple(snn.input_shape[1:])):
        labelled = labelled or y is not None
        expected = qann_top1 = None
        if qat_model is not None:
            expected, qann_logits = qann_integer_activations(qat_model, x, sources, step_sizes)
            qann_top1 = np.argmax(qann_logits, axis=-1)
            if y is not None:
                qann_correct += int((qann_top1 == y).sum())
        for name, model in variants.items():
            result = simulate(model, x, jit_compile=jit_compile, batch_size=len(x))
            totals[name].add(result, y, qann_top1, expected, layers, model)
        seen += len(x)
        if progbar is not None:
            progbar.update(seen)
    if seen == 0:
        raise InvalidInputError("The data holds no image; pass at least one.")
    report = _report(totals, seen, steps, snn, layers, e_ac_pj, e_mac_pj, labelled, qat_model)
    if qat_model is not None and labelled:
        report["qann_accuracy"] = qann_correct / seen
    layer_info = [
        {
            "name": layer.name,
            "neuron": layer.neuron.name,
            "neurons": int(np.prod(layer.neuron_shape)),
            "threshold": layer.threshold,
            "step_size": layer.step_size,
            "levels": layer.levels,
        }
        for layer in layers
    ]
    report["model_name"] = snn.name
    report["neuron_model"] = layers[0].neuron.name if layers else None
    report["layers"] = layer_info
    return Analysis(report=report, layers=layer_info)


def _neuron_of(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, SpikingNeurons):
            return layer.neuron
    return "qffs"


def _report(totals, seen, steps, snn, layers, e_ac_pj, e_mac_pj, labelled, qat_model) -> dict:
    neurons = {layer.name: int(np.prod(layer.neuron_shape)) for layer in layers}
    macs = ann_macs(snn)
    first_macs = input_macs(snn)
    report = {
        "timesteps": steps,
        "samples": seen,
        "ann_macs_per_image": macs,
        "input_macs_per_image": first_macs,
        "energy_per_op_pj": {"ac": e_ac_pj, "mac": e_mac_pj},
        "ann_energy_uj_per_image": macs * e_mac_pj * 1e-6,
    }
    for name, total in totals.items():
        positive = {layer: float(value) / seen for layer, value in total.positive.items()}
        negative = {layer: float(value) / seen for layer, value in total.negative.items()}
        sops = total.sops / seen
        metrics = {
            "mean_quiet_step": total.quiet_sum / total.quiet_count if total.quiet_count else None,
            "quiet_fraction": total.quiet_count / seen,
            "spikes_per_image": sum(positive.values()) + sum(negative.values()),
            "negative_spikes_per_image": sum(negative.values()),
            "spikes_per_layer": {
                layer: {"positive": positive[layer], "negative": negative[layer]}
                for layer in positive
            },
            "firing_rate_per_layer": {
                layer: (positive[layer] + negative[layer]) / (neurons[layer] * steps)
                for layer in positive
            },
            "synaptic_ops_per_image": sops,
            "snn_energy_uj_per_image": (sops * e_ac_pj + first_macs * e_mac_pj) * 1e-6,
        }
        if labelled:
            metrics["snn_accuracy_per_step"] = [float(value) for value in total.correct / seen]
        if qat_model is not None:
            agreement = [float(value) for value in total.agree / seen]
            metrics["agreement_per_step"] = agreement
            metrics["first_full_agreement_step"] = first_full_agreement_step(agreement)
            if total.compare_counts:
                metrics["count_mismatches_per_layer"] = dict(total.mismatches)
                metrics["exact_counts"] = all(value == 0 for value in total.mismatches.values())
        report.update({report_key(name, key): value for key, value in metrics.items()})
    if labelled:
        report["snn_accuracy"] = report["snn_accuracy_per_step"][-1]
    return report


def evaluate_snn(qat_model: keras.Model, snn: keras.Model, data, **options) -> dict:
    """`analyze(snn, data, qat_model, ...)` as a JSON-ready report dict (what bin/evaluate
    writes into report.json).

    Parameters
    ----------
    qat_model, snn, data
        As for `analyze`.
    **options
        Keyword arguments of `analyze`; ``plain_if=False`` / ``rate=False`` drop a baseline.

    Returns
    -------
    dict

    Example
    -------
    >>> report = evaluate_snn(qat, snn, (x_test, y_test), batch_size=250)
    """
    baselines = [name for name in BASELINES if options.pop(name, True)]
    options.pop("num_examples", None)
    return analyze(snn, data, qat_model, baselines=baselines, **options).to_dict()
