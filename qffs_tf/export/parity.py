"""Export all four TFLite kinds of a run and check each file against its Keras reference.

- qann_float vs the QAT model's logits; snn_full vs `snn.predict`; snn_step, stepped T
  times, per step vs `qffs_tf.simulate(...).logits` and at the end vs the snn_full file.
- A float file may differ from its reference by float rounding (within FLOAT_TOLERANCE of the
  logit scale) and, beyond that, only on images where some neuron's QANN pre-activation lies
  within the certificate's tie tolerance of a rounding boundary (`verification.
  tie_candidates`): there a different summation order (LiteRT's kernels, the SNN's sum over
  time) may round a level the other way, and everything downstream inherits it. Such images
  count as `tie_samples`; a difference on any other image is `unexplained_samples` and fails
  the check. Top-1 agreement is reported either way.
- Files of an SNN converted with arithmetic="integer" must equal their reference bit for bit
  (`bit_exact`).
- qann_int8, and SNN files with int8 weights: approximations (see export._quantizer_int8 and
  `export_tflite(int8_weights=True)`), so they report their accuracy next to the reference's
  and their top-1 agreement with it; no exactness is claimed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from qffs_tf._keras import keras
from qffs_tf.export import runtime as export_runtime
from qffs_tf.export.tflite import KINDS, ExportResult, export_tflite
from qffs_tf.snn.timesteps import timesteps_of, with_timesteps

__all__ = ["FLOAT_TOLERANCE", "export_all", "check_parity", "format_table"]

# Float files: max |tflite - keras| <= FLOAT_TOLERANCE * max |keras logit|. Float32 re-ordered
# accumulations give ~1e-7 relative; the margin absorbs deeper models.
FLOAT_TOLERANCE = 1e-4


def export_all(
    qat_model: keras.Model,
    snn: keras.Model,
    out_dir: str | os.PathLike,
    calibration_images: np.ndarray,
    kinds: tuple[str, ...] = KINDS,
    step_batch_size: int = 1,
    int8_io: bool = True,
    snn_int8_weights: bool = False,
) -> dict[str, ExportResult]:
    """Write `<out_dir>/<kind>.tflite` for each kind; the SNN kinds use the SNN's own T (and
    int8 weights with `snn_int8_weights`)."""
    results = {}
    for kind in kinds:
        path = Path(out_dir) / f"{kind}.tflite"
        if kind.startswith("qann"):
            results[kind] = export_tflite(
                qat_model,
                path,
                kind,
                representative_data=calibration_images,
                int8_io=int8_io,
            )
        else:
            results[kind] = export_tflite(
                snn,
                path,
                kind,
                batch_size=step_batch_size if kind == "snn_step" else None,
                int8_weights=snn_int8_weights,
            )
    return results


def _compare(
    tflite: np.ndarray,
    reference: np.ndarray,
    labels=None,
    candidates: np.ndarray | None = None,
    bit_exact: bool = False,
) -> dict[str, Any]:
    """Compare logits ((N, classes), or (N, T, classes) per step) and classify differences.

    `candidates`: per image, the tie candidates (see the module docstring); None treats every
    difference beyond the float tolerance as unexplained. `bit_exact`: integer-mode files,
    where any difference at all is unexplained.
    """
    scale = float(np.abs(reference).max()) or 1.0
    difference = np.abs(tflite - reference).reshape(len(reference), -1)
    error = float(difference.max(initial=0.0))
    final = (lambda v: v[:, -1]) if reference.ndim == 3 else (lambda v: v)
    agreement = float(np.mean(final(tflite).argmax(-1) == final(reference).argmax(-1)))
    per_image = difference.max(axis=1, initial=0.0)
    allowed = 0.0 if bit_exact else FLOAT_TOLERANCE * scale
    differing = per_image > allowed
    ties = np.zeros_like(differing)
    if candidates is not None and not bit_exact:
        ties = differing & (np.asarray(candidates) > 0)
    unexplained = differing & ~ties
    out = {
        "max_abs_error": error,
        "logit_scale": scale,
        "relative_error": error / scale,
        "top1_agreement": agreement,
        "tolerance": 0.0 if bit_exact else FLOAT_TOLERANCE,
        "bit_exact": bool(error == 0.0),
        "differing_samples": int(differing.sum()),
        "tie_samples": int(ties.sum()),
        "unexplained_samples": int(unexplained.sum()),
        "passed": bool(not unexplained.any()),
    }
    if labels is not None:
        out["accuracy"] = float(np.mean(final(tflite).argmax(-1) == labels))
        out["reference_accuracy"] = float(np.mean(final(reference).argmax(-1) == labels))
    return out


def check_parity(
    files: dict[str, ExportResult],
    qat_model: keras.Model,
    snn: keras.Model,
    images: np.ndarray,
    labels: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every exported file with the LiteRT interpreter and compare it (see module doc)."""
    from qffs_tf.simulation import simulate
    from qffs_tf.snn.integer import is_integer_snn
    from qffs_tf.verification import tie_candidates

    results: dict[str, dict[str, Any]] = {}
    images = np.asarray(images, np.float32)
    samples = len(images)
    qann = None
    if any(kind.startswith("qann") for kind in files):
        qann = qat_model.predict(images, verbose=0, batch_size=256)
    timesteps = files["snn_full"].timesteps if "snn_full" in files else timesteps_of(snn)
    integer = is_integer_snn(snn)
    candidates = {}  # the same tolerance for every order; T adds the SNN's sums over time
    if "qann_float" in files:
        candidates["qann"] = tie_candidates(qat_model, images, timesteps=0)
    if not integer and any(kind.startswith("snn") for kind in files):
        candidates["snn"] = tie_candidates(qat_model, images, timesteps=timesteps)
    full_logits = None
    for kind, exported in files.items():
        started = time.perf_counter()
        if kind == "qann_float":
            lite = export_runtime.predict(exported.path, images)
            out = _compare(lite, qann, labels, candidates["qann"])
        elif kind == "qann_int8":
            out = _compare(export_runtime.predict(exported.path, images), qann, labels)
            out["passed"] = None  # an approximation: accuracy is reported, not exactness
            out["note"] = "int8 approximation of the QANN; compare accuracy with reference"
        elif kind == "snn_full":
            model = with_timesteps(snn, timesteps)
            full_logits = export_runtime.predict(exported.path, images)
            reference = model.predict(images, verbose=0, batch_size=256)
            out = _compare(full_logits, reference, labels, candidates.get("snn"), integer)
            out["timesteps"] = timesteps
        else:
            per_step, _ = export_runtime.stream(exported.path, images, timesteps)
            reference = simulate(snn, images, timesteps=timesteps).logits
            out = _compare(per_step, reference, None, candidates.get("snn"), integer)
            out["timesteps"] = timesteps
            if labels is not None:
                out["accuracy"] = float(np.mean(per_step[:, -1].argmax(-1) == labels))
            if full_logits is not None:
                versus_full = _compare(
                    per_step[:, -1], full_logits, None, candidates.get("snn"), integer
                )
                out["max_abs_error_vs_snn_full"] = versus_full["max_abs_error"]
                out["top1_agreement_vs_snn_full"] = versus_full["top1_agreement"]
                out["passed"] = out["passed"] and versus_full["passed"]
        if kind.startswith("snn") and exported.weights == "int8":
            out["passed"] = None  # an approximation: accuracy is reported, not exactness
            out["note"] = "int8 weights: an approximation of the SNN; compare accuracy"
        out["samples"] = samples
        out["seconds"] = time.perf_counter() - started
        results[kind] = out
    return results


def format_table(files: dict[str, ExportResult], parity: dict[str, dict[str, Any]]) -> str:
    """A small plain-text table: kind, size, max abs error, top-1 agreement, accuracy, verdict."""
    rows = [("kind", "KiB", "max |err|", "rel err", "top-1 agree", "accuracy", "ref acc", "ok")]
    for kind, exported in files.items():
        p = parity.get(kind, {})

        def fmt(key, spec, p=p):
            return format(p[key], spec) if p.get(key) is not None else "-"

        verdict = {True: "yes", False: "NO", None: "approx"}[p.get("passed")]
        if p.get("tie_samples"):
            verdict += f" ({p['tie_samples']} tie images)"
        if p.get("unexplained_samples") and p.get("passed") is False:
            verdict += f" ({p['unexplained_samples']} unexplained)"
        rows.append(
            (
                kind,
                f"{exported.bytes / 1024:.1f}",
                fmt("max_abs_error", ".2e"),
                fmt("relative_error", ".1e"),
                fmt("top1_agreement", ".4f"),
                fmt("accuracy", ".4f"),
                fmt("reference_accuracy", ".4f"),
                verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)
