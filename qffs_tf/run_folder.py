"""The run folder: its file names, its report, its default data set and its one-writer lock.

Every tool reads and writes a run folder (`--run_dir`) through `RunFolder`, so the names below
are written down once:

    config.json            the training settings (bin/train)
    state.json             which training stages are done (bin/train)
    metrics.json           per-epoch history, final accuracies, timings (bin/train)
    report.json            results, merged by every tool (never clobbered)
    float_model.keras      qat_model.keras      snn.keras
    checkpoints/<stage>/   tensorboard/<stage>/
    evaluation.md          plots/*.png          (bin/evaluate)
    tflite/*.tflite        (bin/export, bin/benchmark_tflite)
    .lock                  held by the process that writes the folder

One writer: `with RunFolder(path).lock("train"):` takes an exclusive `flock` on `.lock` and
writes the holder's pid, tool and start time into it. A second writer gets RunFolderBusyError
("run folder X is in use by pid N ..."). The kernel drops the lock when its holder dies, even
by SIGKILL, so a lock left by a dead process is recovered at once (with a warning), and the
temp files the dead writer left are removed then.

Paths stored in report.json are relative to the run folder (`merge_report` converts
`os.PathLike` values), so a copied or moved run folder stays valid.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from absl import logging

from qffs_tf import io_utils
from qffs_tf.errors import RunFolderBusyError, RunFolderError

try:
    import fcntl
except ImportError:  # not POSIX: the pid check below is the only guard
    fcntl = None

__all__ = [
    "DEFAULT_RUN_DIR",
    "DEFAULT_DATASET",
    "CONFIG",
    "STATE",
    "METRICS",
    "REPORT",
    "FLOAT_MODEL",
    "QAT_MODEL",
    "SNN_MODEL",
    "EVALUATION_MD",
    "PLOTS",
    "TFLITE",
    "CHECKPOINTS",
    "TENSORBOARD",
    "LOCK",
    "RunFolder",
]

DEFAULT_RUN_DIR = "runs/default"
DEFAULT_DATASET = "mnist5k"

CONFIG = "config.json"
STATE = "state.json"
METRICS = "metrics.json"
REPORT = "report.json"
FLOAT_MODEL = "float_model.keras"
QAT_MODEL = "qat_model.keras"
SNN_MODEL = "snn.keras"
EVALUATION_MD = "evaluation.md"
PLOTS = "plots"
TFLITE = "tflite"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
LOCK = ".lock"

# Folders this process holds the lock of, with a nesting count (a tool that holds the lock
# may call library code that takes it again).
_HELD: dict[str, int] = {}
_HELD_GUARD = threading.Lock()


class RunFolder:
    """One run folder: where its files are, its report, its default data set, its lock.

    Parameters
    ----------
    path : str or os.PathLike
        The folder (`--run_dir`); it need not exist yet.

    Example
    -------
    >>> run = RunFolder("runs/quickstart")
    >>> run.qat_model.name
    'qat_model.keras'
    >>> run.relative(run.path / "tflite" / "snn_full.tflite")
    'tflite/snn_full.tflite'
    """

    def __init__(self, path: str | os.PathLike):
        if not str(path).strip():
            raise RunFolderError("The run folder path is empty: pass a folder (--run_dir).")
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------------- file names

    @property
    def config(self) -> Path:
        """config.json: the training settings."""
        return self.path / CONFIG

    @property
    def state(self) -> Path:
        """state.json: which training stages are done."""
        return self.path / STATE

    @property
    def metrics(self) -> Path:
        """metrics.json: per-epoch training history and timings."""
        return self.path / METRICS

    @property
    def report(self) -> Path:
        """report.json: the merged results of every tool."""
        return self.path / REPORT

    @property
    def float_model(self) -> Path:
        """float_model.keras: the float network after pretraining."""
        return self.path / FLOAT_MODEL

    @property
    def qat_model(self) -> Path:
        """qat_model.keras: the quantization-aware trained network (the QANN)."""
        return self.path / QAT_MODEL

    @property
    def snn_model(self) -> Path:
        """snn.keras: the converted spiking network."""
        return self.path / SNN_MODEL

    @property
    def evaluation_md(self) -> Path:
        """evaluation.md: the markdown report of bin/evaluate."""
        return self.path / EVALUATION_MD

    @property
    def plots(self) -> Path:
        """plots/: the PNG plots of bin/evaluate."""
        return self.path / PLOTS

    @property
    def tflite(self) -> Path:
        """tflite/: the exported TFLite files."""
        return self.path / TFLITE

    @property
    def lock_file(self) -> Path:
        """.lock: held by the process that writes this folder."""
        return self.path / LOCK

    def checkpoints(self, stage: str) -> Path:
        """checkpoints/<stage>/: the training checkpoints of one stage ('float' or 'qat')."""
        return self.path / CHECKPOINTS / stage

    def tensorboard(self, stage: str) -> Path:
        """tensorboard/<stage>/: the TensorBoard logs of one stage."""
        return self.path / TENSORBOARD / stage

    # ------------------------------------------------------------------------- paths in reports

    def relative(self, path: str | os.PathLike) -> str:
        """`path` as stored in report.json: relative to the folder when inside it, else absolute.

        Example
        -------
        >>> RunFolder("/r").relative("/r/snn.keras"), RunFolder("/r").relative("/elsewhere/m")
        ('snn.keras', '/elsewhere/m')
        """
        target = Path(os.path.abspath(path))
        base = Path(os.path.abspath(self.path))
        try:
            return target.relative_to(base).as_posix()
        except ValueError:
            return str(target)

    def resolve(self, stored: str | os.PathLike) -> Path:
        """A path read from report.json: relative ones are relative to this folder.

        Example
        -------
        >>> RunFolder("runs/a").resolve("snn.keras").as_posix()
        'runs/a/snn.keras'
        """
        stored = Path(stored)
        return stored if stored.is_absolute() else self.path / stored

    # ------------------------------------------------------------------------- report

    def read_report(self) -> dict[str, Any]:
        """report.json's content ({} when there is none yet).

        Raises
        ------
        CorruptFileError
            When report.json is not a JSON object.
        """
        report = io_utils.read_json(self.report, default={})
        if not isinstance(report, dict):
            from qffs_tf.errors import CorruptFileError

            raise CorruptFileError(
                f"{self.report} does not hold a JSON object: delete it (the tools rebuild it)."
            )
        return report

    def merge_report(self, updates: dict[str, Any]) -> dict[str, Any]:
        """Merge `updates` into report.json atomically and return the whole report.

        Keys not in `updates` are kept (every tool owns some keys). Values that are
        `os.PathLike` (also inside lists and dicts) are stored with `relative`.

        Example
        -------
        >>> run.merge_report({"snn_model": run.snn_model, "timesteps": 8})  # doctest: +SKIP
        {..., 'snn_model': 'snn.keras', 'timesteps': 8}
        """
        return io_utils.update_json(self.report, self._storable(updates))

    def _storable(self, value: Any) -> Any:
        if isinstance(value, os.PathLike):
            return self.relative(value)
        if isinstance(value, dict):
            return {key: self._storable(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._storable(item) for item in value]
        return value

    def dataset(self, override: str | None = None) -> str:
        """The data set to use: `override`, else the run's (report.json, then config.json),
        else DEFAULT_DATASET.

        Example
        -------
        >>> RunFolder("/no/such/run").dataset()
        'mnist5k'
        """
        if override:
            return override
        for source in (self.report, self.config):
            content = io_utils.read_json(source, default={})
            if isinstance(content, dict) and content.get("dataset"):
                return str(content["dataset"])
        return DEFAULT_DATASET

    def require(self, path: str | os.PathLike, made_by: str) -> Path:
        """`path` if it exists, else FileNotFoundError saying which tool makes it.

        Example
        -------
        >>> run.require(run.qat_model, "bin/train")  # doctest: +SKIP
        FileNotFoundError: No qat_model.keras at runs/x/qat_model.keras: run bin/train
        --run_dir=runs/x first.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"No {path.name} at {path}: run {made_by} --run_dir={self.path} first."
            )
        return path

    # ------------------------------------------------------------------------- folder, lock

    def create(self) -> None:
        """Create the folder (and its parents).

        Raises
        ------
        RunFolderError
            When the path is a file, or the folder cannot be created or written.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise RunFolderError(
                f"run folder {self.path} is a file, not a folder: pass another --run_dir."
            ) from None
        except OSError as e:
            raise RunFolderError(
                f"cannot create run folder {self.path} ({e.strerror or e}): pass a writable "
                "--run_dir."
            ) from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise RunFolderError(
                f"run folder {self.path} is not writable (permission denied): pass a writable "
                "--run_dir."
            )

    @contextlib.contextmanager
    def lock(self, tool: str) -> Iterator[RunFolder]:
        """Hold the folder's one-writer lock for the block (the folder is created first).

        On entry, temp files left by a killed writer are removed. A lock left by a dead
        process is taken over with a warning. Re-entrant within one process.

        Parameters
        ----------
        tool : str
            Who writes (shown to a second writer): 'train', 'convert', ...

        Yields
        ------
        RunFolder
            This folder.

        Raises
        ------
        RunFolderBusyError
            When a live process holds the lock; the message names its pid, tool and start.
        RunFolderError
            When the folder cannot be created or written.

        Example
        -------
        >>> with RunFolder("runs/quickstart").lock("convert"):  # doctest: +SKIP
        ...     pass
        """
        self.create()
        key = os.path.realpath(self.path)
        with _HELD_GUARD:
            if _HELD.get(key):
                _HELD[key] += 1
                nested = True
            else:
                nested = False
        if nested:
            try:
                yield self
            finally:
                with _HELD_GUARD:
                    _HELD[key] -= 1
            return
        fd = self._acquire(tool)
        with _HELD_GUARD:
            _HELD[key] = 1
        try:
            removed = io_utils.remove_temp_files(self.path)
            if removed:
                logging.warning(
                    "Removed %d temp file(s) left by an interrupted writer in %s: %s",
                    len(removed),
                    self.path,
                    ", ".join(str(p.relative_to(self.path)) for p in removed[:5]),
                )
            yield self
        finally:
            with _HELD_GUARD:
                _HELD.pop(key, None)
            # Unlink while still holding the lock: a process waiting on the old file sees
            # that the path no longer names it and retries on a new one.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_file)
            os.close(fd)

    def _acquire(self, tool: str) -> int:
        path = self.lock_file
        for _ in range(100):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise RunFolderError(
                    f"cannot create the lock file {path} ({e.strerror or e}): pass a writable "
                    "--run_dir."
                ) from None
            try:
                previous = _read_holder(fd)
                if not _try_flock(fd, previous):
                    raise RunFolderBusyError(_busy_message(self.path, previous))
                try:
                    same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same_file = False
                if not same_file:  # the holder released and unlinked it meanwhile
                    os.close(fd)
                    continue
                if previous:
                    logging.warning(
                        "Run folder %s: the previous writer (pid %s, %s, started %s) is gone "
                        "without releasing its lock; taking it over.",
                        self.path,
                        previous.get("pid"),
                        previous.get("tool"),
                        previous.get("started"),
                    )
                _write_holder(fd, tool)
                return fd
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
        raise RunFolderError(f"could not take the lock {path}: it keeps changing.")


def _read_holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        holder = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _write_holder(fd: int, tool: str) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "tool": tool,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": sys.argv,
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(holder) + "\n").encode("utf-8"))
    os.fsync(fd)


def _pid_alive(holder: dict[str, Any]) -> bool:
    """Whether the holder recorded in a lock file still runs (same host only)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _try_flock(fd: int, holder: dict[str, Any]) -> bool:
    """Take the exclusive lock on `fd` without waiting; False if another process has it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
    # No flock on this file system: trust the recorded pid (stale when that pid is dead).
    return not (holder and holder.get("pid") != os.getpid() and _pid_alive(holder))


def _busy_message(folder: Path, holder: dict[str, Any]) -> str:
    who = f"pid {holder.get('pid', '?')}"
    if holder.get("host") and holder.get("host") != socket.gethostname():
        who += f" on {holder['host']}"
    details = ", ".join(
        part
        for part in (
            holder.get("tool") and f"bin/{holder['tool']}",
            holder.get("started") and f"started {holder['started']}",
        )
        if part
    )
    return (
        f"run folder {folder} is in use by {who}{f' ({details})' if details else ''}; wait for "
        "it to finish or pass another --run_dir."
    )
