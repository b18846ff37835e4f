#!/usr/bin/env python3
"""Latency study: how many time steps QFFS needs, by depth and bit width, against rate coding.

For each model (small_cnn, ResNet-20, ResNet-18 at width 0.25) and activation bit width (1-4)
it trains on mnist5k with a SHORT schedule (float pretraining once per model, then QAT per
bit width from those float weights), then measures on the 1,000 test digits:

- the QANN's accuracy;
- the QFFS SNN: accuracy and top-1 agreement with the QANN at every step, the first step
  from which agreement stays 100 %, the mean and largest quiet step, and the T that
  `qffs_tf.choose_timesteps` picks on 256 training images;
- the conventional rate-coded SNN (`convert(..., neuron="rate")`: constant input current,
  threshold L*s, no negative spikes) at the same steps.

Run by hand (not part of `make test`; about 1-3 hours on a 2-core CPU), smallest
configurations first; results are written after every configuration to
benchmarks/results/latency_study.json and a finished configuration is skipped on a re-run:

    nohup .venv/bin/python benchmarks/latency_study.py > latency_study.log 2>&1 &
    .venv/bin/python benchmarks/latency_study.py --table_only     # print the table
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from qffs_tf import cli  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# name: (zoo name, width, float epochs, QAT epochs)
MODELS = {
    "small_cnn": ("small_cnn", 1.0, 6, 3),
    "resnet20": ("resnet20", 0.25, 4, 2),
    "resnet18": ("resnet18", 0.25, 3, 2),
}

flags.DEFINE_list("models", list(MODELS), f"Models, in order: {', '.join(MODELS)}.")
flags.DEFINE_list("bits", ["1", "2", "3", "4"], "Activation bit widths.")
flags.DEFINE_string("output", os.path.join(RESULTS, "latency_study.json"), "Results file.")
flags.DEFINE_string("runs", os.path.join(RESULTS, "latency_runs"), "Training run folders.")
flags.DEFINE_integer("test_samples", 1000, "Test digits to evaluate on.", lower_bound=1)
flags.DEFINE_integer("calibration_samples", 256, "Training digits for choose_timesteps.")
flags.DEFINE_integer("max_timesteps", 256, "Longest window simulated.", lower_bound=1)
flags.DEFINE_bool("table_only", False, "Print the table of the results file and exit.")

FLAGS = flags.FLAGS


def _train(model: str, bits: int) -> str:
    """Train (or reuse) the run of one configuration; returns its folder."""
    from qffs_tf.training import TrainConfig, train

    zoo, width, float_epochs, qat_epochs = MODELS[model]
    first = int(FLAGS.bits[0])
    run_dir = os.path.join(FLAGS.runs, f"{model}_{bits}bit")
    config = TrainConfig(
        run_dir=run_dir,
        dataset="mnist5k",
        model=zoo,
        width=width,
        activation_bits=bits,
        float_epochs=float_epochs if bits == first else 0,
        qat_epochs=qat_epochs,
        augment=True,
        seed=0,
        verbose=2,
    )
    if bits != first:  # the same float weights for every bit width of a model
        config.init_checkpoint = os.path.join(FLAGS.runs, f"{model}_{first}bit")
    train(config)
    return run_dir


def _batch_size(timesteps: int) -> int:
    """Images per layerwise batch: the window is held at once, so fewer for long windows."""
    return int(min(100, max(8, 2048 // timesteps)))


def _per_step(snn, x, labels, qann_top1):
    """Accuracy and agreement with the QANN after every step, and quiet steps."""
    import numpy as np

    from qffs_tf.simulation import simulate

    correct = agree = None
    quiet = []
    size = _batch_size(_steps(snn))
    for start in range(0, len(x), size):
        result = simulate(snn, x[start : start + size])
        top1 = np.argmax(result.logits, axis=-1)
        hits = (top1 == labels[start : start + size, None]).sum(axis=0)
        same = (top1 == qann_top1[start : start + size, None]).sum(axis=0)
        correct = hits if correct is None else correct + hits
        agree = same if agree is None else agree + same
        quiet.append(result.quiet_step)
    quiet = np.concatenate(quiet)
    return correct / len(x), agree / len(x), quiet


def _steps(snn) -> int:
    from qffs_tf.snn.timesteps import timesteps_of

    return timesteps_of(snn)


def _evaluate(model: str, bits: int, run_dir: str) -> dict:
    import numpy as np

    import qffs_tf
    from qffs_tf import data, io_utils
    from qffs_tf.verification import first_full_agreement_step

    qat = qffs_tf.load_model(os.path.join(run_dir, "qat_model.keras"))
    report = io_utils.read_json(os.path.join(run_dir, "report.json"), default={})
    x, y = data.numpy_split("mnist5k", "test", limit=FLAGS.test_samples)
    x_cal, _ = data.numpy_split("mnist5k", "train", limit=FLAGS.calibration_samples)
    levels = 2**bits - 1
    started = time.perf_counter()
    choice = qffs_tf.choose_timesteps(qat, x_cal, max_timesteps=FLAGS.max_timesteps)
    window = int(min(FLAGS.max_timesteps, max(32, 2 * choice.timesteps, 4 * levels)))
    qann_logits = qat.predict(x, verbose=0, batch_size=100)
    qann_top1 = np.argmax(qann_logits, axis=-1)
    out = {
        "model": model,
        "zoo_model": MODELS[model][0],
        "width": MODELS[model][1],
        "float_epochs": MODELS[model][2],
        "qat_epochs": MODELS[model][3],
        "bits": bits,
        "levels": levels,
        "float_accuracy": report.get("float_accuracy"),
        "qann_accuracy": float(np.mean(qann_top1 == y)),
        "samples": int(len(x)),
        "window": window,
        "auto_timesteps": choice.timesteps,
        "calibration_quiet_distribution": choice.distribution(),
    }
    for neuron in ("qffs", "rate"):
        snn = qffs_tf.convert(qat, window, neuron=neuron)
        accuracy, agreement, quiet = _per_step(snn, x, y, qann_top1)
        prefix = "" if neuron == "qffs" else "rate_"
        out[f"{prefix}accuracy_per_step"] = [float(v) for v in accuracy]
        out[f"{prefix}agreement_per_step"] = [float(v) for v in agreement]
        out[f"{prefix}first_full_agreement_step"] = first_full_agreement_step(list(agreement))
        if neuron == "qffs":
            quiet_ok = quiet[quiet > 0]
            out["mean_quiet_step"] = float(quiet_ok.mean()) if quiet_ok.size else None
            out["max_quiet_step"] = int(quiet_ok.max()) if quiet_ok.size else None
            out["quiet_fraction"] = float((quiet > 0).mean())
    out["seconds"] = time.perf_counter() - started
    return out


def _at(result: dict, key: str, step: int | None) -> str:
    values = result[key]
    if step is None or step < 1:
        return "-"
    return f"{100 * values[min(step, len(values)) - 1]:.1f}"


def table(results: list[dict]) -> str:
    """Markdown table: QFFS steps and accuracy beside the rate-coded SNN at the same T."""
    from qffs_tf.evaluation.reports import markdown_table

    header = [
        "model",
        "bits",
        "L",
        "QANN %",
        "QFFS: full agreement from step",
        "mean / max quiet step",
        "auto T",
        "QFFS % at T = L / 2L / full agr.",
        "rate % at T = L / 2L / full agr. / window",
    ]
    rows = []
    for r in results:
        steps = (r["levels"], 2 * r["levels"], r["first_full_agreement_step"])
        qffs = " / ".join(_at(r, "accuracy_per_step", t) for t in steps)
        rate = " / ".join(_at(r, "rate_accuracy_per_step", t) for t in (*steps, r["window"]))
        quiet = "-"
        if r["max_quiet_step"]:
            quiet = f"{r['mean_quiet_step']:.2f} / {r['max_quiet_step']}"
        rows.append(
            [
                r["model"],
                r["bits"],
                r["levels"],
                f"{100 * r['qann_accuracy']:.1f}",
                r["first_full_agreement_step"],
                quiet,
                r["auto_timesteps"],
                qffs,
                f"{rate} (T={r['window']})",
            ]
        )
    return markdown_table(header, rows, "lrrrrlrll")


def main(argv: list[str]) -> None:
    del argv
    with cli.quiet_tensorflow():
        from qffs_tf import io_utils

    results = io_utils.read_json(FLAGS.output, default=[]) or []
    if FLAGS.table_only:
        print(table(results))
        return
    done = {(r["model"], r["bits"]) for r in results}
    for model in FLAGS.models:
        if model not in MODELS:
            raise cli.UsageError(f"--models: unknown model {model!r}; use {', '.join(MODELS)}.")
        for bits in (int(b) for b in FLAGS.bits):
            if (model, bits) in done:
                continue
            started = time.perf_counter()
            run_dir = _train(model, bits)
            result = _evaluate(model, bits, run_dir)
            result["total_seconds"] = time.perf_counter() - started
            results.append(result)
            io_utils.write_json(FLAGS.output, results)
            print(table([result]).splitlines()[-1], flush=True)
    print(table(results))


if __name__ == "__main__":
    cli.run(main)
