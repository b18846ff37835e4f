"""Test set-up: tf_keras everywhere, quiet TensorFlow, the repo root importable."""

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: takes more than ~30 s on a 2-core CPU (deselect with -m 'not slow')"
    )


# The longest files first (measured, 2 cores): with `make test`'s two processes and one file per
# process at a time, starting them early keeps one process from running alone at the end.
LONGEST_FIRST = (
    "test_distribute.py",
    "test_zoo_conversion.py",
    "test_training.py",
    "test_integer.py",
    "test_faults.py",
    "test_readme.py",
    "test_applications_conversion.py",
    "test_cli.py",
    "test_evaluation.py",
    "test_configs.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order in a file kept
