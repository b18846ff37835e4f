"""TFLite export: every kind on every layer kind, float parity, streaming = full window,
reset, builtin ops only, clear errors, atomic files, and bin/export end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from snn_fixtures import every_layer_model, flatten_model, images

import qffs_tf
from qffs_tf import export
from qffs_tf._keras import keras, tf
from qffs_tf.errors import ExportError
from qffs_tf.export import parity as export_parity
from qffs_tf.export import runtime as export_runtime
from qffs_tf.io_utils import save_model
from qffs_tf.snn import Program

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMESTEPS = 5
TOLERANCE = 1e-5  # relative to the logit scale; float32 reordering gives ~1e-7


def _close(actual, expected):
    scale = max(float(np.abs(expected).max()), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE * scale)


@pytest.fixture(scope="module", params=[every_layer_model, flatten_model], ids=["every", "flat"])
def exported(request, tmp_path_factory):
    model = request.param(3)
    x = images(24, model.input_shape[1:], seed=3)
    qat = qffs_tf.quantize_model(model, activation_bits=2, calibration_data=x)
    snn = qffs_tf.convert(qat, timesteps=TIMESTEPS)
    folder = tmp_path_factory.mktemp(request.param.__name__)
    files = {}
    for kind in export.KINDS:
        source = qat if kind.startswith("qann") else snn
        files[kind] = export.export_tflite(
            source, folder / f"{kind}.tflite", kind, representative_data=x, batch_size=None
        )
    return qat, snn, x, files


def test_every_kind_uses_builtin_ops_only(exported):
    *_, files = exported
    for result in files.values():
        with open(result.path, "rb") as f:
            content = f.read()
        assert result.bytes == len(content) > 0
        ops = export.operator_names(content)
        assert ops == result.operators
        assert not [op for op in ops if op.startswith("CUSTOM") or "FLEX" in op.upper()], ops
    assert "FLOOR" in files["qann_float"].operators  # the quantizer is really in the graph
    assert "VAR_HANDLE" in files["snn_step"].operators
    assert files["snn_step"].signatures == ["reset", "step", "start", "advance", "advance_quiet"]


def test_qann_float_equals_the_qat_model(exported):
    qat, _, x, files = exported
    logits = export_runtime.predict(files["qann_float"].path, x)
    reference = qat.predict(x, verbose=0)
    _close(logits, reference)
    np.testing.assert_array_equal(logits.argmax(1), reference.argmax(1))


def test_snn_full_equals_snn_predict(exported):
    _, snn, x, files = exported
    assert files["snn_full"].timesteps == TIMESTEPS
    _close(export_runtime.predict(files["snn_full"].path, x), snn.predict(x, verbose=0))


def test_streaming_steps_equal_simulate_and_the_full_window(exported):
    _, snn, x, files = exported
    per_step, spikes = export_runtime.stream(files["snn_step"].path, x, TIMESTEPS)
    simulation = qffs_tf.simulate(snn, x)
    _close(per_step, simulation.logits)
    np.testing.assert_array_equal(spikes, simulation.spikes_per_step())
    _close(per_step[:, -1], export_runtime.predict(files["snn_full"].path, x))
    # reset/step (the image at every step, masked after step 0) is another graph of the same
    # operations: LiteRT may fuse it differently (measured: logits 1 ulp apart), hence the
    # float tolerance; the spikes are equal.
    masked, masked_spikes = export_runtime.stream(
        files["snn_step"].path, x, TIMESTEPS, image_every_step=True
    )
    _close(per_step, masked)
    np.testing.assert_array_equal(spikes, masked_spikes)


def test_start_begins_a_new_window_whatever_came_before(exported):
    *_, x, files = exported
    runtime = export_runtime.interpreter(files["snn_step"].path)
    start, advance = runtime.get_signature_runner("start"), runtime.get_signature_runner("advance")
    fresh = [start(image=x[:1])] + [advance() for _ in range(3)]
    assert [int(out["step"]) for out in fresh] == [1, 2, 3, 4]
    start(image=x[1:2])  # another image's window, left half-way
    advance()
    again = [start(image=x[:1])] + [advance() for _ in range(3)]
    np.testing.assert_array_equal(
        np.stack([out["logits"] for out in fresh]), np.stack([out["logits"] for out in again])
    )
    assert [int(out["step"]) for out in again] == [1, 2, 3, 4]
    # A non-finite image gives NaN logits at every step, as the QANN does, although
    # `advance` never sees the image (the readout keeps its mark in the state).
    broken = x[:1].copy()
    broken.flat[0] = np.nan
    poisoned = [start(image=broken)] + [advance() for _ in range(2)]
    assert all(np.isnan(out["logits"]).all() for out in poisoned)


def _signature_operator_counts(path) -> dict[str, int]:
    """Operators in each signature's subgraph of a .tflite file."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(f.read(), 0)
    counts = {}
    for i in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(i)
        subgraph = model.Subgraphs(signature.SubgraphIndex())
        counts[signature.SignatureKey().decode()] = subgraph.OperatorsLength()
    return counts


def test_advance_quiet_signatures_skip_quiet_layers_with_the_same_numbers(exported, tmp_path):
    """A snn_step file for a 9-step window has an `advance_quiet*` signature per quiet bound
    inside it (2-bit: 3, 5, 7 as far as the network has layers); from each bound `start`
    names on, the runner calls the one that leaves out the neuron layers quiet by then and
    what reads only them: the same logits and spikes bit for bit as `advance` (the skipped
    layers add exact zeros there), each in a smaller graph than the one before."""
    _, snn, x, _ = exported
    result = export.export_tflite(snn, tmp_path / "step9.tflite", "snn_step", timesteps=9)
    bounds = sorted(set(Program(snn).quiet_from.values()))
    inside = [b for b in bounds if b < 9]
    # 2-bit: the first layers from L = 3, each layer behind L - 1 = 2 steps later.
    assert len(inside) >= 2 and inside == [3 + 2 * k for k in range(len(inside))], bounds
    names = ["advance_quiet"] + [f"advance_quiet_{k}" for k in range(2, len(inside) + 1)]
    assert result.signatures == ["reset", "step", "start", "advance", *names]
    path = result.path
    steps = 12  # past the window too: the last signature keeps running
    skipping, skipping_spikes = export_runtime.stream(path, x, steps)
    plain, plain_spikes = export_runtime.stream(path, x, steps, skip_quiet=False)
    np.testing.assert_array_equal(skipping, plain)
    np.testing.assert_array_equal(skipping_spikes, plain_spikes)
    assert plain_spikes[:, 1:].sum() > 0  # the later steps do spike: the skips are tested
    runner = export_runtime.StreamingRunner(export_runtime.interpreter(path))
    runner.begin_window()
    runner.step(0, x[:1])
    assert runner.quiet_from == tuple(inside)
    counts = _signature_operator_counts(path)
    sizes = [counts[name] for name in ["advance", *names]]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes), counts
    # Called too early (step 1 or the step before its bound), each says so with NaN logits,
    # not wrong ones.
    runtime = export_runtime.interpreter(path)
    for name, bound in zip(names, inside, strict=True):
        start = runtime.get_signature_runner("start")
        for early in (1, bound - 1):
            start(image=x[:1])
            for _ in range(early - 1):
                runtime.get_signature_runner("advance")()
            assert np.isnan(runtime.get_signature_runner(name)()["logits"]).all(), (name, early)


def test_snn_full_skips_each_layer_from_its_quiet_bound(exported, tmp_path):
    """Over 9 steps the full-window program leaves out the first neuron layers from step 3
    on and the second ones from step 5 on (their input is zero from step 3): still the
    logits of the same SNN simulated for 9 steps."""
    _, snn, x, _ = exported
    bounds = sorted(set(Program(snn).quiet_from.values()))
    assert bounds[:2] == [3, 5]  # 2-bit: L and 2L - 1
    path = export.export_tflite(snn, tmp_path / "full9.tflite", "snn_full", timesteps=9).path
    _close(export_runtime.predict(path, x), qffs_tf.simulate(snn, x, timesteps=9).logits[:, -1])


def test_rate_coded_streaming_keeps_the_constant_input_without_the_image(tmp_path):
    """The rate baseline's input arrives at every step; `advance` takes no image, so the
    value computed by `start` is carried in the state."""
    model = flatten_model(5)
    x = images(6, model.input_shape[1:], seed=5)
    qat = qffs_tf.quantize_model(model, activation_bits=2, calibration_data=x)
    snn = qffs_tf.convert(qat, timesteps=TIMESTEPS, neuron="rate")
    result = export.export_tflite(snn, tmp_path / "rate_step.tflite", "snn_step")
    path = result.path
    assert "advance_quiet" not in result.signatures  # rate neurons get input at every step
    per_step, spikes = export_runtime.stream(path, x, TIMESTEPS)
    simulation = qffs_tf.simulate(snn, x)
    _close(per_step, simulation.logits)
    np.testing.assert_array_equal(spikes, simulation.spikes_per_step())
    assert spikes[:, 1:].sum() > 0  # the input keeps driving spikes after step 0


def test_reset_restores_the_initial_state_exactly(exported):
    *_, x, files = exported
    runtime = export_runtime.interpreter(files["snn_step"].path)
    step, reset = runtime.get_signature_runner("step"), runtime.get_signature_runner("reset")
    first = [step(image=x[:1])["logits"] for _ in range(3)]  # fresh interpreter: no reset
    assert int(reset()["step"]) == 0
    second = [step(image=x[:1]) for _ in range(3)]
    np.testing.assert_array_equal(np.stack(first), np.stack([out["logits"] for out in second]))
    assert [int(out["step"]) for out in second] == [1, 2, 3]
    reset()
    other = step(image=x[1:2])["logits"]  # step 0 really uses the new image
    np.testing.assert_array_equal(
        other,
        export_runtime.stream(files["snn_step"].path, x[1:2], 1, image_every_step=True)[0][:, 0],
    )


def test_step_model_ignores_the_image_after_step_zero(exported):
    *_, x, files = exported
    runtime = export_runtime.interpreter(files["snn_step"].path)
    step = runtime.get_signature_runner("step")
    with_image = [step(image=x[:1])["logits"] for _ in range(3)]
    runtime.get_signature_runner("reset")()
    zeros = np.zeros_like(x[:1])
    without = [step(image=x[:1] if t == 0 else zeros)["logits"] for t in range(3)]
    np.testing.assert_array_equal(np.stack(with_image), np.stack(without))


def separated_case():
    """Class k = bright quadrant k of a 4x4 image; a hand-set net that reads the quadrants."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    x = rng.uniform(0.0, 0.2, (200, 4, 4, 1)).astype(np.float32)
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 2)
        x[i, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = rng.uniform(0.6, 1.0, (2, 2, 1))
    kernel = np.zeros((16, 4), np.float32)
    for k in range(4):
        r, c = divmod(k, 2)
        for dr in range(2):
            for dc in range(2):
                kernel[(2 * r + dr) * 4 + 2 * c + dc, k] = 0.25
    model = keras.Sequential(
        [
            keras.Input((4, 4, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="relu", name="d1"),
            keras.layers.Dense(4, name="logits"),
        ]
    )
    model.get_layer("d1").set_weights([kernel, np.zeros(4)])
    model.get_layer("logits").set_weights([4 * np.eye(4), np.zeros(4)])
    qat = qffs_tf.quantize_model(model, activation_bits=3, calibration_data=x)
    return qat, x, labels


@pytest.mark.parametrize("int8_io", [True, False])
def test_int8_file_is_integer_and_classifies_a_separated_case(tmp_path, int8_io):
    qat, x, labels = separated_case()
    assert np.mean(qat.predict(x, verbose=0).argmax(1) == labels) == 1.0
    path = tmp_path / "q.tflite"
    result = export.export_tflite(
        qat, path, "qann_int8", representative_data=x[:100], int8_io=int8_io
    )
    runtime = export_runtime.interpreter(path)
    expected = np.int8 if int8_io else np.float32
    assert runtime.get_input_details()[0]["dtype"] == expected
    assert runtime.get_output_details()[0]["dtype"] == expected
    assert result.input_dtype == ("int8" if int8_io else "float32")
    assert "FLOOR" not in result.operators
    fc = [t for t in runtime.get_tensor_details() if t["dtype"] == np.float32]
    assert len(fc) == (0 if int8_io else 2)  # only the float I/O tensors, no float internals
    logits = export_runtime.predict(path, x[100:])
    assert np.mean(logits.argmax(1) == labels[100:]) >= 0.95


def quadrant_case(size: int = 16):
    """Class k = bright quadrant k of a size x size image, read by a hand-set net whose first
    kernel (size*size x 8) is large enough for the converter to store in int8."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 64)
    x = rng.uniform(0.0, 0.2, (64, size, size, 1)).astype(np.float32)
    half = size // 2
    kernel = np.zeros((size, size, 8), np.float32)
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 2)
        x[i, r * half : (r + 1) * half, c * half : (c + 1) * half] = rng.uniform(
            0.6, 1.0, (half, half, 1)
        )
    for k in range(8):
        r, c = divmod(k % 4, 2)
        kernel[r * half : (r + 1) * half, c * half : (c + 1) * half, k] = 1.0 / half**2
    model = keras.Sequential(
        [
            keras.Input((size, size, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu", name="d1"),
            keras.layers.Dense(4, name="logits"),
        ]
    )
    model.get_layer("d1").set_weights([kernel.reshape(size * size, 8), np.zeros(8)])
    model.get_layer("logits").set_weights([np.tile(2 * np.eye(4), (2, 1)), np.zeros(4)])
    qat = qffs_tf.quantize_model(model, activation_bits=3, calibration_data=x)
    return qat, x, labels


def test_snn_files_with_int8_weights_are_int8_and_approximate(tmp_path):
    qat, x, labels = quadrant_case()
    snn = qffs_tf.convert(qat, timesteps=8)
    files = {}
    for kind in ("snn_full", "snn_step"):
        files[kind] = export.export_tflite(
            snn, tmp_path / f"{kind}.tflite", kind, int8_weights=True
        )
        assert files[kind].weights == "int8"
    float_file = export.export_tflite(snn, tmp_path / "float.tflite", "snn_full")
    assert float_file.weights == "float32"
    assert files["snn_full"].bytes < float_file.bytes

    def int8_tensors(path):
        details = export_runtime.interpreter(path).get_tensor_details()
        return [t["name"] for t in details if t["dtype"] == np.int8]

    assert int8_tensors(files["snn_full"].path) and not int8_tensors(float_file.path)
    # Exactness is not claimed; on a case with wide margins the answers stay right.
    assert np.mean(export_runtime.predict(files["snn_full"].path, x).argmax(1) == labels) == 1.0
    parity = export_parity.check_parity(files, qat, snn, x[:16], labels[:16])
    for kind in files:
        assert parity[kind]["passed"] is None and "int8 weights" in parity[kind]["note"]
        assert parity[kind]["accuracy"] == 1.0
    with pytest.raises(ExportError, match="int8_weights applies to the SNN kinds"):
        export.export_tflite(qat, tmp_path / "q.tflite", "qann_float", int8_weights=True)


def test_int8_needs_calibration_images_of_the_right_shape(tmp_path):
    qat, x, _ = separated_case()
    with pytest.raises(ExportError, match="representative_data"):
        export.export_tflite(qat, tmp_path / "a.tflite", "qann_int8")
    with pytest.raises(ExportError, match=r"shaped \(N, 4, 4, 1\)"):
        export.export_tflite(qat, tmp_path / "a.tflite", "qann_int8", representative_data=x[:, 0])
    assert not os.listdir(tmp_path)


def test_models_that_cannot_be_exported_raise_a_clear_error(tmp_path):
    path = tmp_path / "m.tflite"
    with pytest.raises(ExportError, match="not a tf_keras Model"):
        export.export_tflite("model.keras", path, "qann_float")
    plain = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)]
    )
    with pytest.raises(ExportError, match="quantize_model"):
        export.export_tflite(plain, path, "qann_float")
    with pytest.raises(ExportError, match="quantize_model"):
        export.export_tflite(plain, path, "snn_full")
    with pytest.raises(ExportError, match="kind must be one of"):
        export.export_tflite(plain, path, "onnx")
    qat, x, _ = separated_case()
    snn = qffs_tf.convert(qat, timesteps=2)
    with pytest.raises(ExportError, match="need the QAT model"):
        export.export_tflite(snn, path, "qann_float")
    with pytest.raises(ExportError, match="batch_size"):
        export.export_tflite(snn, path, "snn_step", batch_size=0)
    assert not os.listdir(tmp_path)


def test_a_failed_conversion_names_the_kind_and_leaves_the_old_file(tmp_path, monkeypatch):
    qat, x, _ = separated_case()
    path = tmp_path / "q.tflite"
    path.write_bytes(b"old")

    def broken(self):
        raise RuntimeError("op 'Foo' is neither a custom op nor a flex op")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "convert", broken)
    with pytest.raises(ExportError, match=r"kind 'qann_float' failed; likely cause.*'Foo'"):
        export.export_tflite(qat, path, "qann_float")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["q.tflite"]


def test_qat_model_is_converted_for_the_snn_kinds(tmp_path):
    qat, x, _ = separated_case()
    result = export.export_tflite(qat, tmp_path / "s.tflite", "snn_full", timesteps=3)
    assert result.timesteps == 3
    snn = qffs_tf.convert(qat, timesteps=3)
    _close(export_runtime.predict(result.path, x[:20]), snn.predict(x[:20], verbose=0))


def run_bin_export(qat, run_dir, *flags):
    """bin/export on a run folder holding `qat` (mnist5k images); (process, report.json)."""
    save_model(qat, run_dir / "qat_model.keras")
    (run_dir / "report.json").write_text(json.dumps({"dataset": "mnist5k", "kept": 1}))
    command = [sys.executable, os.path.join(ROOT, "bin", "export"), f"--run_dir={run_dir}"]
    done = subprocess.run([*command, *flags], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done, json.loads((run_dir / "report.json").read_text())


def test_bin_export_end_to_end(tmp_path):
    inp = keras.Input((28, 28, 1))
    y = keras.layers.Conv2D(3, 3, strides=2, name="c1")(inp)
    y = keras.layers.BatchNormalization(name="bn")(y)
    y = keras.layers.ReLU(name="r1")(y)
    y = keras.layers.MaxPooling2D(name="pool")(y)
    y = keras.layers.Flatten()(y)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(y))
    calibration = images(16, (28, 28, 1))
    qat = qffs_tf.quantize_model(model, activation_bits=2, calibration_data=calibration)
    done, report = run_bin_export(
        qat, tmp_path, "--timesteps=3", "--parity_samples=16", "--calibration_samples=16"
    )
    assert report["kept"] == 1
    assert set(report["tflite_parity"]) == set(export.KINDS)
    assert set(report["tflite_files"]) == set(export.KINDS)
    for kind in export.KINDS:
        entry = report["tflite_files"][kind]
        assert (tmp_path / entry["path"]).stat().st_size == entry["bytes"]
        assert report["tflite_parity"][kind]["samples"] == 16
    for kind in ("qann_float", "snn_full", "snn_step"):
        assert report["tflite_parity"][kind]["passed"] is True
    assert report["tflite_parity"]["snn_full"]["timesteps"] == 3
    assert "qann_float" in done.stdout and "top-1" in done.stdout
    assert all(report["tflite_files"][k]["weights"] == "float32" for k in ("snn_full", "snn_step"))
    # bin/benchmark_tflite then times the run's files (latency itself belongs to benchmarks/).
    command = [
        sys.executable,
        os.path.join(ROOT, "bin", "benchmark_tflite"),
        f"--run_dir={tmp_path}",
    ]
    flags = ["--runs=3", "--warmup=1", "--max_timesteps=4"]
    done = subprocess.run([*command, *flags], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "tflite" / "benchmark.json").read_text())["results"]
    names = [row["model"] for row in rows]
    assert names == [
        "qann_float",
        "qann_int8",
        *[f"snn_full T={t}" for t in range(1, 5)],
        "snn_step start/advance (per step)",
        "snn_step reset/step (per step)",
    ]
    assert all(row["runs"] == 3 and row["median_ms"] > 0 for row in rows), rows


def test_bin_export_with_int8_snn_weights_reports_an_approximation(tmp_path):
    qat, _, _ = quadrant_case(28)  # 28x28: bin/export reads mnist5k test images
    done, report = run_bin_export(
        qat, tmp_path, "--kinds=snn_full", "--snn_int8_weights", "--parity_samples=8"
    )
    assert report["tflite_files"]["snn_full"]["weights"] == "int8"
    assert report["tflite_parity"]["snn_full"]["passed"] is None
    assert "approx" in done.stdout
