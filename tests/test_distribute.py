"""qffs_tf.training.distribute and training under tf.distribute: mirrored over two logical CPUs
equals one device, resume works under a strategy, a two-process multi-worker run ends with the
same weights on both workers, only the chief writes; clear errors for strategies that cannot run.

Multi-device runs happen in subprocesses: logical devices must be set before TF starts.
Ports are picked free on 127.0.0.1 only.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from qffs_tf._keras import tf
from qffs_tf.training import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "bin", "train")
# Same global batch and seed: mirrored (synchronized BN) matches one device up to float
# summation order; measured max |difference| 5e-5 (BN moving variance), weights ~1e-6.
ATOL, RTOL = 2e-4, 1e-3

TINY = dict(
    dataset="mnist5k", model="small_cnn", width=0.25, dropout=0.0, float_epochs=1, qat_epochs=1,
    batch_size=32, train_limit=128, test_limit=64, calibration_batches=1, seed=1,
    lr_float=0.01, lr_qat=0.002, verbose=0, checkpoint_every_steps=2,
)  # fmt: skip

MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {root!r})
    from qffs_tf._keras import tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    from qffs_tf import training
    from qffs_tf.training import distribute
    from qffs_tf.qat import quantize_model
    out = {out!r}
    tiny = {tiny!r}
    info = {{}}

    def run(name, strat, **extra):
        config = training.TrainConfig(
            run_dir=f"{{out}}/{{name}}", weights_dump=f"{{out}}/{{name}}.npz", **tiny, **extra
        )
        return training.train(config, strategy=strat)

    default = distribute.make_strategy("default")
    mirrored = distribute.make_strategy("mirrored", devices="CPU:0,CPU:1")
    info["replicas"] = mirrored.num_replicas_in_sync
    run("default", default)
    run("mirrored", mirrored, strategy="mirrored", devices="CPU:0,CPU:1")
    try:  # killed after 3 steps (checkpoint at step 2), then resumed
        run("resumed", mirrored, strategy="mirrored", devices="CPU:0,CPU:1", stop_after_steps=3)
    except training.StopForTest:
        info["stopped"] = True
    run("resumed", mirrored, strategy="mirrored", devices="CPU:0,CPU:1")

    # Calibration under strategy.scope(): step sizes are mirrored, equal on both replicas.
    from qffs_tf import models
    with mirrored.scope():
        model = models.build("small_cnn", input_shape=(28, 28, 1), width=0.25)
        images = np.random.default_rng(0).random((16, 28, 28, 1), dtype=np.float32)
        qat = quantize_model(model, 2, calibration_data=images)
    steps = [w for w in qat.weights if "step_size" in w.name]
    info["step_types"] = sorted({{type(w).__name__ for w in steps}})
    info["step_values"] = [[float(v.numpy()) for v in w.values] for w in steps]
    info["step_devices"] = [[v.device for v in w.values] for w in steps]
    json.dump(info, open(f"{{out}}/info.json", "w"))
    """
)


def load_npz(path):
    with np.load(path) as arrays:
        return [arrays[key] for key in sorted(arrays)]


def assert_weights_close(a, b, atol, rtol):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored")
    script = MIRRORED_SCRIPT.format(root=ROOT, out=str(out), tiny=TINY)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "info.json").read_text())


def test_mirrored_over_two_cpus_matches_one_device(mirrored_runs):
    out, info = mirrored_runs
    assert info["replicas"] == 2
    default, mirrored = load_npz(out / "default.npz"), load_npz(out / "mirrored.npz")
    assert_weights_close(default, mirrored, ATOL, RTOL)
    assert any(not np.array_equal(a, b) for a, b in zip(default, mirrored, strict=True)), (
        "bit-identical: the mirrored run probably ran on one device"
    )
    report_d = json.loads((out / "default" / "report.json").read_text())
    report_m = json.loads((out / "mirrored" / "report.json").read_text())
    assert report_m["test_examples"] == report_d["test_examples"] == 64
    metrics_d = json.loads((out / "default" / "metrics.json").read_text())
    metrics_m = json.loads((out / "mirrored" / "metrics.json").read_text())
    for stage in ("float", "qat"):
        assert metrics_m[stage]["steps"] == metrics_d[stage]["steps"] == 4
        loss_d = metrics_d[stage]["history"][-1]["loss"]
        loss_m = metrics_m[stage]["history"][-1]["loss"]
        assert loss_m == pytest.approx(loss_d, rel=1e-4)


def test_mirrored_run_resumes_after_a_kill(mirrored_runs):
    out, info = mirrored_runs
    assert info["stopped"]
    assert_weights_close(load_npz(out / "mirrored.npz"), load_npz(out / "resumed.npz"), 1e-6, 0)
    assert json.loads((out / "resumed" / "state.json").read_text())["complete"]


def test_step_sizes_are_mirrored_and_calibrated_on_every_replica(mirrored_runs):
    _, info = mirrored_runs
    assert info["step_types"] == ["MirroredVariable"]
    assert len(info["step_values"]) == 3  # small_cnn: three quantized ReLUs
    for values, devices in zip(info["step_values"], info["step_devices"], strict=True):
        assert len(values) == 2 and values[0] == values[1]
        assert values[0] != 1.0  # calibrated, not the initial constant
        assert devices[0].endswith("CPU:0") and devices[1].endswith("CPU:1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_workers(tmp_path, run_dir, dump, *extra):
    """Two bin/train processes (worker 0 = chief, worker 1) on free 127.0.0.1 ports."""
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    args = [f"--{key}={value}" for key, value in TINY.items() if key != "checkpoint_every_steps"]
    args += [
        f"--run_dir={run_dir}",
        "--strategy=multi_worker",
        "--steps_per_epoch=2",
        "--checkpoint_every_steps=1",
        f"--test_weights_dump={tmp_path}/{dump}{{task}}.npz",
        *extra,
    ]
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {
            "type": "worker", "index": index}}))  # fmt: skip
        processes.append(
            subprocess.Popen(
                [sys.executable, TRAIN, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=150))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return [
        (process.returncode, out, err)
        for process, (out, err) in zip(processes, outputs, strict=True)
    ]


@pytest.fixture(scope="module")
def multi_worker_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("multi_worker")
    return tmp_path, run_two_workers(tmp_path, tmp_path / "run", "w")


def test_two_process_multi_worker_run(multi_worker_run):
    tmp_path, results = multi_worker_run
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert "float accuracy" in results[0][1]  # the chief reports
    assert "worker done" in results[1][1]
    assert_weights_close(load_npz(tmp_path / "w0.npz"), load_npz(tmp_path / "w1.npz"), 0, 0)
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert report["test_examples"] == 64
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["float"]["steps"] == metrics["qat"]["steps"] == 2
    # The worker's checkpoints went to a temporary folder that is gone; the chief's are here.
    assert sorted(p.name for p in (run / "checkpoints" / "qat").glob("*.index")) == [
        "ckpt-1.index",
        "ckpt-2.index",
    ]
    assert not list(tmp_path.glob("qffs_worker*"))


# Four more worker processes (about 80 s on 2 cores): `make test-all`. Resuming to identical
# weights is in `make test` for one process (test_faults.py, test_training.py).
@pytest.mark.slow
def test_multi_worker_run_resumes_after_both_workers_stop(multi_worker_run):
    tmp_path, _ = multi_worker_run
    run = tmp_path / "resumed"
    stopped = run_two_workers(tmp_path, run, "r", "--test_stop_after_steps=3")
    for code, out, err in stopped:  # float stage done (2 steps), one QAT step checkpointed
        assert code == 3 and "stopped after 3 steps" in out, err[-3000:]
    assert sorted(p.name for p in (run / "checkpoints" / "qat").glob("*.index")) == ["ckpt-1.index"]
    assert not (run / "report.json").exists()
    resumed = run_two_workers(tmp_path, run, "r")
    for code, _, err in resumed:
        assert code == 0, err[-3000:]
    assert_weights_close(load_npz(tmp_path / "r0.npz"), load_npz(tmp_path / "r1.npz"), 0, 0)
    # Same weights as the uninterrupted two-worker run (float rounding of the collectives).
    assert_weights_close(load_npz(tmp_path / "w0.npz"), load_npz(tmp_path / "r0.npz"), 1e-6, 0)
    assert json.loads((run / "state.json").read_text())["complete"]


def test_make_strategy_default_and_errors(monkeypatch):
    default = distribute.make_strategy("default")
    assert distribute.is_chief(default) and not distribute.is_distributed(default)
    assert distribute.num_replicas(default) == 1
    with pytest.raises(distribute.StrategyError, match="strategy must be one of"):
        distribute.make_strategy("horovod")
    with pytest.raises(distribute.StrategyError, match="--devices is for --strategy=mirrored"):
        distribute.make_strategy("default", devices="CPU:0")
    with pytest.raises(distribute.StrategyError, match="does not have"):
        distribute.make_strategy("mirrored", devices="GPU:7")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.StrategyError, match="needs the TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(distribute.StrategyError, match="not valid JSON"):
        distribute.make_strategy("multi_worker")
    outside = {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(outside))
    with pytest.raises(distribute.StrategyError, match="not in its cluster"):
        distribute.make_strategy("multi_worker")


def test_tpu_without_address_or_tpu_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(distribute.StrategyError, match="needs --tpu="):
        distribute.make_strategy("tpu")
    # 'local' asks the local TPU driver (no network): this machine has none.
    with pytest.raises(distribute.StrategyError, match="No TPU reachable at 'local'"):
        distribute.make_strategy("tpu", tpu="local")


def test_parse_devices_and_batch_split():
    assert distribute.parse_devices("GPU:0, /gpu:1") == ["/device:GPU:0", "/device:GPU:1"]
    assert distribute.parse_devices(None) is None
    distribute.check_global_batch_size(64, tf.distribute.get_strategy())
    context = tf.distribute.InputContext(num_input_pipelines=2, num_replicas_in_sync=4)
    assert distribute.replicas_per_input_pipeline(context) == 2
    assert context.get_per_replica_batch_size(64) == 16


def test_bin_train_rejects_tpu_flag_without_tpu_strategy(tmp_path):
    result = subprocess.run(
        [sys.executable, TRAIN, "--tpu=local", f"--run_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == "train: error: --tpu is for --strategy=tpu only."
