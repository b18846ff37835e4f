"""An earlier commit's qffs_tf, importable beside this checkout's as `qffs_base` (A/B runs)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def baseline_package(revision: str):
    """Export `revision`'s qffs_tf with `git archive`, renamed `qffs_base`, and import it.

    Every occurrence of `qffs_tf` in its sources becomes `qffs_base` (imports, Keras
    registration names), so both versions load into one process without clashing.
    """
    folder = tempfile.mkdtemp(prefix="qffs_ab_")
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", "--format=tar", revision, "qffs_tf"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    os.rename(os.path.join(folder, "qffs_tf"), os.path.join(folder, "qffs_base"))
    for directory, _, files in os.walk(os.path.join(folder, "qffs_base")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                with open(path) as f:
                    text = f.read()
                with open(path, "w") as f:
                    f.write(text.replace("qffs_tf", "qffs_base"))
    sys.path.insert(0, folder)
    package = importlib.import_module("qffs_base")
    for module in ("models", "conversion", "export", "simulation"):
        importlib.import_module(f"qffs_base.{module}")
    return package
