"""The certificate: every mismatched neuron is a tie, inherited, or unexplained."""

import numpy as np
import pytest
from snn_fixtures import flatten_model, images

import qffs_tf
from qffs_tf import certificate
from qffs_tf._keras import keras
from qffs_tf.errors import InvalidInputError

# Found by an exhaustive float32 search: 3*W + B is 1.5 - 6e-8 in exact arithmetic (half an
# ulp of 1.5 below). The QANN's float sum fl(fl(3W) + B) rounds to 1.5 exactly, so
# x/s + 1/2 = 2 and its level is 2; the SNN adds W + B at step 0, W at steps 1 and 2, and
# ends at count 1 (the exact value's level). Both are elementwise float32 operations, the
# same on every IEEE machine.
TIE_WEIGHT = 0.1368761658668518
TIE_BIAS = 1.0893714427947998


def tie_network() -> keras.Model:
    """image -> a1 (level 3) -> a2 (a float32 tie) -> a3 (a copy of a2) -> logits."""
    model = keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(1, name="d1"),
            qffs_tf.QuantReLU(2, name="a1"),
            keras.layers.Dense(1, name="d2"),
            qffs_tf.QuantReLU(2, name="a2"),
            keras.layers.Dense(1, name="d3"),
            qffs_tf.QuantReLU(2, name="a3"),
            keras.layers.Dense(1, name="out"),
        ]
    )
    model.get_layer("d1").set_weights([np.array([[3.0]]), np.zeros(1)])
    model.get_layer("d2").set_weights(
        [np.array([[TIE_WEIGHT]], np.float32), np.array([TIE_BIAS], np.float32)]
    )
    model.get_layer("d3").set_weights([np.ones((1, 1)), np.zeros(1)])
    model.get_layer("out").set_weights([np.ones((1, 1)), np.zeros(1)])
    for name in ("a1", "a2", "a3"):
        layer = model.get_layer(name)
        layer.step_size.assign(1.0)
        layer._vars["initialized"].assign(1.0)
    return model


def test_the_built_tie_is_within_one_ulp_of_a_rounding_boundary():
    exact = 3 * np.float64(np.float32(TIE_WEIGHT)) + np.float64(np.float32(TIE_BIAS))
    assert 0 < 1.5 - exact <= np.spacing(np.float32(1.5))
    qann_sum = np.float32(np.float32(3) * np.float32(TIE_WEIGHT)) + np.float32(TIE_BIAS)
    assert qann_sum == np.float32(1.5)  # the QANN's float sum lands on the boundary


@pytest.mark.parametrize("mode", ["layerwise", "stepwise"])
def test_a_float32_tie_is_a_tie_and_its_downstream_effect_inherited(mode):
    model = tie_network()
    x = np.ones((1, 1), np.float32)
    snn = qffs_tf.convert(model, timesteps=8)
    report = qffs_tf.verify(model, snn, x, mode=mode)
    a1, a2, a3 = report.layers
    assert report.simulation.counts["a2"].item() == 1  # the SNN rounds the other way
    assert (a1.mismatches, a1.ties, a1.inherited, a1.unexplained) == (0, 0, 0, 0)
    assert (a2.mismatches, a2.ties, a2.inherited, a2.unexplained) == (1, 1, 0, 0)
    assert (a3.mismatches, a3.ties, a3.inherited, a3.unexplained) == (1, 0, 1, 0)
    assert not report.exact and report.certified
    assert report.verdict == "certified: 1 ties, 1 inherited, 0 unexplained"
    assert report.max_logit_error == 1.0
    assert "verdict: certified: 1 ties, 1 inherited, 0 unexplained" in str(report)


@pytest.fixture(scope="module")
def flat_network():
    model = flatten_model(1)
    x = images(24, model.input_shape[1:], 1)
    qat = qffs_tf.quantize_model(model, activation_bits=2, calibration_data=x)
    return qat, x


def test_an_exact_conversion_says_exact(flat_network):
    qat, x = flat_network
    report = qffs_tf.verify(qat, qffs_tf.convert(qat, timesteps=24), x)
    assert report.exact and report.certified and report.verdict == "exact"
    assert all(layer.ties == layer.inherited == layer.unexplained == 0 for layer in report.layers)


def test_a_changed_threshold_is_unexplained_and_not_certified(flat_network):
    qat, x = flat_network
    snn = qffs_tf.convert(qat, timesteps=24)
    hidden = snn.get_layer("quant_d1")
    hidden.cell.threshold *= 1.25  # after conversion: a bug the certificate must catch
    report = qffs_tf.verify(qat, snn, x)
    first, broken = report.layers
    assert first.mismatches == 0
    assert broken.unexplained > 0 and broken.unexplained == broken.mismatches
    assert not report.certified and not report.exact
    assert report.verdict.startswith("NOT certified: 0 ties, 0 inherited, ")


def test_verify_refuses_an_empty_batch(flat_network):
    qat, x = flat_network
    snn = qffs_tf.convert(qat, timesteps=4)
    with pytest.raises(InvalidInputError, match="empty batch"):
        qffs_tf.verify(qat, snn, x[:0])


def test_classify_pools_before_counting_and_uses_the_tolerance():
    # Four neurons pooled into one output. The SNN's counts differ from the local levels at
    # one neuron, whose pre-activation is 1e-6 from the boundary x/s + 1/2 = 2.
    pool = lambda values: values.max(axis=-1, keepdims=True)  # noqa: E731
    x = np.array([[0.2, 1.5 - 1e-6, 0.1, 0.3]], np.float32)
    snn = np.array([[0.0, 2.0, 0.0, 0.0]])  # SNN rounded 1.4999990 up: 2
    qann = np.array([[1.0]])  # QANN after the pool: max of levels 0, 1, 0, 0
    tight, loose = np.full(x.shape, 1e-8), np.full(x.shape, 1e-5)
    as_tie = certificate.classify(snn, qann, x, x, loose, loose, 1.0, 3, pool)
    assert (as_tie.ties, as_tie.inherited, as_tie.unexplained) == (1, 0, 0)
    as_bug = certificate.classify(snn, qann, x, x, tight, tight, 1.0, 3, pool)
    assert (as_bug.ties, as_bug.inherited, as_bug.unexplained) == (0, 0, 1)
    # The same count from an input that really differed: inherited.
    inherited = certificate.classify(snn, qann, x + [[0, 0.5, 0, 0]], x, tight, tight, 1.0, 3, pool)
    assert (inherited.ties, inherited.inherited, inherited.unexplained) == (0, 1, 0)


def test_gamma_is_the_standard_bound():
    assert certificate.gamma(1) == pytest.approx(2.0**-24, rel=1e-6)
    assert certificate.gamma(600) == pytest.approx(600 * 2.0**-24, rel=1e-4)


def test_parity_fails_only_on_differences_no_tie_explains():
    from qffs_tf.export.parity import FLOAT_TOLERANCE, _compare

    reference = np.array([[1.0, 3.0], [2.0, -1.0], [0.5, 0.4], [4.0, 0.0]], np.float32)
    lite = reference.copy()
    lite[0, 0] += 0.5 * FLOAT_TOLERANCE * 4.0  # float rounding: within the tolerance
    lite[1, 1] += 0.3  # beyond it, on an image with a tie candidate
    lite[2] = [0.4, 0.5]  # beyond it, top-1 flipped, no candidate
    candidates = np.array([0, 2, 0, 0])
    out = _compare(lite, reference, candidates=candidates)
    assert (out["differing_samples"], out["tie_samples"], out["unexplained_samples"]) == (2, 1, 1)
    assert out["passed"] is False and out["top1_agreement"] == 0.75
    explained = _compare(lite, reference, candidates=np.array([0, 2, 1, 0]))
    assert explained["passed"] is True and explained["tie_samples"] == 2
    exact = _compare(lite, reference, candidates=np.ones(4), bit_exact=True)
    assert exact["passed"] is False and exact["unexplained_samples"] == 3
    assert exact["bit_exact"] is False


def test_parity_of_the_tie_network_passes_with_the_tie_reported(tmp_path):
    from qffs_tf.export import parity
    from qffs_tf.verification import tie_candidates

    model = tie_network()
    x = np.ones((1, 1), np.float32)
    snn = qffs_tf.convert(model, timesteps=8)
    assert tie_candidates(model, x, timesteps=8).tolist() == [1]  # a2 only
    files = parity.export_all(model, snn, tmp_path, x, kinds=("qann_float", "snn_full"))
    results = parity.check_parity(files, model, snn, x)
    # The Keras SNN has the tie (logit 1 instead of 2); LiteRT may round either way, and
    # whichever it does is explained by the tie.
    for kind in ("qann_float", "snn_full"):
        assert results[kind]["passed"] is True, results[kind]
        assert results[kind]["unexplained_samples"] == 0
