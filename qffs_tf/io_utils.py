"""Atomic file writing: every file goes to a temp file in the same folder, then `os.replace`.

A reader (or a resumed run after a kill) therefore sees either the old file or the new one,
never a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "write_json",
    "read_json",
    "update_json",
    "save_model",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path next to `path` (same suffix); move it onto `path` if the block succeeds.

    The temp file keeps the suffix of `path`, so writers that check it (Keras wants `.keras`)
    accept it. On an exception the temp file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (flushed and fsynced before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Read a JSON file; return `default` if it does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def update_json(path: str | os.PathLike, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge `updates` into the JSON object at `path` (read-merge-write) and return the result.

    Keys not in `updates` are kept, so several tools can each own some keys of one file
    (report.json). A missing file counts as `{}`.
    """
    data = read_json(path, default={})
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object; cannot merge keys into it.")
    data.update(updates)
    write_json(path, data)
    return data


def save_model(model: Any, path: str | os.PathLike) -> None:
    """Save a Keras model to a `.keras` file atomically."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"Model path {path} must end in .keras.")
    with atomic_path(path) as tmp:
        model.save(tmp)
