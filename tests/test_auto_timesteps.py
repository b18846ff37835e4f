"""timesteps="auto": the smallest window in which every calibration image becomes quiet."""

import math

import numpy as np
import pytest
from snn_fixtures import flatten_model, images

import qffs_tf
from qffs_tf.conversion import timesteps_of
from qffs_tf.errors import InvalidArgumentError, InvalidInputError


@pytest.fixture(scope="module")
def network():
    model = flatten_model(2)
    x = images(48, model.input_shape[1:], 2)
    qat = qffs_tf.quantize_model(model, activation_bits=3, calibration_data=x)
    return qat, x


def test_choice_is_the_largest_quiet_step_plus_the_margin(network):
    qat, x = network
    choice = qffs_tf.choose_timesteps(qat, x)
    largest = choice.max_quiet_step
    assert choice.timesteps == max(largest + 1, math.ceil(1.25 * largest))
    assert sum(choice.distribution().values()) == len(x)
    assert choice.mean_quiet_step == pytest.approx(choice.quiet_steps.mean())
    # Checked independently with a plain layerwise run: at the largest quiet step every
    # image is quiet and its counts exact; one step earlier some image still spikes.
    snn = qffs_tf.convert(qat, timesteps=largest + 4)
    full = qffs_tf.simulate(snn, x)
    np.testing.assert_array_equal(full.quiet_step, choice.quiet_steps)
    assert qffs_tf.verify(qat, snn, x, timesteps=largest).exact
    if largest > 1:
        assert (qffs_tf.simulate(snn, x, timesteps=largest - 1).quiet_step < 0).any()
    assert f"T = {choice.timesteps}" in str(choice)


def test_convert_auto_uses_the_choice(network):
    qat, x = network
    snn = qffs_tf.convert(qat, timesteps="auto", calibration_data=x)
    choice = snn.qffs_timesteps_choice
    assert timesteps_of(snn) == choice.timesteps
    assert (qffs_tf.simulate(snn, x).quiet_step > 0).all()
    no_margin = qffs_tf.choose_timesteps(qat, x, margin=0.0)
    assert no_margin.timesteps == choice.max_quiet_step + 1


def test_auto_refuses_what_it_cannot_measure(network):
    qat, x = network
    with pytest.raises(InvalidArgumentError, match="calibration_data"):
        qffs_tf.convert(qat, timesteps="auto")
    with pytest.raises(InvalidArgumentError, match="rate coding"):
        qffs_tf.choose_timesteps(qat, x, neuron="rate")
    with pytest.raises(InvalidArgumentError, match="margin"):
        qffs_tf.choose_timesteps(qat, x, margin=-0.5)
    with pytest.raises(InvalidInputError, match="empty"):
        qffs_tf.choose_timesteps(qat, x[:0])
    with pytest.raises(InvalidArgumentError, match="still spike"):
        qffs_tf.choose_timesteps(qat, x, max_timesteps=1)
