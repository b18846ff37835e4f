"""Packaging: the wheel builds from pyproject.toml, installs outside the checkout, imports, and
its console scripts run the same tools as bin/*.

The build copies the sources into a temporary folder first (setuptools builds in place, so this
keeps build/ and *.egg-info out of the checkout) and uses the installed setuptools without
network access (--no-build-isolation).
"""

import configparser
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {
    "qffs-train": "qffs_tf.tools.train:main",
    "qffs-convert": "qffs_tf.tools.convert:main",
    "qffs-evaluate": "qffs_tf.tools.evaluate:main",
    "qffs-export": "qffs_tf.tools.export:main",
    "qffs-benchmark-tflite": "qffs_tf.tools.benchmark_tflite:main",
}


def _run(command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel path, install target) after building and installing the wheel."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    shutil.copytree(
        os.path.join(ROOT, "qffs_tf"),
        source / "qffs_tf",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    dist = base / "dist"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(dist), str(source)],
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("qffs_tf-*-py3-none-any.whl")
    target = base / "target"
    done = _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)]
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return wheel, target


def _outside_env(target):
    """An environment that sees the installed copy only, never the checkout."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(target), "CUDA_VISIBLE_DEVICES": "-1"}


def test_wheel_declares_metadata_and_every_console_script(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA"))
        metadata = archive.read(f"{info}/METADATA").decode()
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(f"{info}/entry_points.txt").decode())
    assert "Name: qffs-tf" in metadata
    assert "Requires-Python: >=3.11" in metadata
    requirements = {
        line.split()[1].split("<")[0].split(">")[0].split("=")[0]: line
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ") and "extra ==" not in line
    }
    for name in ("tensorflow", "tf-keras", "tensorflow-model-optimization", "absl-py", "numpy"):
        assert ">=" in requirements[name] and "<" in requirements[name], requirements[name]
    assert dict(entry_points["console_scripts"]) == SCRIPTS
    for package in ("qffs_tf/__init__.py", "qffs_tf/snn/layers.py", "qffs_tf/tools/convert.py"):
        assert package in names
    assert not [name for name in names if name.startswith("tests/") or "__pycache__" in name]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_module_is_packaged(installed, script):
    wheel, _ = installed
    module = SCRIPTS[script].split(":")[0]
    path = module.replace(".", "/") + ".py"
    if script == "qffs-train" and not os.path.exists(os.path.join(ROOT, path)):
        pytest.skip("bin/train moves to qffs_tf/tools/train.py in the training branch")
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read(path).decode()
    assert "\ndef main(argv" in source


def test_installed_package_imports_and_runs_outside_the_checkout(installed, tmp_path):
    _, target = installed
    env = _outside_env(target)
    probe = _run(
        [sys.executable, "-c",
         "import sys, qffs_tf, tf_keras; print(qffs_tf.__file__); "
         "cls = tf_keras.utils.get_custom_objects()['qffs_tf>QuantReLU']; "
         "print(sys.modules[cls.__module__].__file__)"],
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    location, registered_from = probe.stdout.split()
    assert location == str(target / "qffs_tf" / "__init__.py")
    assert registered_from.startswith(str(target / "qffs_tf") + os.sep)  # by the import alone

    script = target / "bin" / "qffs-convert"
    helped = _run([str(script), "--help"], cwd=tmp_path, env=env)
    assert helped.returncode == 0, helped.stderr[-3000:]
    assert "--timesteps:" in helped.stdout and "--run_dir:" in helped.stdout
    assert "Example:  bin/convert" in helped.stdout  # the tool module's docstring
