"""The README's Python API section runs as written, from a folder outside the checkout."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _api_snippet() -> str:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_snippet_runs(tmp_path):
    snippet = _api_snippet()
    assert "qffs_tf.convert" in snippet and "qffs_tf.analyze" in snippet
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")
    done = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "verdict:" in done.stdout and "rate-coded" in done.stdout
    assert (tmp_path / "snn.tflite").stat().st_size > 0
    assert (tmp_path / "plots" / "accuracy_per_step.png").exists()
