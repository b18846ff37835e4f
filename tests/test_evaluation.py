"""Evaluation per time step, reports, and the bin/convert + bin/evaluate tools end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from snn_fixtures import flatten_model, images

import qffs_tf
from qffs_tf import evaluation, io_utils
from qffs_tf._keras import keras
from qffs_tf.evaluation import reports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def evaluated():
    model = flatten_model(5)
    x = images(40, model.input_shape[1:], 5)
    qat = qffs_tf.quantize_model(model, 2, calibration_data=x)
    labels = np.argmax(qat.predict(x, verbose=0), axis=-1)  # mechanics only: QANN's answers
    labels[:10] = (labels[:10] + 1) % 4  # ...with 10 of them made wrong
    snn = qffs_tf.convert(qat, timesteps=24)
    report = evaluation.evaluate_snn(qat, snn, (x, labels), batch_size=16, progress=False)
    return qat, snn, x, labels, report


def test_accuracy_and_agreement_per_step(evaluated):
    _, _, _, _, report = evaluated
    assert report["timesteps"] == 24 and report["samples"] == 40
    assert report["qann_accuracy"] == pytest.approx(30 / 40)
    for key in (
        "snn_accuracy_per_step",
        "agreement_per_step",
        "plain_if_agreement_per_step",
        "plain_if_snn_accuracy_per_step",
    ):
        assert len(report[key]) == 24
        assert all(0.0 <= value <= 1.0 for value in report[key])
    assert report["agreement_per_step"][-1] == 1.0  # quiet by then: exactly the QANN
    assert report["snn_accuracy"] == report["qann_accuracy"]
    assert report["exact_counts"] and report["quiet_fraction"] == 1.0
    step = report["first_full_agreement_step"]
    assert report["agreement_per_step"][step - 1] == 1.0
    assert step == 1 or report["agreement_per_step"][step - 2] < 1.0


def test_spike_and_energy_statistics_are_consistent(evaluated):
    _, snn, x, _, report = evaluated
    result = qffs_tf.simulate(snn, x)
    per_image = result.spikes_per_step().sum() / len(x)
    assert report["spikes_per_image"] == pytest.approx(per_image)
    layers = report["spikes_per_layer"]
    assert sum(v["positive"] + v["negative"] for v in layers.values()) == pytest.approx(per_image)
    for name, rate in report["firing_rate_per_layer"].items():
        spikes = layers[name]["positive"] + layers[name]["negative"]
        assert rate == pytest.approx(spikes / (result.neurons[name] * 24))
    sops = sum(v.sum() for v in result.synaptic_ops.values()) / len(x)
    assert report["synaptic_ops_per_image"] == pytest.approx(sops, rel=1e-6)
    expected_energy = (sops * 0.9 + report["input_macs_per_image"] * 4.6) * 1e-6
    assert report["snn_energy_uj_per_image"] == pytest.approx(expected_energy, rel=1e-6)
    assert report["ann_energy_uj_per_image"] == pytest.approx(report["ann_macs_per_image"] * 4.6e-6)
    # Flatten model: conv 8x8x9x4 on the input, dense 64->12, dense 12->4.
    assert report["ann_macs_per_image"] == 8 * 8 * 9 * 4 + 64 * 12 + 12 * 4


def test_reports_write_markdown_and_plots(evaluated, tmp_path):
    *_, report = evaluated
    paths = reports.write_reports(
        dict(report, float_accuracy=0.8, activation_bits=2), str(tmp_path)
    )
    text = open(paths["markdown"]).read()
    assert "| 24 |" in text and "quant_d1" in text
    for key in ("accuracy_plot", "firing_rate_plot"):
        with open(paths[key], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [name for name in os.listdir(tmp_path / "plots") if name.startswith(".")]


def run_tool(*args):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_convert_and_evaluate_tools_end_to_end(tmp_path):
    keras.utils.set_random_seed(0)
    model = qffs_tf.models.small_cnn(width=0.125)
    x, _ = qffs_tf.data.numpy_split("mnist5k", "train", limit=64)
    qat = qffs_tf.quantize_model(model, 2, calibration_data=x)
    run_dir = tmp_path / "run"
    io_utils.save_model(qat, run_dir / "qat_model.keras")
    io_utils.write_json(run_dir / "report.json", {"dataset": "mnist5k", "qann_accuracy": 0.5})

    converted = run_tool(
        "bin/convert",
        f"--run_dir={run_dir}",
        "--timesteps=4",
        "--verify_samples=16",
        "--verify_timesteps=32",
    )
    assert converted.returncode == 0, converted.stderr
    assert "exact spike counts: True" in converted.stdout
    evaluated = run_tool("bin/evaluate", f"--run_dir={run_dir}", "--limit=32", "--batch_size=16")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert report["timesteps"] == 4 and report["conversion_exact"] is True
    assert report["qann_accuracy"] != 0.5 and report["samples"] == 32  # recomputed
    for key in ("snn_accuracy_per_step", "agreement_per_step", "plain_if_agreement_per_step"):
        assert len(report[key]) == 4
    assert "mean_quiet_step" in report and report["spikes_per_image"] > 0
    assert (run_dir / "evaluation.md").exists()
    assert (run_dir / "plots" / "accuracy_per_step.png").exists()


def test_tools_report_missing_models_in_one_line(tmp_path):
    result = run_tool("bin/convert", f"--run_dir={tmp_path}")
    assert result.returncode == 2
    assert "No QAT model" in result.stderr and "Traceback" not in result.stderr
    result = run_tool("bin/evaluate", f"--run_dir={tmp_path}")
    assert result.returncode == 2 and "bin/train" in result.stderr


def test_markdown_table_aligns_columns_and_refuses_ragged_rows():
    markdown_table = evaluation.reports.markdown_table
    table = markdown_table(["model", "ms"], [["qann", "0.10"], ["snn", 1.5]], "lr")
    lines = ["| model | ms |", "|---|---:|", "| qann | 0.10 |", "| snn | 1.5 |"]
    assert table.splitlines() == lines
    with pytest.raises(ValueError, match="a row has 1 cells for 2 columns"):
        markdown_table(["model", "ms"], [["qann"]], "lr")
    with pytest.raises(ValueError, match="align"):
        markdown_table(["model", "ms"], [], "lx")
