# Every target bootstraps .venv from requirements.txt when it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: quickstart test test-all lint bench wheel clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# Train (float, then 2-bit QAT) on the embedded MNIST digits, convert to an SNN, evaluate it,
# export both networks to TFLite.
quickstart: $(STAMP)
	$(PY) bin/train --flagfile=configs/quickstart.cfg
	$(PY) bin/convert --run_dir=runs/quickstart --timesteps=8
	$(PY) bin/evaluate --run_dir=runs/quickstart
	$(PY) bin/export --run_dir=runs/quickstart

# The suite without the tests marked slow (the largest graphs, the longest multi-process runs),
# in TEST_WORKERS processes (pytest-xdist); a test file stays in one process, so its
# module-scoped fixtures are built once. TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	$(PYTEST) -m "not slow" tests

# Everything, slow tests included.
test-all: $(STAMP)
	$(PYTEST) tests

lint: $(STAMP)
	$(VENV)/bin/ruff check qffs_tf tests benchmarks bin/*
	$(VENV)/bin/ruff format --check qffs_tf tests benchmarks bin/*

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# The installable package (pip install dist/qffs_tf-*.whl gives the qffs-* commands), built
# offline with the venv's setuptools; setuptools' in-tree build folders are removed after.
wheel: $(STAMP)
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .
	rm -rf build qffs_tf.egg-info

clean:
	rm -rf runs .pytest_cache build dist qffs_tf.egg-info
