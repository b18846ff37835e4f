"""The QFFS activation quantizer: forward values, LSQ gradients, the layer and tfmot quantizer."""

import math

import numpy as np
import pytest

from qffs_tf._keras import keras, tf
from qffs_tf.errors import QFFSError, QuantizationError
from qffs_tf.quantization import (
    QFFSActivationQuantizer,
    QuantReLU,
    activation_spec,
    check_bits,
    effective_step_size,
    initial_step_size,
    levels,
    quantize,
    step_cap,
)


def reference(x, s, bits):
    return np.clip(np.floor(x / s + 0.5), 0, 2**bits - 1) * s


def test_forward_values_on_hand_made_inputs():
    # s = 0.5 and these x are exact in binary, so x/s and the half-way points are exact.
    x = np.array([-1.0, -0.25, 0.0, 0.2, 0.25, 0.74, 0.75, 1.25, 1.5, 2.0, 100.0], np.float32)
    expected = np.array([0, 0, 0, 0, 0.5, 0.5, 1.0, 1.5, 1.5, 1.5, 1.5], np.float32)
    got = quantize(tf.constant(x), tf.constant(0.5), bits=2).numpy()
    np.testing.assert_array_equal(got, expected)


def test_half_way_points_round_up_for_every_level():
    s = 0.25
    for bits in (1, 2, 3):
        num = levels(bits)
        halves = (np.arange(num) + 0.5) * s  # exactly between two levels
        got = quantize(tf.constant(halves, tf.float32), tf.constant(s), bits).numpy()
        np.testing.assert_array_equal(got, (np.arange(num) + 1) * s)


@pytest.mark.parametrize("bits", range(1, 9))
def test_forward_matches_reference_for_all_bit_widths(bits):
    rng = np.random.default_rng(bits)
    x = rng.normal(0, 2, size=(4, 257)).astype(np.float32)
    s = 3.0 / levels(bits)
    got = quantize(tf.constant(x), tf.constant(s), bits).numpy()
    np.testing.assert_allclose(got, reference(x, np.float32(s), bits), rtol=0, atol=1e-6)
    assert len(np.unique(np.round(got / s))) <= levels(bits) + 1


def test_straight_through_and_lsq_gradients_match_hand_derivation():
    bits, s = 2, 0.5
    num = levels(bits)
    x = np.array([[-0.3, 0.1, 0.6, 1.2, 1.6, 3.0]], np.float32)  # below, inside x3, above x2
    upstream = np.array([[1.0, 2.0, -1.0, 0.5, 3.0, -2.0]], np.float32)
    xt, st = tf.Variable(x), tf.Variable(s)
    with tf.GradientTape() as tape:
        y = quantize(xt, st, bits)
        loss = tf.reduce_sum(y * upstream)
    dx, ds = tape.gradient(loss, [xt, st])
    v = x / s
    inside = (v > 0) & (v < num)
    above = v >= num
    np.testing.assert_array_equal(dx.numpy(), np.where(inside, upstream, 0.0))
    q = np.clip(np.floor(v + 0.5), 0, num)
    per_elem = np.where(inside, q - v, np.where(above, num, 0.0)) * upstream
    g = 1.0 / math.sqrt(x.shape[1] * num)
    assert ds.numpy() == pytest.approx(per_elem.sum() * g, rel=1e-6)


def test_step_gradient_scale_uses_activations_per_example():
    # Doubling the batch doubles the summed gradient but keeps g = 1/sqrt(N*L) per example.
    x1 = tf.constant(np.full((1, 8), 2.0, np.float32))  # all above the clip: ds = L * g each
    x2 = tf.concat([x1, x1], axis=0)
    grads = []
    for x in (x1, x2):
        s = tf.Variable(0.5)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(quantize(x, s, 2))
        grads.append(tape.gradient(loss, s).numpy())
    g = 1.0 / math.sqrt(8 * 3)
    assert grads[0] == pytest.approx(8 * 3 * g, rel=1e-6)
    assert grads[1] == pytest.approx(2 * grads[0], rel=1e-6)


def test_lsq_initial_step_size():
    x = tf.constant([[-4.0, 1.0, 2.0, 3.0]])
    expected = 2 * np.mean([0.0, 1.0, 2.0, 3.0]) / math.sqrt(3)
    assert initial_step_size(x, 2, "lsq").numpy() == pytest.approx(expected, rel=1e-6)
    assert initial_step_size(tf.zeros((2, 3)), 2, "lsq").numpy() == 1.0  # dead layer: still > 0


@pytest.mark.parametrize("bad", [0, 9, 2.5, "2", True, float("nan"), None])
def test_bits_validation(bad):
    with pytest.raises(QuantizationError, match="bits") as info:
        check_bits(bad)
    assert isinstance(info.value, QFFSError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("good", [3, np.int64(3), np.int32(3), 3.0, np.float32(3.0)])
def test_bits_accept_any_whole_number_type(good):
    assert check_bits(good) == 3 and type(check_bits(good)) is int


def test_quant_relu_layer_initialises_from_first_batch_and_then_learns():
    layer = QuantReLU(bits=2)
    x = tf.constant(np.linspace(-1, 2, 40, dtype=np.float32).reshape(4, 10))
    y = layer(x).numpy()
    s = float(layer.step_size.numpy())
    assert s == pytest.approx(initial_step_size(x, 2).numpy(), rel=1e-6)
    np.testing.assert_allclose(y, reference(x.numpy(), np.float32(s), 2), atol=1e-6)
    layer(x * 10)  # a later batch does not re-initialise
    assert float(layer.step_size.numpy()) == s
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x))
    assert tape.gradient(loss, layer.step_size) is not None


def test_quant_relu_model_saves_and_loads(tmp_path):
    import qffs_tf

    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5), QuantReLU(3), keras.layers.Dense(2)]
    )
    x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    before = model(x).numpy()
    path = str(tmp_path / "m.keras")
    model.save(path)
    np.testing.assert_array_equal(qffs_tf.load_model(path)(x).numpy(), before)


# ----------------------------------------------------------------------------- capped ReLU


def test_relu6_forward_uses_the_capped_step():
    # Learned s = 3 but L * s = 9 > 6: the effective step is 6 / 3 = 2 (exact in binary).
    x = np.array([-1.0, 0.9, 1.0, 2.9, 3.0, 4.9, 5.0, 6.0, 7.0, 100.0], np.float32)
    expected = np.array([0, 0, 2, 2, 4, 4, 6, 6, 6, 6], np.float32)
    got = quantize(tf.constant(x), tf.constant(3.0), bits=2, max_value=6.0).numpy()
    np.testing.assert_array_equal(got, expected)
    # A step already below m / L is used as it is: the cap changes nothing.
    below = quantize(tf.constant(x), tf.constant(0.5), bits=2, max_value=6.0).numpy()
    np.testing.assert_array_equal(below, quantize(tf.constant(x), tf.constant(0.5), 2).numpy())


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("max_value", [6.0, 1.0, 0.1, 3.7, 255.0])
def test_step_cap_keeps_the_top_level_within_max_value(bits, max_value):
    cap = np.float32(step_cap(bits, max_value))
    num = np.float32(levels(bits))
    assert cap * num <= np.float32(max_value)  # float32 product, as the forward pass computes
    # ... and it is m / L up to one float32 ulp.
    assert abs(float(cap) - max_value / levels(bits)) <= float(np.spacing(cap))
    top = quantize(tf.constant([1e9]), tf.constant(1e3), bits, max_value).numpy()[0]
    assert top == cap * num and top <= max_value
    assert step_cap(bits, None) is None


def test_effective_step_size_is_what_forward_and_spec_use():
    layer = QuantReLU(bits=3, max_value=6.0)
    x = tf.constant(np.linspace(0.0, 50.0, 64, dtype=np.float32).reshape(2, 32))
    layer(x)  # LSQ init from this batch exceeds 6 / 7: the init is capped
    layer.step_size.assign(5.0)  # and a learned value above the cap is capped in use
    spec = activation_spec(layer)
    assert spec.step_size == step_cap(3, 6.0) == float(layer.effective_step_size)
    assert spec.max_value == 6.0 and spec.levels == 7
    y = layer(x).numpy()
    q = np.round(y / np.float32(spec.step_size))
    np.testing.assert_array_equal(y, q.astype(np.float32) * np.float32(spec.step_size))
    assert q.max() == 7 and y.max() <= 6.0


def test_capped_initial_step_size():
    x = tf.constant([[0.0, 30.0, 60.0]])
    assert initial_step_size(x, 2, "lsq", 6.0).numpy() == 2.0  # LSQ would give 34.6
    small = tf.constant([[0.0, 0.3, 0.6]])
    assert initial_step_size(small, 2, "lsq", 6.0).numpy() == pytest.approx(
        initial_step_size(small, 2, "lsq").numpy()
    )


def test_capped_step_gradient_is_identity_below_the_cap_and_one_sided_above():
    # Below the cap: the same gradient as without a cap.
    x = tf.constant(np.linspace(-1.0, 3.0, 16, dtype=np.float32).reshape(1, 16))
    grads = []
    for max_value in (None, 6.0):
        s = tf.Variable(0.5)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(quantize(x, s, 2, max_value) * tf.range(16.0))
        grads.append(tape.gradient(loss, s).numpy())
    assert grads[0] == grads[1] != 0.0

    def step_grad(s_value, sign):
        s = tf.Variable(s_value)
        with tf.GradientTape() as tape:
            loss = sign * tf.reduce_sum(effective_step_size(s, 2, 6.0))
        return tape.gradient(loss, s).numpy()

    # Above the cap (s = 3 > 2) the output does not depend on s: a gradient that would raise
    # s further (negative) is blocked, one that lowers it back (positive) passes.
    assert step_grad(3.0, -1.0) == 0.0
    assert step_grad(3.0, +1.0) == 1.0
    assert step_grad(1.5, -1.0) == -1.0  # below the cap both directions pass
    # And through the quantizer: all inputs above the top level ask for a larger step (LSQ
    # gradient L per element, negated by the loss), which is blocked above the cap.
    s = tf.Variable(3.0)
    with tf.GradientTape() as tape:
        loss = -tf.reduce_sum(quantize(tf.fill((1, 8), 100.0), s, 2, 6.0))
    assert tape.gradient(loss, s).numpy() == 0.0


def test_quant_relu_and_quantizer_validate_max_value():
    for bad in (0.0, -6.0, float("inf"), "6"):
        with pytest.raises(QuantizationError, match="max_value"):
            QuantReLU(2, max_value=bad)
        with pytest.raises(QuantizationError, match="max_value"):
            QFFSActivationQuantizer(2, max_value=bad)
    with pytest.raises(QuantizationError, match="init"):
        QuantReLU(2, init="max")
    assert QuantReLU(2, max_value=6).get_config()["max_value"] == 6.0
