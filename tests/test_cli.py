"""The command-line tools' one error boundary (qffs_tf.cli.run): every failure class ends in one
line `tool: error: ...` naming the file or flag and the fix (exit 2), a bug in one line
`tool: internal error: <type>: ...` (exit 1), Ctrl-C in `tool: interrupted` (exit 130); never a
traceback. Also bin/convert's verify-then-swap.

Importing qffs_tf imports TensorFlow (several seconds per process), so the real tools run in
children forked from this test process (TensorFlow already loaded: a tool starts in
milliseconds) whenever the failure comes before any TensorFlow op; only the conversion test runs
fresh interpreters, started in the background while the other tests run. In-process tests call
`cli.run` with small main functions that hit each failure for real.
"""

import concurrent.futures
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from absl import flags

import qffs_tf
from qffs_tf import cli, io_utils
from qffs_tf._keras import keras, tf
from qffs_tf.errors import ConversionError, QFFSError, UnsupportedModelError, UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ("train", "convert", "evaluate", "export", "benchmark_tflite")
TRAIN_FLAGS = (
    "run_dir dataset data_dir model width activation_bits weight_bits float_epochs qat_epochs "
    "batch_size optimizer lr_float lr_qat weight_decay label_smoothing augment seed "
    "init_checkpoint calibration_batches checkpoint_every_steps steps_per_epoch train_limit "
    "test_limit strategy devices tpu sync_batch_norm dropout dry_run step_init"
).split()


def one_line_error(stderr: str, tool: str, kind: str = "error") -> str:
    """The single stderr line of a failed tool, checked for shape; returns its message."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    prefix = f"{tool}: {kind}: "
    assert lines[0].startswith(prefix), stderr
    return lines[0][len(prefix) :]


def forked(target, timeout: float = 120.0, interrupt_when=None) -> tuple[int, str, str]:
    """Run `target()` in a forked child; return (exit status, stdout, stderr).

    The child's SystemExit code is its exit status; it never returns into pytest. With
    `interrupt_when` (a path), the child gets SIGINT (Ctrl-C) once that file exists.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.fork()
        if pid == 0:  # child
            code = 70
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
                # Ctrl-C as in a terminal: pytest-xdist's workers ignore SIGINT, and a forked
                # child inherits that.
                signal.signal(signal.SIGINT, signal.default_int_handler)
                target()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException as e:  # noqa: BLE001 (reported to the parent as status 71)
                sys.stderr.write(f"child raised {type(e).__name__}: {e}\n")
                code = 71
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if interrupt_when is not None and os.path.exists(interrupt_when):
                os.kill(pid, signal.SIGINT)
                interrupt_when = None
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"forked child did not finish within {timeout} s")
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read(), err.read()


def run_tool(tool: str, *args: str) -> tuple[int, str, str]:
    """bin/<tool> with `args`, in a forked child (for failures before any TensorFlow op)."""
    path = os.path.join(ROOT, "bin", tool)

    def target():
        os.environ.pop("QFFS_DEBUG", None)
        sys.argv = [path, *args]
        runpy.run_path(path, run_name="__main__")

    return forked(target)


# --- Every tool: help, flag and flagfile errors ---------------------------------------------


@pytest.mark.parametrize("tool", TOOLS)
def test_help_of_every_tool_describes_it(tool):
    code, stdout, stderr = run_tool(tool, "--help")
    assert code == 0, stderr
    text = stdout + stderr
    assert "--run_dir:" in text  # the tool's own flags, though a shim is the main module
    assert "Example:  bin/" in text  # the tool module's docstring


def test_helpfull_of_train_lists_every_flag_with_help():
    code, stdout, stderr = run_tool("train", "--helpfull")
    assert code == 0, stderr
    for flag in TRAIN_FLAGS:
        assert f"--{flag}:" in stdout + stderr or f"--[no]{flag}:" in stdout + stderr, flag


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
def test_train_flag_errors_are_one_line_without_traceback(tmp_path, args, message):
    malformed = tmp_path / "bad.cfg"
    malformed.write_text("# comment\n--seed=1\nfloat_epochs=3\n")
    args = [arg.format(malformed=malformed) for arg in args]
    code, _, stderr = run_tool("train", *args, f"--run_dir={tmp_path / 'run'}")
    assert code == 2, stderr
    assert message in one_line_error(stderr, "train")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("encoding", ["binary", "latin-1"])
def test_undecodable_flagfile_is_one_line_in_every_tool(tmp_path, tool, encoding):
    flagfile = tmp_path / "flags.cfg"
    if encoding == "binary":
        flagfile.write_bytes(b"--seed=1\n\x89PNG\r\n\x1a\n\xff\xfe\x00")
    else:
        flagfile.write_bytes("# Müller's run\n--seed=1\n".encode("latin-1"))
    code, _, stderr = run_tool(tool, f"--flagfile={flagfile}", f"--run_dir={tmp_path / 'run'}")
    assert code == 2, stderr
    message = one_line_error(stderr, tool)
    assert message.startswith(f"flagfile '{flagfile}' is not UTF-8 text")
    assert message.endswith("save it as UTF-8 text (a binary file cannot be a flagfile).")
    assert not (tmp_path / "run").exists()


def test_corrupt_model_file_is_one_line(tmp_path):
    (tmp_path / "qat_model.keras").write_bytes(b"PK\x03\x04 truncated archive")
    code, _, stderr = run_tool("convert", f"--run_dir={tmp_path}")
    assert code == 2, stderr
    message = one_line_error(stderr, "convert")
    assert str(tmp_path / "qat_model.keras") in message
    assert "not a valid .keras file" in message
    assert sorted(os.listdir(tmp_path)) == ["qat_model.keras"]


@pytest.mark.parametrize("tool", ["convert", "evaluate", "export"])
def test_missing_model_names_the_flag_and_the_fix(tmp_path, tool):
    code, _, stderr = run_tool(tool, f"--run_dir={tmp_path}")
    assert code == 2, stderr
    message = one_line_error(stderr, tool)
    assert message.startswith(f"No QAT model at '{tmp_path / 'qat_model.keras'}' (--run_dir)")
    assert "bin/train" in message


@pytest.mark.parametrize("tool", ["convert", "evaluate", "export"])
def test_run_dir_that_is_a_file_is_named(tmp_path, tool):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    code, _, stderr = run_tool(tool, f"--run_dir={a_file}")
    assert code == 2, stderr
    message = one_line_error(stderr, tool)
    assert f"(--run_dir): '{a_file}' is a file, not a folder" in message
    assert a_file.read_text() == "not a folder"


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    ready = tmp_path / "ready"

    def sleeper():
        def main(argv):
            ready.write_text("yes")
            time.sleep(60)

        cli.run(main, ["sleeper"])

    code, _, stderr = forked(sleeper, interrupt_when=ready)
    assert code == 130, stderr
    assert stderr == "sleeper: interrupted\n"


# --- In process: cli.run with main functions that fail for real ----------------------------


def _define_test_flags():
    flags.DEFINE_string("cli_test_dir", None, "A path, for the error boundary tests.")
    flags.DEFINE_float("cli_test_width", 1.0, "A float, for the error boundary tests.")
    flags.DEFINE_integer("cli_test_batch_size", 4, "An integer, for the error boundary tests.")


def run_in_process(main, capfd, *args):
    """Run `main` through cli.run like a tool named `tool`; return (exit status, stderr)."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, ["tool", *args], define_flags=_define_test_flags)
    return exit_info.value.code, capfd.readouterr().err


def _makedirs(argv):
    os.makedirs(flags.FLAGS.cli_test_dir)


def _write(argv):
    with open(flags.FLAGS.cli_test_dir, "w") as f:
        f.write("x")


def _read_text(argv):
    with open(flags.FLAGS.cli_test_dir, encoding="utf-8") as f:
        f.read()


def _permission_denied(argv):
    # Root may write anywhere, so the error the OS would raise is raised here.
    path = os.path.join(flags.FLAGS.cli_test_dir, "report.json")
    raise PermissionError(13, "Permission denied", path)


def _disk_full(argv):
    raise OSError(28, "No space left on device", os.path.join(flags.FLAGS.cli_test_dir, "x"))


def _overflow(argv):
    return int(64 * flags.FLAGS.cli_test_width)


def _load_model(argv):
    qffs_tf.load_model(flags.FLAGS.cli_test_dir)


def _restore_checkpoint(argv):
    variable = tf.Variable(tf.zeros([256]))
    checkpoint = tf.train.Checkpoint(v=variable)
    checkpoint.restore(tf.train.latest_checkpoint(flags.FLAGS.cli_test_dir)).assert_consumed()


def _raise(error):
    def main(argv):
        raise error

    return main


def _corrupt_checkpoint(folder, part):
    variable = tf.Variable(tf.random.normal([256], seed=1))
    prefix = tf.train.Checkpoint(v=variable).save(str(folder / "ckpt"))
    path = f"{prefix}.{part}"
    data = bytearray(open(path, "rb").read())
    if part == "index":
        data = bytearray(b"garbage")
    else:
        data[40:50] = b"x" * 10  # same length, wrong checksum
    open(path, "wb").write(bytes(data))
    return str(folder)


@pytest.mark.parametrize(
    "case",
    [
        "file_exists",
        "not_a_directory",
        "is_a_directory",
        "file_not_found",
        "permission",
        "disk_full",
        "unicode",
        "overflow",
        "truncated_keras",
        "checkpoint_data",
        "checkpoint_index",
        "qffs_error",
    ],
)
def test_each_failure_class_is_one_line_naming_file_or_flag(tmp_path, capfd, case):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"name": "Müller"}'.encode("latin-1"))
    truncated = tmp_path / "cut.keras"
    truncated.write_bytes(b"PK\x03\x04")
    main, args, fragments = {
        "file_exists": (_makedirs, [a_file], [f"'{a_file}' (--cli_test_dir={a_file}) is a file"]),
        "not_a_directory": (_makedirs, [a_file / "sub"], [f"'{a_file}' is a file, not a folder"]),
        "is_a_directory": (_write, [tmp_path], [f"'{tmp_path}'", "is a folder"]),
        "file_not_found": (_read_text, [tmp_path / "nope.txt"], ["no such file", "nope.txt"]),
        "permission": (_permission_denied, [tmp_path], ["permission denied", "report.json"]),
        "disk_full": (_disk_full, [tmp_path], ["No space left on device", "--cli_test_dir"]),
        "unicode": (_read_text, [latin1], ["not UTF-8 text"]),
        "overflow": (_overflow, [], ["--cli_test_width=inf is not a finite number"]),
        "truncated_keras": (_load_model, [truncated], [f"'{truncated}'", "not a valid .keras"]),
        "checkpoint_data": (
            _restore_checkpoint,
            [lambda: _corrupt_checkpoint(tmp_path / "data", "data-00000-of-00001")],
            ["DataLossError", "truncated or corrupt", str(tmp_path)],
        ),
        "checkpoint_index": (
            _restore_checkpoint,
            [lambda: _corrupt_checkpoint(tmp_path / "index", "index")],
            ["TensorFlow cannot read a file", "truncated or corrupt"],
        ),
        "qffs_error": (_raise(ConversionError("Layer 'x' is not supported: use y.")), [], []),
    }[case]
    argv = [f"--cli_test_dir={args[0]() if callable(args[0]) else args[0]}"] if args else []
    if case == "overflow":
        argv = ["--cli_test_width=inf"]
    code, stderr = run_in_process(main, capfd, *argv)
    assert code == 2, stderr
    message = one_line_error(stderr, "tool")
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    if case == "qffs_error":
        assert message == "Layer 'x' is not supported: use y."


@pytest.mark.parametrize(
    "error", [KeyError("logits"), ValueError("shapes (3,) and (4,) not aligned"), IndexError()]
)
def test_unknown_exceptions_are_internal_errors(capfd, error):
    """A plain ValueError is not a user error: it is reported as a bug, with its type."""
    code, stderr = run_in_process(_raise(error), capfd)
    assert code == 1
    message = one_line_error(stderr, "tool", "internal error")
    assert message.startswith(f"{type(error).__name__}: ")
    assert "QFFS_DEBUG=1" in message


def test_debug_shows_the_traceback(capfd, monkeypatch):
    monkeypatch.setenv("QFFS_DEBUG", "1")
    code, stderr = run_in_process(_raise(ConversionError("no")), capfd)
    assert code == 2
    assert "Traceback" in stderr and stderr.strip().splitlines()[-1] == "tool: error: no"


def test_keyboard_interrupt_in_process(capfd):
    code, stderr = run_in_process(_raise(KeyboardInterrupt()), capfd)
    assert code == 130 and stderr == "tool: interrupted\n"


def test_tool_name_of_each_launcher(monkeypatch):
    for argv0, name in [
        ("/x/bin/convert", "convert"),
        ("/venv/bin/qffs-convert", "qffs-convert"),
        ("/site/qffs_tf/tools/convert.py", "convert"),
    ]:
        monkeypatch.setattr(cli, "_tool", None)
        monkeypatch.setattr(sys, "argv", [argv0])
        assert cli.tool_name() == name


# --- Flagfiles ------------------------------------------------------------------------------


def test_nested_flagfiles_are_validated(tmp_path):
    inner = tmp_path / "inner.cfg"
    inner.write_text("--seed=1\noops\n")
    outer = tmp_path / "outer.cfg"
    outer.write_text(f"--flagfile={inner}\n")
    with pytest.raises(cli.UsageError, match=r"inner.cfg:2: malformed line 'oops'"):
        cli.validate_flagfiles([f"--flagfile={outer}"])
    cli.validate_flagfiles(["--seed=2", "--", "--flagfile=not/read"])  # after '--': not a flag


@pytest.mark.parametrize(
    "content, message",
    [
        ("--name=Müller\n".encode("latin-1"), r"is not UTF-8 text \(byte 0xfc at offset 8\)"),
        (b"\x00\x01\x02\xff", r"is not UTF-8 text \(byte 0xff at offset 3\)"),
        (None, r"cannot read flagfile .*: Is a directory"),
        (b"--a=1\n--flagfile={self}\n", r"includes itself"),
    ],
    ids=["latin1", "binary", "folder", "loop"],
)
def test_flagfile_problems_are_usage_errors(tmp_path, content, message):
    path = tmp_path / "flags.cfg"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content.replace(b"{self}", str(path).encode()))
    with pytest.raises(UsageError, match=message) as caught:
        cli.validate_flagfiles([f"--flagfile={path}"])
    assert "\n" not in str(caught.value) and isinstance(caught.value, QFFSError)


# --- Convert: verify, then swap (a fresh interpreter, in the background) ------------------------


def small_model(input_shape=(28, 28, 1), outputs=1):
    keras.utils.set_random_seed(0)
    inp = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="c1")(inp)
    x = keras.layers.Flatten(name="flat")(x)
    heads = [keras.layers.Dense(10, name=f"logits{i}")(x) for i in range(outputs)]
    return keras.Model(inp, heads if outputs > 1 else heads[0])


def small_qat_model(input_shape=(28, 28, 1)):
    images = np.random.default_rng(0).uniform(0, 1, (8, *input_shape)).astype(np.float32)
    model = small_model(input_shape)
    return qffs_tf.quantize_model(model, activation_bits=2, calibration_data=images)


# Both conversions run in one fresh interpreter (one TensorFlow start-up): the convert tool's
# main is called twice, each run with its own stdout/stderr files, and the run folder is copied
# after the first run.
CONVERT_TWICE = """
import json, os, shutil, sys
from qffs_tf.tools import convert
runs, folder = json.loads(sys.argv[1]), sys.argv[2]
for number, argv in enumerate(runs):
    sys.stdout.flush(); sys.stderr.flush()
    with open(f"{folder}/out{number}", "w") as out, open(f"{folder}/err{number}", "w") as err:
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            convert.main(argv)
        except SystemExit as e:
            code = e.code
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    open(f"{folder}/code{number}", "w").write(str(code))
    if number == 0:
        shutil.copytree(f"{folder}/run", f"{folder}/after_first")
"""


@pytest.fixture(scope="module", autouse=True)
def converted_twice(tmp_path_factory):
    """bin/convert at T=4 with verification, then again at T=6 with a model whose
    verification fails (its input is 6x6, the run's images 28x28). Autouse: the runs start
    with the first test of this file and go on in the background while the others run."""
    folder = tmp_path_factory.mktemp("swap")
    io_utils.save_model(small_qat_model(), folder / "run" / "qat_model.keras")
    io_utils.write_json(folder / "run" / "report.json", {"dataset": "mnist5k"})
    io_utils.save_model(small_qat_model((6, 6, 1)), folder / "other_qat.keras")
    run = f"--run_dir={folder / 'run'}"
    other = f"--qat_model={folder / 'other_qat.keras'}"
    runs = [
        [run, "--timesteps=4", "--verify_samples=8"],
        [run, other, "--timesteps=6", "--verify_samples=8"],
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "PYTHONPATH": ROOT}
    env.pop("QFFS_DEBUG", None)
    command = [sys.executable, "-c", CONVERT_TWICE, json.dumps(runs), str(folder)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            subprocess.run, command, capture_output=True, text=True, timeout=600, env=env
        )
        yield folder, future


def test_convert_verifies_before_it_replaces_the_snn_and_report(converted_twice):
    """A failed verification leaves the previous snn.keras and report.json byte for byte, and
    no temporary file."""
    folder, future = converted_twice
    driver = future.result()
    assert driver.returncode == 0, driver.stderr[-3000:]
    out = [(folder / f"out{i}").read_text() for i in range(2)]
    err = [(folder / f"err{i}").read_text() for i in range(2)]
    assert (folder / "code0").read_text() == "None", err[0][-2000:]
    assert "exact spike counts: True" in out[0]
    first = {path.name: path.read_bytes() for path in (folder / "after_first").iterdir()}
    assert sorted(first) == ["qat_model.keras", "report.json", "snn.keras"]
    report = json.loads(first["report.json"])
    assert report["timesteps"] == 4 and report["conversion_exact"] is True
    assert report["snn_model"] == "snn.keras"  # relative: the folder can be copied
    assert (folder / "code1").read_text() == "2", err[1][-2000:]
    assert "Input shape" in one_line_error(err[1], "convert")
    after = {path.name: path.read_bytes() for path in (folder / "run").iterdir()}
    assert after == first
    assert qffs_tf.snn.timesteps_of(qffs_tf.load_model(folder / "run" / "snn.keras")) == 4


def test_multi_output_model_is_refused(tmp_path):
    path = tmp_path / "qat_model.keras"
    io_utils.save_model(small_model(outputs=2), path)
    with pytest.raises(UnsupportedModelError, match=r"has 1 inputs and 2 outputs") as caught:
        cli.load_model(str(path), "QAT model", "--run_dir", "train one")
    assert f"'{path}' (--run_dir)" in str(caught.value)
