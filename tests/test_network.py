"""The converted SNN is a `SpikingNetwork`: a functional Keras model whose call runs its
`Program` (quiet steps skipped, the first neurons reading the static charge). Its answers
must equal Keras's own layer-by-layer call of the same layers bit for bit: that call
computes every step of every layer and knows no bound, so it is the independent reference."""

import numpy as np
import pytest
from snn_fixtures import every_layer_model, flatten_model

import qffs_tf
from qffs_tf._keras import keras, tf
from qffs_tf.snn import Program, SpikingNetwork, program_of, with_timesteps

CASES = {"every_layer": (every_layer_model, (12, 12, 2)), "flatten": (flatten_model, (10, 10, 1))}


def converted(case: str, timesteps: int = 9):
    build, shape = CASES[case]
    images = np.random.default_rng(3).uniform(0, 1, (12, *shape)).astype(np.float32)
    qat = qffs_tf.quantize_model(build(), activation_bits=2, calibration_data=images)
    return qat, qffs_tf.convert(qat, timesteps), images


def layer_by_layer(snn: keras.Model) -> keras.Model:
    """The same layers as a plain functional model: Keras calls each layer on whole windows."""
    return keras.Model(snn.inputs, snn.outputs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_call_and_predict_equal_the_layer_by_layer_call(case):
    _, snn, images = converted(case)
    assert isinstance(snn, SpikingNetwork)
    program = snn.program
    # Some layer is quiet inside the window, so the call skips steps the reference computes.
    assert min(program.quiet_from.values(), default=99) < 9
    reference = layer_by_layer(snn)(images).numpy()
    np.testing.assert_array_equal(snn(images).numpy(), reference)
    np.testing.assert_array_equal(snn.predict(images, batch_size=5, verbose=0), reference)
    # What simulate reports after the last step is what the call returns (linear head).
    logits = qffs_tf.simulate(snn, images).final_logits
    np.testing.assert_array_equal(logits, reference)


def test_window_keeps_only_the_values_asked_for_with_the_same_numbers():
    _, snn, images = converted("every_layer")
    program = Program(snn)
    everything, _ = program.window(tf.constant(images))
    readout = program.readout.name
    kept, _ = program.window(tf.constant(images), keep=(readout, program.integrate.name))
    assert set(kept) == {readout, program.integrate.name}
    for name in kept:
        np.testing.assert_array_equal(kept[name].numpy(), everything[name].numpy())


def test_integer_images_are_cast_as_the_functional_call_casts_them():
    _, snn, _ = converted("flatten")
    pixels = np.random.default_rng(0).integers(0, 2, (4, 10, 10, 1)).astype(np.uint8)
    np.testing.assert_array_equal(snn(pixels).numpy(), snn(pixels.astype(np.float32)).numpy())


def test_wrong_input_shape_is_refused_before_the_program_runs():
    _, snn, _ = converted("flatten")
    with pytest.raises(ValueError, match="incompatible"):
        snn(np.zeros((2, 7, 7, 1), np.float32))


def test_with_timesteps_keeps_the_class_and_equals_a_fresh_conversion():
    qat, snn, images = converted("every_layer")
    longer = with_timesteps(snn, 13)
    assert isinstance(longer, SpikingNetwork)
    fresh = qffs_tf.convert(qat, 13)
    np.testing.assert_array_equal(longer(images).numpy(), fresh(images).numpy())


def test_an_snn_saved_as_a_plain_functional_model_loads_as_a_spiking_network(tmp_path):
    _, snn, images = converted("flatten")
    old = layer_by_layer(snn)  # what earlier versions of convert returned and saved
    path = tmp_path / "old_snn.keras"
    old.save(path)
    loaded = qffs_tf.load_model(path)
    assert isinstance(loaded, SpikingNetwork)
    np.testing.assert_array_equal(loaded(images).numpy(), snn(images).numpy())
    # Plain tf_keras loading keeps the saved class: the layer-by-layer call, same numbers.
    plain = keras.models.load_model(path, compile=False)
    assert not isinstance(plain, SpikingNetwork)
    np.testing.assert_array_equal(plain(images).numpy(), snn(images).numpy())


def test_the_network_program_is_built_once_and_shared():
    """`simulate` and export take a SpikingNetwork's own program; a plain functional SNN
    gets one of its own graph."""
    _, snn, _ = converted("flatten")
    assert program_of(snn) is snn.program
    plain = layer_by_layer(snn)
    program = program_of(plain)
    assert isinstance(program, Program) and program.snn is plain
