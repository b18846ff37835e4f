"""bin/train's command line: help lists every flag; user errors are one line, no traceback."""

import os
import subprocess
import sys

import pytest

from qffs_tf import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "bin", "train")
FLAGS = (
    "run_dir dataset data_dir model width activation_bits weight_bits float_epochs qat_epochs "
    "batch_size optimizer lr_float lr_qat weight_decay label_smoothing augment seed "
    "init_checkpoint calibration_batches checkpoint_every_steps steps_per_epoch train_limit "
    "test_limit strategy devices tpu sync_batch_norm dropout dry_run step_init"
).split()


def run_train(*args, cwd=None):
    return subprocess.run(
        [sys.executable, TRAIN, *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_helpfull_lists_every_flag_with_help():
    result = run_train("--helpfull")
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    for flag in FLAGS:
        assert f"--{flag}:" in text or f"--[no]{flag}:" in text, flag


@pytest.mark.parametrize(
    "args, message",
    [
        (["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
        (["--activation_bits=9"], "9 is not an integer in the range [1, 8]"),
        (["--weight_bits=1"], "--weight_bits=1: use none or an integer in 2..8"),
        (["--strategy=horovod"], "value should be one of"),
        (["--flagfile=does/not/exist.cfg"], "cannot read flagfile 'does/not/exist.cfg'"),
        (["--flagfile={malformed}"], "malformed line 'float_epochs=3'"),
        (["stray_argument"], "unexpected argument"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message):
    malformed = tmp_path / "bad.cfg"
    malformed.write_text("# comment\n--seed=1\nfloat_epochs=3\n")
    args = [arg.format(malformed=malformed) for arg in args]
    result = run_train(*args, f"--run_dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("train: error: ")
    assert message in lines[0]
    assert not (tmp_path / "run").exists()


def test_nested_flagfiles_are_validated(tmp_path):
    inner = tmp_path / "inner.cfg"
    inner.write_text("--seed=1\noops\n")
    outer = tmp_path / "outer.cfg"
    outer.write_text(f"--flagfile={inner}\n")
    with pytest.raises(cli.UsageError, match=r"inner.cfg:2: malformed line 'oops'"):
        cli.validate_flagfiles([f"--flagfile={outer}"])
    cli.validate_flagfiles(["--seed=2", "--", "--flagfile=not/read"])  # after '--': not a flag


def test_library_error_after_tensorflow_loads_is_one_line(tmp_path):
    """A QFFSError raised inside training (unknown data set) is reported like a flag error."""
    result = run_train("--dataset=no_such_data", f"--run_dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run").exists()
    assert result.stderr.startswith("train: error: Unknown data set 'no_such_data'")
