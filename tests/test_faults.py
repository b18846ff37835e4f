"""Fault injection: bin/train SIGKILLed at every stage boundary and at a random step resumes to
exactly the weights of an uninterrupted run (issue 11).

Each kill is a real SIGKILL of the bin/train process (`--test_kill_at`: no finally block, no
atexit, no flush), at: float_model.keras written (state.json not yet), calibration, a step in
the middle of the first QAT epoch (after a mid-epoch checkpoint), the final report (metrics.json
written, report.json not yet), and a random step. After the kills, re-running the same command
finishes the run; its QAT weights (`--test_weights_dump`), its float and QAT models and its
per-epoch metrics equal the uninterrupted run's, and no temp file or lock is left behind.
"""

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "bin", "train")
STEPS_PER_EPOCH = 4  # 128 examples / batch 32
FLOAT_EPOCHS, QAT_EPOCHS = 2, 1
TOTAL_STEPS = STEPS_PER_EPOCH * (FLOAT_EPOCHS + QAT_EPOCHS)
TINY = [
    "--dataset=mnist5k", "--model=small_cnn", "--width=0.25", f"--float_epochs={FLOAT_EPOCHS}",
    f"--qat_epochs={QAT_EPOCHS}", "--batch_size=32", "--train_limit=128", "--test_limit=64",
    "--calibration_batches=1", "--augment", "--seed=5", "--checkpoint_every_steps=2",
    "--verbose=0",
]  # fmt: skip
KILLED = -signal.SIGKILL


def train(run_dir, dump, *extra):
    return subprocess.run(
        [sys.executable, TRAIN, *TINY, f"--run_dir={run_dir}", f"--test_weights_dump={dump}",
         *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def load_npz(path):
    with np.load(path) as arrays:
        return [arrays[key] for key in sorted(arrays)]


def assert_same_run(run_dir, dump, reference_dir, reference_dump):
    expected, got = load_npz(reference_dump), load_npz(dump)
    assert len(expected) == len(got) == 26
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(g, e)
    from qffs_tf.serialization import load_model

    for name in ("float_model.keras", "qat_model.keras"):
        reference = load_model(reference_dir / name).get_weights()
        for e, g in zip(reference, load_model(run_dir / name).get_weights(), strict=True):
            np.testing.assert_array_equal(g, e)
    report = json.loads((run_dir / "report.json").read_text())
    reference_report = json.loads((reference_dir / "report.json").read_text())
    for key in ("float_accuracy", "qann_accuracy", "float_model", "qat_model"):
        assert report[key] == reference_report[key], key
    assert report["float_model"] == "float_model.keras"  # relative to the run folder
    # Per-epoch metrics cover whole epochs after a resume; only the float32 summation order of
    # the metric sums differs (sums of the batches before and after the kill are added).
    metrics = json.loads((run_dir / "metrics.json").read_text())
    reference_metrics = json.loads((reference_dir / "metrics.json").read_text())
    for stage in ("float", "qat"):
        rows, reference_rows = metrics[stage]["history"], reference_metrics[stage]["history"]
        assert [r["epoch"] for r in rows] == [r["epoch"] for r in reference_rows]
        for row, reference_row in zip(rows, reference_rows, strict=True):
            assert set(row) == set(reference_row)
            for key, value in reference_row.items():
                assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-7), (stage, key)
    leftovers = [p for p in run_dir.rglob("*") if ".qffs-tmp" in p.name or p.name.endswith("_temp")]
    assert leftovers == []
    assert not (run_dir / ".lock").exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process (an import of TensorFlow fewer than bin/train)."""
    from absl import flags

    from qffs_tf import training
    from qffs_tf.tools.train import config_from_flags, define_flags

    out = tmp_path_factory.mktemp("reference")
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    run_dir, dump = out / "run", out / "w.npz"
    flag_values(["train", *TINY, f"--run_dir={run_dir}", f"--test_weights_dump={dump}"])
    training.train(config_from_flags(flag_values))
    return run_dir, dump


def test_kills_at_every_stage_boundary_and_a_random_step_resume_to_identical_weights(
    tmp_path, reference
):
    """One run folder, killed again and again: each kill lands in a run resumed from the last.

    The random step is drawn over the whole run: in the float stage it is one more kill before
    the others; in the QAT stage it is the kill during the first QAT epoch.
    """
    random_step = random.SystemRandom().randint(1, TOTAL_STEPS)
    float_steps = STEPS_PER_EPOCH * FLOAT_EPOCHS
    qat_kill = random_step - float_steps if random_step > float_steps else 3
    run_dir, dump = tmp_path / "run", tmp_path / "w.npz"
    note = f"(random step {random_step} of {TOTAL_STEPS})"

    def killed_at(point):
        result = train(run_dir, dump, f"--test_kill_at={point}")
        assert result.returncode == KILLED, (point, note, result.returncode, result.stderr[-3000:])
        assert (run_dir / ".lock").exists()  # a SIGKILL releases nothing by itself
        return json.loads((run_dir / "state.json").read_text()) if (
            run_dir / "state.json").exists() else {"stages": {}}  # fmt: skip

    if random_step <= float_steps:
        state = killed_at(f"step:{random_step}")
        assert "float" not in state["stages"]
    state = killed_at("after_float_model")
    assert (run_dir / "float_model.keras").is_file() and "float" not in state["stages"]
    state = killed_at("calibration")
    assert state["stages"]["float"]["done"] and "qat" not in state["stages"]
    assert not (run_dir / "checkpoints" / "qat").exists()
    # This process loads the float stage, so its steps are QAT steps: the kill lands in the
    # first QAT epoch (by default one step after the checkpoint at step 2).
    killed_at(f"step:{qat_kill}")
    kept = sorted(p.name for p in (run_dir / "checkpoints" / "qat").glob("*.index"))
    assert kept == ([] if qat_kill < 2 else ["ckpt-2.index"]), note
    state = killed_at("report")
    assert (run_dir / "metrics.json").is_file() and not state.get("complete")
    assert not (run_dir / "report.json").exists()

    result = train(run_dir, dump)
    assert result.returncode == 0, (note, result.stderr[-3000:])
    try:
        assert_same_run(run_dir, dump, *reference)
    except AssertionError as e:
        raise AssertionError(f"{note}: {e}") from None
