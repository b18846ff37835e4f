"""The public analysis API: inputs of every kind, baselines, summary, plots, bounded memory."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from snn_fixtures import flatten_model, images

import qffs_tf
from qffs_tf._keras import tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMESTEPS = 10


@pytest.fixture(scope="module")
def setup():
    model = flatten_model(3)
    x = images(30, model.input_shape[1:], 3)
    qat = qffs_tf.quantize_model(model, 2, calibration_data=x)
    labels = np.argmax(qat.predict(x, verbose=0), axis=-1)  # mechanics only: QANN's answers
    labels[:6] = (labels[:6] + 1) % 4
    snn = qffs_tf.convert(qat, timesteps=TIMESTEPS)
    analysis = qffs_tf.analyze(snn, (x, labels), qat_model=qat, batch_size=8, progress=False)
    return qat, snn, x, labels, analysis


def test_report_has_the_snn_and_both_baselines(setup):
    qat, snn, x, labels, analysis = setup
    report = analysis.to_dict()
    json.dumps(report)  # JSON-ready
    for key in (
        "snn_accuracy_per_step",
        "agreement_per_step",
        "plain_if_snn_accuracy_per_step",
        "plain_if_agreement_per_step",
        "rate_accuracy_per_step",
        "rate_agreement_per_step",
    ):
        assert len(report[key]) == TIMESTEPS
    assert report["qann_accuracy"] == pytest.approx(24 / 30)
    # The rate baseline equals a separate rate conversion simulated on its own.
    rate = qffs_tf.simulate(qffs_tf.convert(qat, TIMESTEPS, neuron="rate"), x)
    accuracy = (rate.logits.argmax(-1) == labels[:, None]).mean(axis=0)
    np.testing.assert_allclose(report["rate_accuracy_per_step"], accuracy)
    assert report["rate_mean_quiet_step"] is None  # a constant current is never quiet
    assert "rate_count_mismatches_per_layer" not in report  # rate counts are not QANN levels
    assert report["exact_counts"]


def test_summary_lists_each_neuron_layer_with_threshold_and_levels(setup):
    _, snn, *_, analysis = setup
    text = analysis.summary()
    for layer in snn.layers:
        if isinstance(layer, qffs_tf.snn.SpikingNeurons):
            row = next(line for line in text.splitlines() if line.startswith(layer.name[:25]))
            assert f"{layer.threshold:.4g}" in row and " 3 " in row  # L = 3 for 2 bits
    assert "rate-coded" in text
    assert repr(analysis).startswith("Analysis(samples=30, timesteps=10")


def test_plot_writes_pngs(setup, tmp_path):
    paths = setup[-1].plot(tmp_path / "plots")
    assert set(paths) == {"accuracy_plot", "firing_rate_plot"}
    for path in paths.values():
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _dataset_variants(x, labels):
    yield "tf.data unbatched", tf.data.Dataset.from_tensor_slices((x, labels))
    yield "tf.data batched", tf.data.Dataset.from_tensor_slices((x, labels)).batch(7)
    yield "generator", ((x[i : i + 5], labels[i : i + 5]) for i in range(0, len(x), 5))


def test_every_input_kind_gives_the_same_report(setup):
    qat, snn, x, labels, analysis = setup
    for name, data in _dataset_variants(x, labels):
        other = qffs_tf.analyze(snn, data, qat_model=qat, baselines=(), progress=False)
        assert other.report["samples"] == 30, name
        np.testing.assert_allclose(
            other.report["snn_accuracy_per_step"], analysis.report["snn_accuracy_per_step"]
        )
        assert other.report["spikes_per_image"] == pytest.approx(
            analysis.report["spikes_per_image"]
        )


def test_simulate_and_verify_take_datasets_and_batch_sizes(setup):
    qat, snn, x, *_ = setup
    whole = qffs_tf.simulate(snn, x)
    for data in (tf.data.Dataset.from_tensor_slices(x).batch(4), tf.constant(x)):
        parts = qffs_tf.simulate(snn, data, batch_size=11)
        np.testing.assert_array_equal(parts.quiet_step, whole.quiet_step)
        np.testing.assert_allclose(parts.logits, whole.logits, rtol=1e-5, atol=1e-5)
        for name in whole.counts:
            np.testing.assert_array_equal(parts.counts[name], whole.counts[name])
    assert repr(whole).startswith("SimulationResult(samples=30, timesteps=10")


def test_bad_inputs_raise_api_errors(setup):
    qat, snn, x, *_ = setup
    with pytest.raises(qffs_tf.InvalidInputError, match="no image"):
        qffs_tf.analyze(snn, x[:0], qat_model=qat, progress=False)
    with pytest.raises(qffs_tf.InvalidInputError, match="No image"):
        qffs_tf.simulate(snn, x[:0])
    with pytest.raises(qffs_tf.InvalidInputError, match="uint8"):
        qffs_tf.simulate(snn, (x * 255).astype(np.uint8))
    with pytest.raises(qffs_tf.InvalidArgumentError, match="qat_model"):
        qffs_tf.analyze(snn, x, progress=False)
    with pytest.raises(qffs_tf.InvalidArgumentError, match="baseline"):
        qffs_tf.analyze(snn, x, qat_model=qat, baselines=("bogus",), progress=False)
    for bad in (1.5, 0, None, float("inf"), 2**31, True, "8"):
        with pytest.raises(qffs_tf.InvalidArgumentError, match="timesteps"):
            qffs_tf.convert(qat, timesteps=bad)
    with pytest.raises(qffs_tf.InvalidArgumentError, match="timesteps"):
        qffs_tf.simulate(snn, x, timesteps=1.5)
    assert qffs_tf.convert(qat, timesteps=np.int64(3)).output_shape == (None, 4)


def test_nan_images_give_nan_not_quiet_logits(setup):
    _, snn, x, *_ = setup
    bad = x[:3].copy()
    bad[0, 0, 0, 0] = np.nan
    bad[1, 1, 1, 0] = np.inf
    out = snn.predict(bad, verbose=0)
    assert np.isnan(out[0]).all() and np.isnan(out[1]).all()
    np.testing.assert_allclose(out[2], snn.predict(x[2:3], verbose=0)[0], rtol=1e-6)


_MEMORY_PROBE = r"""
import resource, sys
import numpy as np
import qffs_tf
from qffs_tf._keras import keras
inp = keras.Input((32, 32, 3))
h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
h = keras.layers.GlobalAveragePooling2D()(h)
model = keras.Model(inp, keras.layers.Dense(10)(h))
rng = np.random.default_rng(0)
calibration = rng.uniform(0, 1, (32, 32, 32, 3)).astype(np.float32)
qat = qffs_tf.quantize_model(model, 2, calibration_data=calibration)
snn = qffs_tf.convert(qat, timesteps=8)
def data(n):  # images made on the fly: only the analysis itself can hold memory
    for start in range(0, n, 100):
        yield rng.uniform(0, 1, (100, 32, 32, 3)).astype(np.float32), np.zeros(100, int)
options = dict(qat_model=qat, batch_size=100, baselines=(), progress=False)
qffs_tf.analyze(snn, data(200), **options)  # warm-up: compilation, allocator pools
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
qffs_tf.analyze(snn, data(int(sys.argv[1])), **options)
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_kib(images: int) -> tuple[int, int]:
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(images)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = map(int, done.stdout.split()[-2:])
    return before, after


def test_streamed_analysis_memory_does_not_grow_with_the_data():
    # Growth of the process's peak resident memory over a warm-up run, for 200 and for
    # 2,000 images. Streaming keeps only aggregates, so ten times the data must not double
    # it. The 48 MiB allowance absorbs allocator noise; keeping per-image results instead
    # would add about 125 MiB for 2,000 images (16,384 neuron counts of 4 bytes each).
    small_before, small_after = _peak_kib(200)
    large_before, large_after = _peak_kib(2000)
    small, large = small_after - small_before, large_after - large_before
    assert large < 2 * small + 48 * 1024, (small, large)
