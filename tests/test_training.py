"""training.train: end-to-end run, reports, exact resume after a simulated kill, no retraining."""

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from qffs_tf import data, io_utils, training
from qffs_tf._keras import keras, tf
from qffs_tf.errors import CheckpointError, DatasetNotFoundError, QFFSError
from qffs_tf.serialization import load_model
from qffs_tf.training import StopForTest, TrainConfig, TrainConfigError
from qffs_tf.training import run as training_run

TRAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bin", "train")
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


# ----------------------------------------------------------------------------- reliability


def test_a_damaged_float_model_of_a_finished_stage_is_rebuilt(tmp_path, reference_run):
    """The run is rolled back to "float done, QAT not started" with a damaged
    float_model.keras: it is rebuilt from the float stage's last checkpoint (with a warning),
    and the QAT stage, started in this process after other training, ends with the weights of
    an uninterrupted run (issue 11.1, the seeds of a stage; tests/test_faults.py kills
    bin/train at that point)."""
    reference_dir, reference_report = reference_run
    run_dir = tmp_path / "run"
    shutil.copytree(reference_dir, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "qat")
    (run_dir / "qat_model.keras").unlink()
    state = io_utils.read_json(run_dir / "state.json")
    del state["stages"]["qat"]
    state["complete"] = False
    io_utils.write_json(run_dir / "state.json", state)
    damaged = (run_dir / "float_model.keras").read_bytes()
    (run_dir / "float_model.keras").write_bytes(damaged[: len(damaged) // 2])
    report = training.train(tiny_config(run_dir))
    for name in ("float_model.keras", "qat_model.keras"):
        expected, got = model_weights(reference_dir / name), model_weights(run_dir / name)
        for e, g in zip(expected, got, strict=True):
            np.testing.assert_array_equal(g, e)
    assert report["qann_accuracy"] == reference_report["qann_accuracy"]


def stopped_run(run_dir, steps):
    with pytest.raises(StopForTest):
        training.train(tiny_config(run_dir, stop_after_steps=steps))


def flip_bytes(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, reference_run, caplog):
    """Issue 11.8 (and 11.7: the epoch's metrics after a resume cover the whole epoch)."""
    reference_dir, _ = reference_run
    run_dir = tmp_path / "run"
    stopped_run(run_dir, 7)  # float checkpoints at steps 3 and 6
    float_dir = run_dir / "checkpoints" / "float"
    assert sorted(p.name for p in float_dir.glob("*.index")) == ["ckpt-3.index", "ckpt-6.index"]
    shutil.copytree(run_dir, tmp_path / "all_damaged")
    flip_bytes(float_dir / "ckpt-6.data-00000-of-00001")
    with caplog.at_level(logging.WARNING):
        training.train(tiny_config(run_dir))
    assert "checkpoint" in caplog.text and "ckpt-6 cannot be used (DataLossError" in caplog.text
    assert "falling back to the previous kept checkpoint" in caplog.text
    assert (float_dir / "corrupt" / "ckpt-6.index").is_file()
    for name in ("float_model.keras", "qat_model.keras"):
        for e, g in zip(
            model_weights(reference_dir / name), model_weights(run_dir / name), strict=True
        ):
            np.testing.assert_array_equal(g, e)
    # Resumed at step 3 of the first epoch: its loss and accuracy still average all 8 batches
    # (float32 summation order aside).
    metrics = io_utils.read_json(run_dir / "metrics.json")
    reference_metrics = io_utils.read_json(reference_dir / "metrics.json")
    for stage in ("float", "qat"):
        for row, expected in zip(
            metrics[stage]["history"], reference_metrics[stage]["history"], strict=True
        ):
            assert row.keys() == expected.keys()
            for key, value in expected.items():
                assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-7), (stage, key)

    damaged_dir = tmp_path / "all_damaged"
    for prefix in ("ckpt-3", "ckpt-6"):
        flip_bytes(damaged_dir / "checkpoints" / "float" / f"{prefix}.data-00000-of-00001")
    with pytest.raises(CheckpointError) as error:
        training.train(tiny_config(damaged_dir))
    assert str(error.value) == (
        f"None of the kept checkpoints of the float stage in {damaged_dir}/checkpoints/float can "
        "be read (ckpt-6, ckpt-3; see the warnings above). Delete "
        f"{damaged_dir}/checkpoints/float to train the float stage again from its start."
    )


def all_checkpoints_are_finite(run_dir) -> int:
    """Assert every floating-point tensor of every checkpoint on disk is finite; count them."""
    count = 0
    for index in sorted(run_dir.glob("checkpoints/*/ckpt-*.index")):
        reader = tf.train.load_checkpoint(str(index)[: -len(".index")])
        for key, dtype in reader.get_variable_to_dtype_map().items():
            if dtype.is_floating:
                assert np.isfinite(reader.get_tensor(key)).all(), (index.name, key)
        count += 1
    return count


@pytest.mark.parametrize(
    "overrides, stage",
    [
        (dict(lr_float=1e3, float_epochs=1, qat_epochs=0), "float"),  # weights blow up
        (dict(lr_qat=1e6, float_epochs=1), "qat"),  # BN moving variance becomes infinite
    ],
)
def test_no_checkpoint_on_disk_holds_a_diverged_variable(tmp_path, overrides, stage):
    """Issue 11.2: every save checks the variables; the message says what is on disk."""
    run_dir = tmp_path / "run"
    config = tiny_config(run_dir, checkpoint_every_steps=1, **overrides)
    with pytest.raises(training.TrainingDivergedError) as error:
        training.train(config)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"The {stage} stage diverged: ")
    assert f"(lr_{stage}; --lr_{stage} on the command line)" in message
    kept = re.search(r"the last checkpoint kept is (\S+)\.$", message)
    assert kept and os.path.isfile(kept.group(1) + ".index"), message
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints" / stage))
    assert latest == kept.group(1)
    assert all_checkpoints_are_finite(run_dir) >= 1
    assert not (run_dir / f"{stage}_model.keras").exists()


def test_a_save_of_a_non_finite_variable_is_refused(tmp_path):
    """The check covers variables the loss does not see (a BatchNormalization moving variance)."""
    from qffs_tf.training.checkpoints import StageCheckpoint

    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2),
            # Named: Keras numbers default names per process, and other tests build layers too.
            keras.layers.BatchNormalization(name="bn"),
        ]
    )
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    stage = StageCheckpoint("qat", model, optimizer, tmp_path, tf.distribute.get_strategy(), [])
    stage.iterations = 5
    stage.save({})
    model.layers[1].moving_variance.assign([1.0, np.inf])
    with pytest.raises(training.TrainingDivergedError) as error:
        stage.save({})
    assert str(error.value).startswith(
        "The qat stage diverged: bn/moving_variance:0 hold NaN or infinite "
        "values at the end of epoch 0 (step 5)."
    )
    assert str(error.value).endswith(f"the last checkpoint kept is {tmp_path}/ckpt-5.")
    assert sorted(p.name for p in tmp_path.glob("*.index")) == ["ckpt-5.index"]


def test_bin_train_reports_divergence_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, TRAIN, f"--run_dir={tmp_path / 'run'}", "--width=0.25",
         "--float_epochs=1", "--qat_epochs=0", "--train_limit=64", "--test_limit=32",
         "--batch_size=32", "--lr_float=1e30", "--verbose=0"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("train: error: The float stage diverged: ")
    assert lines[0].endswith("no checkpoint of this stage was written yet.")


def test_an_unprepared_data_set_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config(run_dir, dataset="cifar10", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(DatasetNotFoundError, match="not prepared"):
        training.train(config)
    assert not run_dir.exists()


def test_a_run_folder_without_progress_takes_corrected_settings(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(TrainConfigError, match="has no dropout setting"):
        training.train(tiny_config(run_dir, model="resnet20", dropout=0.5))
    assert (run_dir / "config.json").is_file() and not (run_dir / "state.json").exists()
    # The corrected command is not refused as "other settings": it fails (or runs) on its own.
    with pytest.raises(QFFSError) as error:
        training.train(tiny_config(run_dir, model="no_such_model"))
    assert "other settings" not in str(error.value)
    assert io_utils.read_json(run_dir / "config.json")["model"] == "no_such_model"


def test_an_empty_split_is_a_clear_error(tmp_path, monkeypatch):
    empty = dataclasses.replace(data.info("mnist5k"), train_size=0)
    monkeypatch.setattr(data, "info", lambda name, data_dir=None: empty)
    with pytest.raises(TrainConfigError) as error:
        training.train(tiny_config(tmp_path / "run"))
    assert str(error.value) == (
        "The train split of data set 'mnist5k' is empty: nothing to train on. Prepare the data "
        "set again (it holds no examples)."
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("width", float("inf"), "width must be a finite number > 0, got inf."),
        ("lr_float", float("nan"), "lr_float must be a finite number > 0, got nan."),
        ("batch_size", "64", "batch_size must be an integer >= 1, got '64'."),
        ("batch_size", 64.0, "batch_size must be an integer >= 1, got 64.0."),
        ("augment", 1, "augment must be true or false, got 1."),
        ("test_limit", 0, "test_limit must be none or an integer >= 1, got 0."),
        ("dataset", " ", "dataset must be a non-empty string, got ' '."),
        ("optimizer", "rmsprop", "optimizer must be one of sgd, adam, got 'rmsprop'."),
        ("devices", "GPU:0", "devices is for strategy='mirrored' only."),
    ],
)
def test_invalid_settings_name_the_setting_and_the_fix(tmp_path, field, value, message):
    with pytest.raises(TrainConfigError) as error:
        training.train(tiny_config(tmp_path / "run", **{field: value}))
    assert str(error.value) == message
    assert not (tmp_path / "run").exists()


def test_numpy_numbers_are_accepted_as_settings(tmp_path):
    from qffs_tf.training.config import canonical_config

    config = canonical_config(tiny_config(tmp_path, seed=np.int64(3), width=np.float32(0.25)))
    assert type(config.seed) is int and type(config.width) is float
    assert json.dumps(dataclasses.asdict(config))  # config.json can hold it
