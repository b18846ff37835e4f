"""qffs_tf.run_folder and qffs_tf.io_utils: file names, relative report paths, the default data
set, the one-writer lock (busy, stale, re-entrant, cleanup) and durable atomic writes."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from qffs_tf import io_utils, run_folder
from qffs_tf.errors import CorruptFileError, RunFolderBusyError, RunFolderError
from qffs_tf.run_folder import RunFolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "bin", "train")
ISO_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"

HOLDER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from qffs_tf.run_folder import RunFolder
    with RunFolder({path!r}).lock("train"):
        print("locked", flush=True)
        sys.stdin.read()  # hold the lock until killed or stdin closes
    """
)


@pytest.fixture
def holder(tmp_path):
    """A separate process that holds the lock of tmp_path/run (no TensorFlow: fast)."""
    path = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(root=ROOT, path=str(path))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "locked"
    yield path, process
    if process.poll() is None:
        process.kill()
    process.wait()


# ----------------------------------------------------------------------------- names, report


def test_file_names_are_the_run_folders():
    run = RunFolder("runs/x")
    names = {
        run.config: "config.json", run.state: "state.json", run.metrics: "metrics.json",
        run.report: "report.json", run.float_model: "float_model.keras",
        run.qat_model: "qat_model.keras", run.snn_model: "snn.keras",
        run.evaluation_md: "evaluation.md", run.plots: "plots", run.tflite: "tflite",
        run.lock_file: ".lock",
    }  # fmt: skip
    for path, name in names.items():
        assert path.parent.as_posix() == "runs/x" and path.name == name
    assert run.checkpoints("qat").as_posix() == "runs/x/checkpoints/qat"
    assert run.tensorboard("float").as_posix() == "runs/x/tensorboard/float"
    with pytest.raises(RunFolderError, match="empty"):
        RunFolder(" ")


def test_report_stores_paths_relative_to_the_run_folder(tmp_path):
    run = RunFolder(tmp_path / "run")
    outside = tmp_path / "elsewhere" / "m.keras"
    merged = run.merge_report(
        {
            "snn_model": run.snn_model,
            "other": outside,
            "tflite_files": {"snn_full": {"path": run.tflite / "snn_full.tflite", "bytes": 3}},
            "timesteps": 8,
        }
    )
    assert merged == {
        "snn_model": "snn.keras",
        "other": str(outside),
        "tflite_files": {"snn_full": {"path": "tflite/snn_full.tflite", "bytes": 3}},
        "timesteps": 8,
    }
    assert json.loads(run.report.read_text()) == merged
    # Merged, not clobbered; and still valid after the folder is moved.
    run.merge_report({"timesteps": 4})
    moved = tmp_path / "moved"
    os.rename(run.path, moved)
    report = RunFolder(moved).read_report()
    assert report["snn_model"] == "snn.keras" and report["timesteps"] == 4
    assert RunFolder(moved).resolve(report["snn_model"]) == moved / "snn.keras"
    assert RunFolder(moved).resolve(report["other"]) == outside


def test_default_dataset_from_report_then_config(tmp_path):
    run = RunFolder(tmp_path)
    assert run.dataset() == run_folder.DEFAULT_DATASET == "mnist5k"
    io_utils.write_json(run.config, {"dataset": "cifar10"})
    assert run.dataset() == "cifar10"
    run.merge_report({"dataset": "cifar100"})
    assert run.dataset() == "cifar100"
    assert run.dataset("imagenet2012") == "imagenet2012"


def test_require_names_the_tool_that_makes_the_file(tmp_path):
    run = RunFolder(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        run.require(run.snn_model, "bin/convert")
    assert str(error.value) == (
        f"No snn.keras at {run.snn_model}: run bin/convert --run_dir={tmp_path} first."
    )


# ----------------------------------------------------------------------------- lock


def test_a_second_writer_is_refused_while_the_first_lives(holder, caplog):
    path, process = holder
    lock = json.loads((path / ".lock").read_text())
    assert lock["pid"] == process.pid and lock["tool"] == "train"
    with pytest.raises(RunFolderBusyError) as error:
        with RunFolder(path).lock("convert"):
            pass
    message = str(error.value)
    assert "\n" not in message
    assert re.fullmatch(
        rf"run folder {re.escape(str(path))} is in use by pid {process.pid} \(bin/train, "
        rf"started {ISO_TIME}\); wait for it to finish or pass another --run_dir\.",
        message,
    ), message
    # Killed: the kernel drops its lock, the next writer takes over and says so.
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (path / ".lock").exists()
    with caplog.at_level(logging.WARNING), RunFolder(path).lock("convert"):
        held = json.loads((path / ".lock").read_text())
        assert held["pid"] == os.getpid() and held["tool"] == "convert"
    assert f"previous writer (pid {process.pid}, train" in caplog.text
    assert not (path / ".lock").exists()  # released and removed


def test_lock_file_of_a_dead_process_is_recovered(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (tmp_path / ".lock").write_text(json.dumps({"pid": int(dead), "tool": "train"}))
    with caplog.at_level(logging.WARNING), RunFolder(tmp_path).lock("train"):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert f"pid {dead}" in caplog.text and "taking it over" in caplog.text


def test_lock_is_reentrant_within_a_process(tmp_path):
    run = RunFolder(tmp_path / "run")
    with run.lock("convert"):
        with run.lock("convert"):
            assert run.lock_file.exists()
        assert run.lock_file.exists()  # the outer holder still has it
    assert not run.lock_file.exists()


def test_taking_the_lock_removes_temp_files_of_a_killed_writer(tmp_path):
    run = RunFolder(tmp_path)
    leftovers = [
        tmp_path / f".report.json.x1y2{io_utils.TEMP_MARK}.json",
        tmp_path / "tflite" / f".snn_full.tflite.abc{io_utils.TEMP_MARK}.tflite",
        tmp_path / "checkpoints" / "qat" / "checkpoint.tmp0123abcd",
        tmp_path / "checkpoints" / "qat" / "ckpt-4_temp" / "part-00000-of-00001.index",
    ]
    keep = [tmp_path / "report.json", tmp_path / "checkpoints" / "qat" / "ckpt-2.index"]
    for path in leftovers + keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    with run.lock("train"):
        pass
    for path in leftovers:
        assert not path.exists(), path
    assert not (tmp_path / "checkpoints" / "qat" / "ckpt-4_temp").exists()
    for path in keep:
        assert path.read_text() == "x"


def test_run_folder_that_is_a_file_is_a_clear_error(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(RunFolderError) as error:
        with RunFolder(path).lock("train"):
            pass
    assert str(error.value) == f"run folder {path} is a file, not a folder: pass another --run_dir."


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_run_folder_that_cannot_be_created_is_a_clear_error(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(RunFolderError, match="cannot create run folder .*Permission denied"):
            RunFolder(tmp_path / "run").create()
    finally:
        tmp_path.chmod(0o755)


def test_bin_train_on_a_busy_run_folder_is_one_line(holder):
    path, process = holder
    result = subprocess.run(
        [sys.executable, TRAIN, f"--run_dir={path}", "--float_epochs=1", "--qat_epochs=0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(
        rf"train: error: run folder {re.escape(str(path))} is in use by pid {process.pid} "
        rf"\(bin/train, started {ISO_TIME}\); wait for it to finish or pass another --run_dir\.",
        lines[0],
    ), lines[0]
    assert sorted(p.name for p in path.iterdir()) == [".lock"]  # the loser wrote nothing


# ----------------------------------------------------------------------------- io_utils


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_files_get_normal_permissions(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        io_utils.write_json(tmp_path / "a.json", {"a": 1})

        class Model:  # writes its file like Keras: into the existing temp file
            def save(self, path):
                with open(path, "wb") as f:
                    f.write(b"zip")

        io_utils.save_model(Model(), tmp_path / "m.keras")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "m.keras").stat().st_mode & 0o777 == mode


def test_atomic_write_syncs_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    io_utils.write_json(tmp_path / "state.json", {"complete": True})
    assert len(synced) == 2
    assert io_utils.TEMP_MARK in os.path.basename(synced[0])  # the data, before the rename
    assert synced[1] == str(tmp_path)  # the rename itself
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_damaged_json_is_a_one_line_error_naming_the_file(tmp_path):
    path = tmp_path / "report.json"
    path.write_bytes(b"\xff\xfe{not json")
    with pytest.raises(CorruptFileError) as error:
        io_utils.read_json(path)
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(f"{path} is not a valid JSON file (UnicodeDecodeError")
    path.write_text("[1, 2]")
    with pytest.raises(CorruptFileError, match="does not hold a JSON object"):
        RunFolder(tmp_path).merge_report({"a": 1})
