"""The IF neuron rule on its own: exact counts with negative spikes, occasional noise without."""

import numpy as np
import pytest

import qffs_tf
from qffs_tf._keras import tf
from qffs_tf.snn import NeuronCell


def run_cell(charges: np.ndarray, levels: int, noise_suppression: bool, threshold=1.0):
    """Drive a batch of independent neurons with per-step charges (batch, T); final counts."""
    neuron = "qffs" if noise_suppression else "plain_if"
    cell = NeuronCell(neuron, threshold, levels, (1,))
    membrane, count = cell.get_initial_state(batch_size=charges.shape[0], dtype=tf.float64)
    spikes = []
    for t in range(charges.shape[1]):
        out, (membrane, count) = cell.call(tf.constant(charges[:, t : t + 1]), [membrane, count])
        spikes.append(out.numpy()[:, 0])
    return count.numpy()[:, 0], np.stack(spikes, axis=1)


def test_hand_traced_neuron():
    # theta = 1, v0 = 0.5: charges 1.5, -1, -1 -> v 2 (spike), 0, -1 (negative spike), then 0.
    counts, spikes = run_cell(np.array([[1.5, -1.0, -1.0, 0.0]]), 3, True)
    np.testing.assert_array_equal(spikes, [[1.0, 0.0, -1.0, 0.0]])
    assert counts[0] == 0
    counts, spikes = run_cell(np.array([[1.5, -1.0, -1.0, 0.0]]), 3, False)
    np.testing.assert_array_equal(spikes, [[1.0, 0.0, 0.0, 0.0]])
    assert counts[0] == 1  # plain IF keeps the early spike: occasional noise


def test_cap_at_levels_and_half_up_rounding():
    charges = np.zeros((4, 8))
    charges[:, 0] = [10.0, 2.5, 1.5, 0.5]  # q = clip(floor(S + 1/2), 0, 3) = 3, 3, 2, 1
    counts, spikes = run_cell(charges, 3, True)
    np.testing.assert_array_equal(counts, [3, 3, 2, 1])
    np.testing.assert_array_equal(spikes.sum(axis=1), counts)


def random_charges(n: int, seed: int, active_steps: int = 4, total_steps: int = 16):
    """Random charge in the first steps (multiples of 1/8: exact in binary), then silence."""
    rng = np.random.default_rng(seed)
    charges = np.zeros((n, total_steps))
    charges[:, :active_steps] = np.round(rng.uniform(-1.5, 2.0, (n, active_steps)) * 8) / 8
    return charges


@pytest.mark.parametrize("levels", [1, 3, 7])
def test_negative_spikes_make_every_random_neuron_exact(levels):
    charges = random_charges(4000, levels)
    total = charges.sum(axis=1)
    expected = np.clip(np.floor(total + 0.5), 0, levels)
    counts, spikes = run_cell(charges, levels, True)
    np.testing.assert_array_equal(counts, expected)
    assert not spikes[:, -1].any()  # quiet by the end


def test_plain_if_gets_a_measurable_fraction_wrong():
    charges = random_charges(4000, 0)
    expected = np.clip(np.floor(charges.sum(axis=1) + 0.5), 0, 3)
    counts, _ = run_cell(charges, 3, False)
    correct = float((counts == expected).mean())
    # QFFS.md reports ~82 % for its (unspecified) random test; this distribution gives a
    # comparable figure. Without negative spikes a neuron can only overshoot.
    assert 0.6 < correct < 0.95
    assert (counts >= expected).all()


def edge_membranes(theta: float) -> np.ndarray:
    """float32 membranes at and around every boundary of the rule, plus random ones."""
    t = np.float32(theta)
    f32 = np.float32
    edges = [
        t,
        np.nextafter(t, f32(np.inf)),
        np.nextafter(t, f32(-np.inf)),
        f32(0.0),
        f32(-0.0),
        np.nextafter(f32(0.0), f32(1.0)),  # the smallest subnormal
        np.nextafter(f32(0.0), f32(-1.0)),
        t / 2,
        -t,
        f32(1e30),
        f32(-1e30),
        f32(np.inf),
        f32(-np.inf),
    ]
    rng = np.random.default_rng(int(theta * 100))
    return np.concatenate([edges, rng.uniform(-3 * t, 3 * t, 200).astype(np.float32)])


@pytest.mark.parametrize("neuron_name", ["qffs", "plain_if", "rate"])
@pytest.mark.parametrize("theta", [0.3, 1.0, 2.5, 7.0])
def test_arithmetic_form_equals_comparisons(neuron_name, theta):
    """TFLite runs the rule in floor/min/max form: it must give the same spikes and state as
    the comparisons on every float32 membrane, boundaries included, for every count."""
    neuron = qffs_tf.snn.get_neuron(neuron_name)
    levels = 3
    membrane = edge_membranes(theta)
    membrane, count = (
        np.repeat(membrane[:, None], levels + 1, axis=1),
        np.tile(np.arange(levels + 1, dtype=np.float32), (len(membrane), 1)),
    )
    current = np.zeros_like(membrane)  # the membrane itself is the value under test
    state = [tf.constant(membrane), tf.constant(count)]
    plain = neuron.update(tf.constant(current), state, theta, levels)
    arithmetic = neuron.update(tf.constant(current), state, theta, levels, arithmetic=True)
    np.testing.assert_array_equal(arithmetic[0].numpy(), plain[0].numpy())
    for got, want in zip(arithmetic[1], plain[1], strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert set(np.unique(plain[0].numpy())) <= {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("neuron_name", ["qffs", "plain_if"])
@pytest.mark.parametrize("levels", [1, 3, 7])
def test_without_input_a_neuron_is_quiet_after_quiet_within_steps(neuron_name, levels):
    """The bound the engine relies on to skip the end of a window (exact only if it holds):
    once the input stops, spikes come only in the next quiet_within(L) = L - 1 steps, from
    the initial state and from any state an update left (random inputs for 0 to 2L + 1
    steps before). An arbitrary state can take L steps: the bound is for reachable ones."""
    neuron = qffs_tf.snn.get_neuron(neuron_name)
    bound = neuron.quiet_within(levels)
    assert bound == levels - 1
    threshold = 0.75
    rng = np.random.default_rng(levels)
    last_spike_at_bound = False
    for inputs_before in range(2 * levels + 2):
        state = neuron.initial_state([5000], threshold, levels)
        for _ in range(inputs_before):
            current = rng.uniform(-3, 3, 5000).astype(np.float32) * levels * threshold
            _, state = neuron.update(tf.constant(current), state, threshold, levels)
        zero = tf.zeros_like(state[0])
        spikes = []
        for _ in range(3 * levels + 2):
            fired, state = neuron.update(zero, state, threshold, levels)
            spikes.append(fired.numpy())
            if len(spikes) == bound:
                settled = [s.numpy() for s in state]
        spikes = np.stack(spikes)
        np.testing.assert_array_equal(spikes[bound:], 0.0)
        if bound > 0:
            last_spike_at_bound |= bool(np.abs(spikes[bound - 1]).sum() > 0)
            for got, want in zip(state, settled, strict=True):
                np.testing.assert_array_equal(got.numpy(), want)
    assert last_spike_at_bound or bound == 0  # tight: some neurons spike until the bound
    # From an arbitrary state (n = 0, v far above theta) the L-th spike comes at step L - 1.
    far = [tf.fill([1], 10.0 * levels * threshold), tf.zeros([1])]
    fired = []
    for _ in range(levels):
        spike, far = neuron.update(tf.zeros([1]), far, threshold, levels)
        fired.append(float(spike[0]))
    assert fired == [1.0] * levels
    assert qffs_tf.snn.get_neuron("rate").quiet_within(levels) is None  # no cap: no bound
