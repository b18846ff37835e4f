"""Durable, atomic file writing: temp file in the same folder, fsync, rename, fsync the folder.

A reader (or a resumed run after a kill) therefore sees either the old file or the new one,
never a half-written one, and after `write_json` returns the new file survives a power cut.
Temp files carry a fixed marker (TEMP_MARK) in their name, so the ones a kill leaves behind
can be found and removed (`remove_temp_files`) by the next writer of the folder. Files get the
permissions of a normally created file (0666 minus the umask), not the 0600 of `mkstemp`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qffs_tf.errors import CorruptFileError

__all__ = [
    "TEMP_MARK",
    "atomic_path",
    "atomic_write_text",
    "write_json",
    "read_json",
    "update_json",
    "save_model",
    "fsync_path",
    "remove_temp_files",
]

TEMP_MARK = ".qffs-tmp"


def _umask() -> int:
    """The process umask, read without changing it (os.umask can only set and return)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # not Linux: set-and-restore (a short window, on one thread)
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's data to disk (a no-op where the file system refuses).

    Example
    -------
    >>> fsync_path(".")
    """
    flags = os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. EINVAL: this file system does not sync folders
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path next to `path` (same suffix); move it onto `path` if the block succeeds.

    The temp file keeps the suffix of `path`, so writers that check it (Keras wants `.keras`)
    accept it. On success the temp file gets normal permissions (0666 minus the umask), is
    fsynced, renamed onto `path`, and the folder is fsynced. On an exception the temp file is
    removed and `path` is left untouched.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; its folder is created if missing.

    Yields
    ------
    str
        The temp path to write to.

    Example
    -------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> with atomic_path(os.path.join(folder, "a.txt")) as tmp, open(tmp, "w") as f:
    ...     _ = f.write("hello")
    >>> open(os.path.join(folder, "a.txt")).read()
    'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f"{TEMP_MARK}{path.suffix}", dir=path.parent
    )
    os.close(fd)
    try:
        yield tmp
        if os.path.isfile(tmp):
            os.chmod(tmp, 0o666 & ~_umask())
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically and durably (UTF-8).

    Example
    -------
    >>> import tempfile, os
    >>> atomic_write_text(os.path.join(tempfile.mkdtemp(), "n.txt"), "1\\n")
    """
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically and durably.

    Example
    -------
    >>> import tempfile, os
    >>> write_json(os.path.join(tempfile.mkdtemp(), "x.json"), {"a": 1})
    """
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Read a JSON file; return `default` if it does not exist.

    Raises
    ------
    CorruptFileError
        When the file exists but is not UTF-8 JSON (it names the file and the fix).

    Example
    -------
    >>> read_json("/no/such/file.json", default={})
    {}
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(
            f"{path} is not a valid JSON file ({type(e).__name__}: {e}). It was not written by "
            "qffs_tf (which writes atomically) or the disk damaged it: restore it, or delete it "
            "and the files that depend on it."
        ) from None


def update_json(path: str | os.PathLike, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge `updates` into the JSON object at `path` (read-merge-write) and return the result.

    Keys not in `updates` are kept, so several tools can each own some keys of one file
    (report.json). A missing file counts as `{}`.

    Raises
    ------
    CorruptFileError
        When the file holds something other than a JSON object.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "r.json")
    >>> _ = update_json(path, {"a": 1})
    >>> update_json(path, {"b": 2})
    {'a': 1, 'b': 2}
    """
    data = read_json(path, default={})
    if not isinstance(data, dict):
        raise CorruptFileError(
            f"{path} does not hold a JSON object; cannot merge keys into it. Delete it (it is "
            "rebuilt by the tools that write it)."
        )
    data.update(updates)
    write_json(path, data)
    return data


def save_model(model: Any, path: str | os.PathLike) -> None:
    """Save a Keras model to a `.keras` file atomically and durably.

    Raises
    ------
    ValueError
        When `path` does not end in `.keras`.

    Example
    -------
    >>> save_model(model, "runs/x/model.keras")  # doctest: +SKIP
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"Model path {path} must end in .keras.")
    with atomic_path(path) as tmp:
        model.save(tmp)


def remove_temp_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Remove the temp files `atomic_path` left in `folder` when a writer was killed.

    Call it only while no other process writes into `folder` (hold the run folder's lock).
    Also removes TensorFlow's own leftovers of a killed checkpoint save: `<prefix>_temp/`
    folders and `checkpoint.tmp<hex>` files.

    Returns
    -------
    list of Path
        What was removed.

    Example
    -------
    >>> import tempfile
    >>> remove_temp_files(tempfile.mkdtemp())
    []
    """
    import shutil

    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    candidates = folder.rglob("*") if recursive else folder.glob("*")
    for path in sorted(candidates):
        name = path.name
        ours = name.startswith(".") and TEMP_MARK in name
        tf_state_tmp = name.startswith("checkpoint.tmp") and path.is_file()
        tf_shard_tmp = name.endswith("_temp") and path.is_dir() and name.startswith("ckpt-")
        if not (ours or tf_state_tmp or tf_shard_tmp):
            continue
        with contextlib.suppress(FileNotFoundError):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed
