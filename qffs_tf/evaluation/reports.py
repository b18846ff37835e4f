"""Human-readable results: a console table, a markdown report and PNG plots."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qffs_tf.io_utils import atomic_path, atomic_write_text  # noqa: E402


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str) -> str:
    """A markdown table: a header row, an alignment row and one row per entry.

    Parameters
    ----------
    header : sequence of str
        Column titles.
    rows : iterable of sequences
        Cells, already formatted (each is passed through `str`).
    align : str
        One letter per column: "l" left, "r" right.

    Returns
    -------
    str
        The table, without a trailing newline.

    Raises
    ------
    ValueError
        If `align` or a row does not have one entry per column.

    Example
    -------
    >>> print(markdown_table(["model", "ms"], [["qann", "0.10"]], "lr"))
    | model | ms |
    |---|---:|
    | qann | 0.10 |
    """
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align needs one of 'l'/'r' per column ({len(header)}), got {align!r}")
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "".join("---:|" if a == "r" else "---|" for a in align),
    ]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells for {len(header)} columns: {row!r}")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


_COLUMNS = (  # (header, report key) of the per-step table, in order
    ("SNN acc %", "snn_accuracy_per_step"),
    ("agreement %", "agreement_per_step"),
    ("plain-IF acc %", "plain_if_snn_accuracy_per_step"),
    ("plain-IF agreement %", "plain_if_agreement_per_step"),
    ("rate acc %", "rate_accuracy_per_step"),
    ("rate agreement %", "rate_agreement_per_step"),
)


def step_table(report: dict) -> str:
    """Accuracy and agreement per time step: the SNN beside the plain-IF ablation and the
    rate-coded baseline (markdown table; columns the report lacks are left out)."""
    columns = [(header, report[key]) for header, key in _COLUMNS if report.get(key)]
    rows = (
        [step, *(_percent(values[step - 1]) for _, values in columns)]
        for step in range(1, report["timesteps"] + 1)
    )
    header = ["step", *(header for header, _ in columns)]
    return markdown_table(header, rows, "r" * len(header))


def _last(report: dict, key: str):
    values = report.get(key)
    return values[-1] if values else None


def summary_lines(report: dict) -> list[str]:
    """The headline numbers, one per line (missing ones shown as '-')."""
    steps = report["timesteps"]
    bits = report.get("activation_bits")
    lines = [
        f"float accuracy:   {_percent(report.get('float_accuracy'))} %",
        f"QANN accuracy:    {_percent(report.get('qann_accuracy'))} %"
        + (f" ({bits}-bit activations)" if bits else ""),
        f"SNN accuracy:     {_percent(report.get('snn_accuracy'))} % after {steps} steps",
        f"baselines at T = {steps}: plain IF "
        f"{_percent(_last(report, 'plain_if_snn_accuracy_per_step'))} %, rate-coded "
        f"{_percent(_last(report, 'rate_accuracy_per_step'))} %",
        f"full agreement from step: {report.get('first_full_agreement_step')} (SNN), "
        f"{report.get('plain_if_first_full_agreement_step')} (plain IF), "
        f"{report.get('rate_first_full_agreement_step')} (rate)",
        f"mean quiet step:  {report.get('mean_quiet_step')} "
        f"(quiet within T: {_percent(report.get('quiet_fraction'))} %)",
        f"spikes per image: {report['spikes_per_image']:.1f} "
        f"({report.get('negative_spikes_per_image', 0):.1f} negative)"
        + (
            f"; rate-coded {report['rate_spikes_per_image']:.1f}"
            if "rate_spikes_per_image" in report
            else ""
        ),
        f"synaptic ops / image: {report['synaptic_ops_per_image']:.3g} "
        f"vs ANN MACs {report['ann_macs_per_image']:.3g}",
        f"energy / image: SNN {report['snn_energy_uj_per_image']:.3g} uJ, "
        f"ANN {report['ann_energy_uj_per_image']:.3g} uJ",
    ]
    return lines


def markdown_report(report: dict) -> str:
    """The evaluation as markdown: headline numbers, the per-step table, spikes per layer."""
    layers = report["firing_rate_per_layer"]
    mismatches = report.get("count_mismatches_per_layer") or {}
    layer_rows = (
        [
            name,
            f"{report['spikes_per_layer'][name]['positive']:.1f}",
            f"{report['spikes_per_layer'][name]['negative']:.1f}",
            f"{rate:.4f}",
            mismatches.get(name, "-"),
        ]
        for name, rate in layers.items()
    )
    layer_table = markdown_table(
        ["layer", "+spikes / image", "-spikes / image", "firing rate", "mismatches"],
        layer_rows,
        "lrrrr",
    )
    return "\n".join(
        [
            "# QFFS evaluation",
            "",
            *[f"- {line}" for line in summary_lines(report)],
            "",
            "## Accuracy and agreement with the QANN per time step",
            "",
            "Plain IF: the same coding without negative spikes (the ablation). Rate: the "
            "conventional rate-coded conversion (constant input current, threshold L*s, mean "
            "charge per step), the baseline published latency claims are made against.",
            "",
            step_table(report),
            "",
            "## Spikes per layer",
            "",
            "Mismatches: neurons whose final net spike count differs from the QANN's integer "
            "activation (zero for every sample that became quiet).",
            "",
            layer_table,
            "",
            "![accuracy per step](plots/accuracy_per_step.png)",
            "![firing rates](plots/firing_rate_per_layer.png)",
            "",
        ]
    )


def _save_figure(figure, path: str) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)


_VARIANTS = (  # report-key metric names per SNN variant, their label and line style
    ({"accuracy": "snn_accuracy_per_step", "agreement": "agreement_per_step"}, "QFFS SNN", "o-"),
    (
        {"accuracy": "plain_if_snn_accuracy_per_step", "agreement": "plain_if_agreement_per_step"},
        "plain IF",
        "s--",
    ),
    (
        {"accuracy": "rate_accuracy_per_step", "agreement": "rate_agreement_per_step"},
        "rate-coded",
        "^-.",
    ),
)


def plot_accuracy(report: dict, path: str) -> None:
    """Accuracy and agreement vs time step: QFFS, plain IF and rate-coded, the QANN as a line."""
    steps = list(range(1, report["timesteps"] + 1))
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, metric in zip(axes, ("accuracy", "agreement"), strict=True):
        for keys, label, style in _VARIANTS:
            if keys[metric] in report:
                axis.plot(steps, [100 * v for v in report[keys[metric]]], style, label=label)
    if report.get("qann_accuracy") is not None:
        axes[0].axhline(100 * report["qann_accuracy"], color="gray", linestyle=":", label="QANN")
    axes[0].set(xlabel="time step", ylabel="accuracy (%)", title="Accuracy per time step")
    axes[1].set(
        xlabel="time step", ylabel="top-1 agreement with QANN (%)", title="Agreement with the QANN"
    )
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend()
        axis.set_xticks(steps if len(steps) <= 16 else steps[:: max(1, len(steps) // 16)])
    _save_figure(figure, path)


def plot_firing_rates(report: dict, path: str) -> None:
    """Firing rate (spikes per neuron per step) of every neuron layer, positive and negative."""
    names = list(report["firing_rate_per_layer"])
    figure, axis = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 3.8))
    positions = range(len(names))
    axis.bar(positions, [report["firing_rate_per_layer"][n] for n in names], label="QFFS")
    if "plain_if_firing_rate_per_layer" in report:
        axis.plot(
            positions,
            [report["plain_if_firing_rate_per_layer"][n] for n in names],
            "k_",
            markersize=20,
            label="plain IF",
        )
    if "rate_firing_rate_per_layer" in report:
        axis.plot(
            positions,
            [report["rate_firing_rate_per_layer"][n] for n in names],
            "r_",
            markersize=20,
            label="rate-coded",
        )
    axis.set_xticks(list(positions), names, rotation=45, ha="right")
    axis.set(ylabel="spikes / neuron / step", title="Firing rate per layer")
    axis.legend()
    _save_figure(figure, path)


def write_reports(report: dict, run_dir: str) -> dict[str, str]:
    """evaluation.md and the plots in run_dir; returns their paths."""
    plots = os.path.join(run_dir, "plots")
    os.makedirs(plots, exist_ok=True)
    paths = {
        "markdown": os.path.join(run_dir, "evaluation.md"),
        "accuracy_plot": os.path.join(plots, "accuracy_per_step.png"),
        "firing_rate_plot": os.path.join(plots, "firing_rate_per_layer.png"),
    }
    plot_accuracy(report, paths["accuracy_plot"])
    plot_firing_rates(report, paths["firing_rate_plot"])
    atomic_write_text(paths["markdown"], markdown_report(report))
    return paths
