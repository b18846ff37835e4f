"""The speed paths of the engine give the same numbers: chunked windows, skipped zero steps,
the depthwise convolution inside XLA, the first neurons reading the static value."""

import numpy as np
import pytest
from snn_fixtures import every_layer_model, images, randomize

import qffs_tf
from qffs_tf._keras import keras, tf
from qffs_tf.errors import InvalidArgumentError
from qffs_tf.simulation import chunk_steps, memory_estimate
from qffs_tf.snn import Program, SpikingLinear
from qffs_tf.snn.base import active_steps
from qffs_tf.snn.layers import _depthwise_by_taps


@pytest.fixture(scope="module")
def network():
    model = every_layer_model(3)
    x = images(12, model.input_shape[1:], 3)
    qat = qffs_tf.quantize_model(model, activation_bits=2, calibration_data=x)
    return qffs_tf.convert(qat, timesteps=10), x


def assert_same_run(a, b):
    np.testing.assert_array_equal(a.logits, b.logits)
    for name in a.positive_spikes:
        np.testing.assert_array_equal(a.positive_spikes[name], b.positive_spikes[name])
        np.testing.assert_array_equal(a.negative_spikes[name], b.negative_spikes[name])
        np.testing.assert_array_equal(a.counts[name], b.counts[name])
    for name in a.synaptic_ops:
        np.testing.assert_array_equal(a.synaptic_ops[name], b.synaptic_ops[name])


def test_chunked_windows_equal_the_whole_window_bit_for_bit(network):
    snn, x = network
    whole = qffs_tf.simulate(snn, x, max_memory_mb=float("inf"))
    program = Program(snn)
    state, per_step = memory_estimate(program, len(x))
    for steps in (1, 3, 4):  # budgets that leave room for that many steps per chunk
        budget = (state + steps * per_step) / 2**20
        assert chunk_steps(program, len(x), budget) == steps
        assert_same_run(qffs_tf.simulate(snn, x, max_memory_mb=budget), whole)
    # Stepwise adds in the same order as the chunks: identical too.
    assert_same_run(qffs_tf.simulate(snn, x, mode="stepwise"), whole)
    assert whole.spikes_per_step().sum() > 0


def test_the_automatic_budget_chunks_only_long_windows(network):
    snn, x = network
    program = Program(snn)
    state, per_step = memory_estimate(program, len(x))
    assert state > 0 and per_step > 0
    assert chunk_steps(program, len(x), None) <= program.timesteps
    assert chunk_steps(program, len(x), float("inf")) == program.timesteps
    with pytest.raises(InvalidArgumentError, match="max_memory_mb"):
        qffs_tf.simulate(snn, x, max_memory_mb=0)


def test_zero_steps_are_skipped_without_changing_the_result():
    layer = SpikingLinear("conv2d", (3, 3, 2, 4), padding="same", name="conv")
    layer.build((None, 6, 5, 5, 2))
    rng = np.random.default_rng(0)
    layer.set_weights([rng.normal(size=(3, 3, 2, 4)), rng.normal(size=4)])
    x = np.zeros((3, 6, 5, 5, 2), np.float32)
    x[:, 1] = rng.choice([-0.5, 0.0, 0.5], size=(3, 5, 5, 2))  # steps 0, 2..5 all zero
    x[0, 3, 2, 2, 1] = 0.5
    x = tf.constant(x)
    np.testing.assert_array_equal(active_steps(x), [False, True, False, True, False, False])
    folded = tf.reshape(x, [-1, 5, 5, 2])
    dense = tf.reshape(layer.linear(folded), [3, 6, 5, 5, 4]).numpy()
    dense[:, 0] += layer.bias.numpy()  # the bias arrives at step 0 ("once" coding)
    for threshold in (0, 10**12):  # skipping on (however small the input) and off
        with qffs_tf.snn.fusion_threshold(threshold):
            for compiled in (False, True):
                window = tf.function(lambda v: layer.window(v, [])[0], jit_compile=compiled)
                np.testing.assert_array_equal(window(x), dense)
    silent = tf.zeros_like(x)
    np.testing.assert_array_equal(layer.window(silent, [])[0][:, 1:], 0.0)


@pytest.mark.parametrize(
    "size, kernel, stride, padding, dilation, multiplier",
    [
        (12, 3, 1, "SAME", 1, 1),
        (13, 3, 2, "SAME", 1, 2),
        (12, 3, 2, "VALID", 1, 1),
        (14, 3, 1, "SAME", 2, 1),
        (10, 2, 2, "SAME", 1, 3),
    ],
)
def test_depthwise_by_taps_matches_the_native_op(
    size, kernel, stride, padding, dilation, multiplier
):
    rng = np.random.default_rng(size)
    x = tf.constant(rng.normal(size=(2, size, size, 3)).astype(np.float32))
    w = tf.constant(rng.normal(size=(kernel, kernel, 3, multiplier)).astype(np.float32))
    native = tf.nn.depthwise_conv2d(
        x, w, (1, stride, stride, 1), padding, dilations=(dilation,) * 2
    )
    taps = _depthwise_by_taps(x, w, (stride, stride), padding, (dilation, dilation))
    assert taps.shape == native.shape
    # Same products, another summation order: equal to float32 rounding of the sums.
    np.testing.assert_allclose(taps, native, rtol=1e-5, atol=1e-5)


def test_first_neurons_read_the_static_value_directly(network):
    snn, x = network
    program = Program(snn)
    assert program.direct_static  # the ToTemporal output is not laid over the window
    values, _ = program.window(tf.constant(x))
    keras_outputs = snn(x)  # the Keras model materialises the window and runs `call`
    np.testing.assert_array_equal(values[program.readout.name], keras_outputs)


def _concatenate_transpose_model(seed: int) -> keras.Model:
    """Main's newer layer kinds: Concatenate, Conv2DTranspose, GlobalMaxPooling2D."""
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inp)
    x = qffs_tf.QuantReLU(2, name="a1")(x)
    a = keras.layers.Conv2D(3, 1, name="a_conv")(x)
    a = qffs_tf.QuantReLU(2, name="a2")(a)
    b = keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same", name="deconv")(x)
    b = qffs_tf.QuantReLU(2, name="a3")(b)
    b = keras.layers.MaxPooling2D(name="pool")(b)
    x = keras.layers.Concatenate(name="cat")([a, b])
    x = keras.layers.GlobalMaxPooling2D(name="gmp")(x)
    return randomize(keras.Model(inp, keras.layers.Dense(4, name="logits")(x)), seed)


def _integer_model(seed: int) -> keras.Model:
    """An integer-mode network: BatchNorm, a max-pool, a residual Add, average pooling."""
    inp = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    branch = keras.layers.Conv2D(4, 3, padding="same", name="c2")(x)
    x = keras.layers.Add(name="add")([x, branch])
    x = keras.layers.ReLU(name="r2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return randomize(keras.Model(inp, keras.layers.Dense(3, name="logits")(x)), seed)


@pytest.mark.parametrize("arithmetic", ["float", "integer"])
def test_main_layer_kinds_chunk_bit_for_bit(arithmetic):
    """Every stateful layer carries its state through `window`: chunks of two steps (each
    after the first starting from a carried state) and the whole window give the same spikes
    and logits, and so does stepwise."""
    if arithmetic == "integer":
        model = _integer_model(5)
        x = images(8, model.input_shape[1:], 5)
        qat = qffs_tf.quantize_model(model, activation_bits=2, weight_bits=8, calibration_data=x)
        qat(x, training=True)  # sets tfmot's weight ranges, as the first training step does
        snn = qffs_tf.convert(qat, timesteps=12, arithmetic="integer")
    else:
        qat = _concatenate_transpose_model(4)
        x = images(8, qat.input_shape[1:], 4)
        qat(x)  # QuantReLU initialises its step sizes from the first batch it sees
        snn = qffs_tf.convert(qat, timesteps=6)
    whole = qffs_tf.simulate(snn, x, max_memory_mb=float("inf"))
    program = Program(snn)
    state, per_step = memory_estimate(program, len(x))
    budget = (state + 2 * per_step) / 2**20
    assert chunk_steps(program, len(x), budget) == 2
    assert_same_run(qffs_tf.simulate(snn, x, max_memory_mb=budget), whole)
    assert_same_run(qffs_tf.simulate(snn, x, mode="stepwise"), whole)
    assert whole.spikes_per_step().sum() > 0


def test_fused_and_plain_passes_give_the_same_run():
    """The elementwise passes (neuron window, zero-step test, statistics) run as their own XLA
    clusters from FUSION_MIN_ELEMENTS per sample, as plain ops below: the same numbers, in
    every mode, and the threshold really changes what runs."""
    model = every_layer_model(6)
    x = images(8, model.input_shape[1:], 6)
    qat = qffs_tf.quantize_model(model, activation_bits=2, calibration_data=x)
    runs = {}
    for name, threshold in (("fused", 0), ("plain", 10**12)):
        snn = qffs_tf.convert(qat, timesteps=6)  # a fresh model: programs trace anew
        traces = qffs_tf.simulation._partial_counts.experimental_get_tracing_count()
        state, per_step = memory_estimate(Program(snn), len(x))
        two_steps = (state + 2 * per_step) / 2**20  # chunks of two steps
        with qffs_tf.snn.fusion_threshold(threshold):
            runs[name] = [
                qffs_tf.simulate(snn, x),
                qffs_tf.simulate(snn, x, mode="stepwise"),
                qffs_tf.simulate(snn, x, max_memory_mb=two_steps),
            ]
        traced = qffs_tf.simulation._partial_counts.experimental_get_tracing_count() - traces
        assert (traced > 0) == (name == "fused")
    for fused_run, plain_run in zip(runs["fused"], runs["plain"], strict=True):
        assert_same_run(fused_run, plain_run)
    assert runs["plain"][0].spikes_per_step().sum() > 0
    with pytest.raises(InvalidArgumentError, match="min_elements"):
        with qffs_tf.snn.fusion_threshold(-1):
            pass


class _NoQuietBound(qffs_tf.snn.neurons.QFFSNeuron):
    """QFFS without the quiet_within bound: the engine computes every step."""

    name = "qffs_without_quiet_bound"

    def quiet_within(self, levels):
        return None


qffs_tf.snn.register_neuron(_NoQuietBound)


@pytest.mark.parametrize("timesteps", [3, 9, 20])  # shorter than, past, and past the unrolling
def test_steps_after_the_quiet_bound_are_skipped_exactly(timesteps):
    """Each neuron layer computes only the steps before its quiet bound (layerwise: zeros
    stand for the rest; stepwise: it is not run), the first ones (static input, "once"
    coding) and the later ones alike; the run equals the one that computes every step,
    whole, in chunks and stepwise."""
    model = every_layer_model(5)
    x = images(8, model.input_shape[1:], 5)
    qat = qffs_tf.quantize_model(model, activation_bits=2, calibration_data=x)
    skipping = qffs_tf.convert(qat, timesteps=timesteps)
    computing = qffs_tf.convert(qat, timesteps=timesteps, neuron="qffs_without_quiet_bound")
    reference = qffs_tf.simulate(computing, x, max_memory_mb=float("inf"))
    program = Program(skipping)
    assert not Program(computing).quiet_from
    # The fixture's 7 neuron layers are in series (the residual Add joins a layer and its own
    # reader): the static value arrives at step 0 only, so the n-th layer's input is zero from
    # 1 + (n - 1)(L - 1) and it is quiet from 1 + n (L - 1), with L = 3 at 2 bits.
    assert sorted(program.quiet_from.values()) == [2 * n + 1 for n in range(1, 8)]
    state, per_step = memory_estimate(program, len(x))
    for budget in (float("inf"), (state + 2 * per_step) / 2**20):  # whole, chunks of 2
        assert_same_run(qffs_tf.simulate(skipping, x, max_memory_mb=budget), reference)
    assert_same_run(qffs_tf.simulate(skipping, x, mode="stepwise"), reference)
    assert reference.spikes_per_step().sum() > 0


def test_quiet_tails_are_written_by_the_neuron_pass_not_padded_on():
    """A neuron layer whose quiet bound falls inside an unrolled window writes the zero tail
    in its own pass (no Pad after it: that would be one more pass over its window), and the
    forward pass still equals `simulate`'s last step bit for bit."""
    model = every_layer_model(5)
    x = images(8, model.input_shape[1:], 5)
    qat = qffs_tf.quantize_model(model, activation_bits=2, calibration_data=x)
    snn = qffs_tf.convert(qat, timesteps=9)
    quiet_from = Program(snn).quiet_from
    bounded = [name for name, bound in quiet_from.items() if bound < 9]
    assert sorted(quiet_from[name] for name in bounded) == [3, 5, 7]  # see the test above
    forward = tf.function(lambda v: snn(v))
    graph = forward.get_concrete_function(tf.TensorSpec((len(x), *x.shape[1:]))).graph
    padded = [
        op.name
        for op in graph.get_operations()
        if op.type in ("Pad", "PadV2") and any(f"/{name}/" in f"/{op.name}" for name in bounded)
    ]
    assert padded == []
    logits = qffs_tf.simulate(snn, x).logits[:, -1]
    np.testing.assert_array_equal(forward(tf.constant(x)).numpy(), logits)
