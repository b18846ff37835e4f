"""`verify`: the user's proof that a conversion is right.

Runs the QAT network (QANN) and the SNN on the same images and reports, per neuron layer,
whether every neuron's final net spike count equals the QANN's integer activation, why any
that differs does (tie, inherited or unexplained: `qffs_tf.certificate`), and how often the
top-1 answers agree after each time step.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qffs_tf._keras import keras
from qffs_tf.certificate import LocalQANN, certify_float, certify_integer
from qffs_tf.certificate import tie_candidates as certificate_tie_candidates
from qffs_tf.errors import InvalidInputError
from qffs_tf.simulation import SimulationResult, simulate
from qffs_tf.snn.integer import is_integer_snn
from qffs_tf.snn.neuron_layer import SpikingNeurons


@dataclasses.dataclass
class LayerCheck:
    """Agreement of one neuron layer with the QANN activation it replaced.

    `mismatches` = `ties` + `inherited` + `unexplained` (see `qffs_tf.certificate`).
    """

    snn_layer: str
    qann_layer: str
    neurons: int  # per sample
    mismatches: int  # over the whole batch
    max_count_error: int
    ties: int = 0
    inherited: int = 0
    unexplained: int = 0

    @property
    def exact(self) -> bool:
        return self.mismatches == 0

    @property
    def certified(self) -> bool:
        return self.unexplained == 0


@dataclasses.dataclass
class VerificationReport:
    """What `verify` found: `exact` (no mismatch at all) and `certified` (none unexplained).

    `reference` names what the SNN was compared with: "qat" (the QAT model's float forward
    pass) or "integer" (`qffs_tf.integer_reference`, for SNNs converted with
    arithmetic="integer"); for the latter, `reference_checks` compares, per layer, that
    integer reference with the QAT model's float pass, classified by the same certificate
    (they may differ at float32 ties of the float pass and downstream of them, nowhere else),
    and `reference_logit_difference` is their largest logit difference.
    """

    layers: list[LayerCheck]
    agreement_per_step: list[float]  # top-1 agreement SNN vs QANN after steps 1..T
    max_logit_error: float  # max |SNN logits after T steps - QANN logits|
    quiet_fraction: float  # samples with no spike left by the last step
    samples: int
    simulation: SimulationResult
    reference: str = "qat"
    reference_checks: list[LayerCheck] | None = None
    reference_logit_difference: float | None = None

    @property
    def exact(self) -> bool:
        return all(layer.exact for layer in self.layers)

    @property
    def certified(self) -> bool:
        return all(layer.certified for layer in self.layers)

    @property
    def ties(self) -> int:
        return sum(layer.ties for layer in self.layers)

    @property
    def inherited(self) -> int:
        return sum(layer.inherited for layer in self.layers)

    @property
    def unexplained(self) -> int:
        return sum(layer.unexplained for layer in self.layers)

    @property
    def verdict(self) -> str:
        """The result in words: "exact", "certified: ..." or "NOT certified: ..."."""
        if self.exact:
            return "exact"
        counts = f"{self.ties} ties, {self.inherited} inherited, {self.unexplained} unexplained"
        return f"certified: {counts}" if self.certified else f"NOT certified: {counts}"

    def first_full_agreement_step(self) -> int | None:
        """First step (1-based) from which on top-1 agreement stays 1.0."""
        return first_full_agreement_step(self.agreement_per_step)

    def __str__(self) -> str:
        header = ("SNN layer", "QANN layer", "neurons", "mismatches", "ties", "inherited")
        header += ("unexpl.",)
        width = 2 + max([28] + [len(c.snn_layer) for c in self.layers])
        qann_width = 2 + max([28] + [len(c.qann_layer) for c in self.layers])
        lines = [
            f"{header[0]:<{width}}{header[1]:<{qann_width}}"
            + "".join(f"{h:>11}" for h in header[2:])
        ]
        for layer in self.layers:
            numbers = (layer.neurons, layer.mismatches, layer.ties, layer.inherited)
            lines.append(
                f"{layer.snn_layer:<{width}}{layer.qann_layer:<{qann_width}}"
                + "".join(f"{n:>11}" for n in (*numbers, layer.unexplained))
            )
        shown = self.agreement_per_step[:16]
        agreement = " ".join(f"{value:.3f}" for value in shown)
        if len(self.agreement_per_step) > len(shown):
            agreement += f" ... ({len(self.agreement_per_step)} steps)"
        reference = "QAT model" if self.reference == "qat" else "integer reference QANN"
        lines += [
            f"verdict: {self.verdict} (against the {reference})",
            f"exact spike counts: {self.exact}   samples: {self.samples}   "
            f"quiet by the last step: {self.quiet_fraction:.3f}",
            f"top-1 agreement per step: {agreement}",
            f"max |logit error| after {len(self.agreement_per_step)} steps: "
            f"{self.max_logit_error:.3g}",
        ]
        if self.reference_checks is not None:
            checks = self.reference_checks
            lines.append(
                "integer reference vs the QAT model's float pass: "
                f"{sum(c.mismatches for c in checks)} levels differ ({sum(c.ties for c in checks)}"
                f" ties, {sum(c.inherited for c in checks)} inherited, "
                f"{sum(c.unexplained for c in checks)} unexplained), max |logit difference| "
                f"{self.reference_logit_difference:.3g}"
            )
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


def tie_candidates(qat_model: keras.Model, x, timesteps: int = 0) -> np.ndarray:
    """Per image, the neurons whose QANN pre-activation is within the certificate's tie
    tolerance of a rounding boundary (`qffs_tf.certificate.tie_candidates`).

    An image with none must give the same levels in every float32 evaluation order (the
    SNN's, LiteRT's), so any larger difference in its outputs is unexplained.

    Parameters
    ----------
    qat_model : tf_keras.Model
        The QFFS QAT model.
    x : array
        Images (one batch).
    timesteps : int
        T of the SNN compared (its additions over time count as roundings); 0 for a QANN.

    Returns
    -------
    numpy.ndarray
        (images,) counts.

    Example
    -------
    >>> tie_candidates(qat, x_test[:256], timesteps=8).sum()
    0
    """
    x = _check_batch(x)
    local = LocalQANN(qat_model)
    names = [act.name for act in local.acts]
    levels, _ = qann_integer_activations(
        qat_model, x, [local.sources[n] for n in names], [local.step_sizes[n] for n in names]
    )
    return certificate_tie_candidates(local, x, dict(zip(names, levels, strict=True)), timesteps)


def _check_batch(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim == 0 or len(x) == 0:
        raise InvalidInputError(
            "verify needs at least one image; got an empty batch (pass e.g. x_test[:64])."
        )
    return x


def _float_checks(qat_model, snn, x, result) -> tuple[list[LayerCheck], np.ndarray]:
    """Layer checks against the QAT model's float pass, classified by the certificate."""
    if_layers = [layer for layer in snn.layers if isinstance(layer, SpikingNeurons)]
    expected, qann_logits = qann_integer_activations(
        qat_model,
        x,
        [layer.source for layer in if_layers],
        [layer.step_size for layer in if_layers],
    )
    qann_levels = {layer.name: want for layer, want in zip(if_layers, expected, strict=True)}
    snn_levels = {layer.name: result.counts[layer.name] for layer in if_layers}
    classes = certify_float(qat_model, x, snn_levels, qann_levels, result.timesteps)
    checks = []
    for layer, want in zip(if_layers, expected, strict=True):
        got = snn_counts_in_qann_units(layer, result.counts[layer.name], snn)
        checks.append(_check(layer.name, layer.source, got, want, classes[layer.name]))
    return checks, qann_logits


def _integer_checks(qat_model, snn, x, result):
    """Layer checks of an integer-mode SNN against the integer reference QANN (every neuron,
    before any moved max-pool), and how that reference differs from the QAT model."""
    from qffs_tf.conversion.integer_reference import integer_reference

    reference = integer_reference(qat_model)
    levels = reference(x)
    snn_levels = {name: result.counts[name] for name in reference.activations}
    classes = certify_integer(reference, x, snn_levels, levels)
    checks = [
        _check(name, name, snn_levels[name], levels[name], classes[name])
        for name in reference.activations
    ]
    # The integer reference against the tfmot model's own float pass (in its units).
    if_layers = [snn.get_layer(name) for name in reference.activations]
    qat_levels, qat_logits = qann_integer_activations(
        qat_model,
        x,
        [layer.source for layer in if_layers],
        [layer.step_size for layer in if_layers],
    )
    qat_by_name = {layer.name: want for layer, want in zip(if_layers, qat_levels, strict=True)}
    ref_levels = {name: levels[name] for name in reference.activations}
    ref_classes = certify_float(qat_model, x, ref_levels, qat_by_name, timesteps=0)
    differences = [
        _check(
            layer.name,
            layer.source,
            snn_counts_in_qann_units(layer, levels[layer.name], snn),
            qat_by_name[layer.name],
            ref_classes[layer.name],
        )
        for layer in if_layers
    ]
    logit_difference = float(np.abs(levels["logits"] - qat_logits).max())
    return checks, levels["logits"], differences, logit_difference


def _check(snn_name, qann_name, got, want, classes) -> LayerCheck:
    error = np.abs(got - want)
    return LayerCheck(
        snn_name,
        qann_name,
        int(np.prod(want.shape[1:])),
        int((error > 0).sum()),
        int(error.max(initial=0)),
        ties=classes.ties,
        inherited=classes.inherited,
        unexplained=classes.unexplained,
    )


def verify(
    qat_model: keras.Model,
    snn: keras.Model,
    x,
    timesteps: int | None = None,
    mode: str = "layerwise",
) -> VerificationReport:
    """Compare the SNN with the QANN on images `x`, neuron by neuron and step by step.

    Every mismatched neuron is classified as a tie, inherited or unexplained
    (`qffs_tf.certificate`). An SNN converted with arithmetic="integer" is compared with the
    integer reference QANN (`qffs_tf.integer_reference`), bit for bit.

    Parameters
    ----------
    qat_model : tf_keras.Model
        The QAT model the SNN was converted from.
    snn : tf_keras.Model
        A model from `qffs_tf.convert`.
    x : array
        A batch of images (run as one batch).
    timesteps : int, optional
        Steps to simulate (default: the SNN's own); long enough to become quiet.
    mode : {"layerwise", "stepwise"}
        Simulation mode.

    Returns
    -------
    VerificationReport
        `.exact`, `.certified`, `.verdict`, `.layers`, `.agreement_per_step`, ...

    Raises
    ------
    InvalidInputError
        An empty batch.

    Example
    -------
    >>> report = qffs_tf.verify(qat, snn, x_test[:64], timesteps=32)
    >>> report.verdict
    'exact'
    """
    x = _check_batch(x)
    result = simulate(snn, x, timesteps=timesteps, mode=mode)
    differences = logit_difference = None
    if is_integer_snn(snn):
        checks, qann_logits, differences, logit_difference = _integer_checks(
            qat_model, snn, x, result
        )
        reference = "integer"
    else:
        checks, qann_logits = _float_checks(qat_model, snn, x, result)
        reference = "qat"
    qann_top1 = np.argmax(qann_logits, axis=-1)
    agreement = (np.argmax(result.logits, axis=-1) == qann_top1[:, None]).mean(axis=0)
    return VerificationReport(
        layers=checks,
        agreement_per_step=[float(value) for value in agreement],
        max_logit_error=float(np.abs(result.final_logits - qann_logits).max()),
        quiet_fraction=float((result.quiet_step > 0).mean()),
        samples=int(result.logits.shape[0]),
        simulation=result,
        reference=reference,
        reference_checks=differences,
        reference_logit_difference=logit_difference,
    )
