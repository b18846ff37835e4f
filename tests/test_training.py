"""training.train: end-to-end run, reports, exact resume after a simulated kill, no retraining."""

import json
import os

import numpy as np
import pytest

from qffs_tf import io_utils, training
from qffs_tf._keras import tf
from qffs_tf.serialization import load_model
from qffs_tf.training import StopForTest, TrainConfig, TrainConfigError
from qffs_tf.training import run as training_run

STEPS_PER_EPOCH = 8  # 256 examples / batch 32


def tiny_config(run_dir, **overrides) -> TrainConfig:
    """A quarter-width small_cnn on 256 real mnist5k digits: 2 float epochs + 1 QAT epoch."""
    settings = dict(
        run_dir=str(run_dir),
        dataset="mnist5k",
        model="small_cnn",
        width=0.25,
        activation_bits=2,
        float_epochs=2,
        qat_epochs=1,
        batch_size=32,
        lr_float=0.05,
        lr_qat=0.01,
        augment=True,  # augmentation and dropout must both resume exactly
        seed=3,
        train_limit=256,
        test_limit=200,
        calibration_batches=2,
        checkpoint_every_steps=3,
        verbose=0,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def model_weights(path):
    return [np.asarray(w) for w in load_model(path).get_weights()]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    report = training.train(tiny_config(run_dir))
    return run_dir, report


def test_run_writes_models_and_reports(reference_run):
    run_dir, report = reference_run
    for name in ("float_model.keras", "qat_model.keras", "metrics.json", "report.json"):
        assert (run_dir / name).is_file(), name
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk == report
    for key in ("float_accuracy", "qann_accuracy"):
        assert 0.0 <= report[key] <= 1.0
        assert report[key] * 200 == pytest.approx(round(report[key] * 200), abs=1e-6)  # k/200
    assert report["activation_bits"] == 2
    assert report["dataset"] == "mnist5k" and report["model"] == "small_cnn"
    assert report["train_seconds"] > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["float"]["history"]] == [1, 2]
    assert [row["epoch"] for row in metrics["qat"]["history"]] == [1]
    assert metrics["float"]["steps"] == 2 * STEPS_PER_EPOCH
    assert metrics["qat"]["steps"] == STEPS_PER_EPOCH
    assert metrics["test_examples"] == 200
    assert metrics["qann_accuracy"] == report["qann_accuracy"]
    # Real digits, even 16 steps of a tiny CNN learn something (chance is 0.1).
    assert report["float_accuracy"] > 0.3


def test_killed_run_resumes_from_checkpoint_with_identical_weights(tmp_path, reference_run):
    reference_dir, _ = reference_run
    run_dir = tmp_path / "resumed"
    # Kill 1: after 5 float steps; the last checkpoint is the one at step 3.
    with pytest.raises(StopForTest):
        training.train(tiny_config(run_dir, stop_after_steps=5))
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints" / "float")).endswith("ckpt-3")
    assert not (run_dir / "float_model.keras").exists()
    # Kill 2: resumed at step 3, it needs 13 steps to finish the float stage, then stops
    # 5 steps into QAT (last QAT checkpoint: step 3).
    with pytest.raises(StopForTest):
        training.train(tiny_config(run_dir, stop_after_steps=13 + 5))
    state = io_utils.read_json(run_dir / "state.json")
    assert state["stages"]["float"]["done"] and "qat" not in state["stages"]
    assert state["stages"]["float"]["steps"] == 2 * STEPS_PER_EPOCH
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints" / "qat")).endswith("ckpt-3")
    report = training.train(tiny_config(run_dir))

    # Exact: seeds, deterministic ops, (seed, epoch)-ordered data and restored RNG states.
    for name in ("float_model.keras", "qat_model.keras"):
        expected, got = model_weights(reference_dir / name), model_weights(run_dir / name)
        assert len(expected) == len(got)
        for e, g in zip(expected, got, strict=True):
            np.testing.assert_array_equal(g, e)
    _, reference_report = reference_run
    assert report["qann_accuracy"] == reference_report["qann_accuracy"]
    assert report["float_accuracy"] == reference_report["float_accuracy"]


def test_finished_run_is_not_retrained(reference_run, monkeypatch):
    run_dir, report = reference_run
    before = os.stat(run_dir / "qat_model.keras").st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(training_run, "run_stage", no_training)
    assert training.train(tiny_config(run_dir)) == report
    assert os.stat(run_dir / "qat_model.keras").st_mtime_ns == before


def test_report_is_merged_not_clobbered(tmp_path):
    path = tmp_path / "report.json"
    io_utils.update_json(path, {"snn_accuracy": 0.5, "qann_accuracy": 0.1})
    merged = io_utils.update_json(path, {"qann_accuracy": 0.9})
    assert merged == {"snn_accuracy": 0.5, "qann_accuracy": 0.9}
    assert json.loads(path.read_text()) == merged
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp file left


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("old")

    class Broken:
        def save(self, tmp):
            with open(tmp, "w") as f:
                f.write("half")
            raise OSError("disk full")

    with pytest.raises(OSError):
        io_utils.save_model(Broken(), path)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_run_dir_with_other_settings_is_refused(reference_run):
    run_dir, _ = reference_run
    with pytest.raises(TrainConfigError, match="other settings.*activation_bits"):
        training.train(tiny_config(run_dir, activation_bits=3))


@pytest.mark.parametrize(
    "field, value",
    [
        ("activation_bits", 9),
        ("weight_bits", 1),
        ("strategy", "horovod"),
        ("batch_size", 0),
        ("step_init", "mse"),
    ],
)
def test_bad_settings_are_rejected(tmp_path, field, value):
    with pytest.raises(TrainConfigError, match=field.split("_")[0]):
        training.validate_config(tiny_config(tmp_path, **{field: value}))


def test_divergence_is_a_clear_error_and_leaves_no_bad_checkpoint(tmp_path):
    config = tiny_config(tmp_path / "run", lr_float=1e12, float_epochs=1, qat_epochs=0)
    with pytest.raises(training.TrainingDivergedError, match=r"float stage diverged.*--lr_float"):
        training.train(config)
    assert not list((tmp_path / "run" / "checkpoints" / "float").glob("ckpt-*.index"))
