"""Choosing the window length T from data: the smallest T at which every calibration image is
quiet (no spike anywhere any more, so its logits are final), plus a margin.

How long a network needs grows with its depth and bit width: a neuron can only settle after
the neurons feeding it have, and climbing to level q takes q steps, so the quiet step is
roughly the sum over the layers on the longest path of the levels they climb (measured:
README / NOTES-exact.md, benchmarks/latency_study.py). The simulation here runs stepwise with
early exit, so a generous window costs nothing once every image is quiet.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from qffs_tf._keras import keras
from qffs_tf.errors import InvalidArgumentError, InvalidInputError
from qffs_tf.snn.timesteps import MAX_TIMESTEPS

DEFAULT_MARGIN = 0.25


@dataclasses.dataclass
class TimestepsChoice:
    """What `choose_timesteps` measured and chose.

    Attributes
    ----------
    timesteps : int
        The chosen T: ceil((1 + margin) * the largest quiet step), at least one more than it.
    quiet_steps : numpy.ndarray
        Per calibration image, the number of steps after which it was quiet.
    margin : float
        The relative margin added on top of the largest quiet step.
    window : int
        The longest window simulated.
    """

    timesteps: int
    quiet_steps: np.ndarray
    margin: float
    window: int

    @property
    def max_quiet_step(self) -> int:
        return int(self.quiet_steps.max())

    @property
    def mean_quiet_step(self) -> float:
        return float(self.quiet_steps.mean())

    def distribution(self) -> dict[int, int]:
        """Quiet step -> number of calibration images quiet after exactly that many steps."""
        steps, counts = np.unique(self.quiet_steps, return_counts=True)
        return {int(s): int(c) for s, c in zip(steps, counts, strict=True)}

    def __str__(self) -> str:
        spread = ", ".join(f"{step}: {count}" for step, count in self.distribution().items())
        return (
            f"T = {self.timesteps} (largest quiet step {self.max_quiet_step} + "
            f"{self.margin:.0%} margin; mean {self.mean_quiet_step:.2f} over "
            f"{len(self.quiet_steps)} images)\nquiet step: images  {spread}"
        )


def _check_images(x, shape) -> np.ndarray:
    if x is None:
        raise InvalidArgumentError(
            "timesteps='auto' needs calibration_data: a batch of training images, e.g. "
            "qffs_tf.convert(qat, timesteps='auto', calibration_data=x_train[:256])."
        )
    x = np.asarray(x, np.float32)
    if x.ndim == 0 or len(x) == 0:
        raise InvalidInputError("calibration_data is empty; pass at least one image.")
    if tuple(x.shape[1:]) != tuple(shape):
        raise InvalidInputError(
            f"calibration_data has shape {x.shape}; the model takes images shaped "
            f"(N, {', '.join(map(str, shape))})."
        )
    return x


def choose_timesteps(
    qat_model: keras.Model,
    x,
    neuron="qffs",
    arithmetic: str = "float",
    margin: float = DEFAULT_MARGIN,
    max_timesteps: int = 4096,
    batch_size: int = 256,
) -> TimestepsChoice:
    """The smallest T at which every image of `x` is quiet, plus a margin.

    The SNN runs stepwise with early exit in a window that starts at 4 * L * (neuron
    layers) steps and doubles while an image still spikes at its end.

    Parameters
    ----------
    qat_model : tf_keras.Model
        The QFFS QAT model.
    x : array
        Calibration images (e.g. 256 training images).
    neuron, arithmetic
        As for `qffs_tf.convert`; the neuron model must use the "once" input coding.
    margin : float
        Relative margin on top of the largest quiet step (default 0.25): images outside the
        calibration set can take a little longer; at least one step is added.
    max_timesteps : int
        Give up (InvalidArgumentError) if images still spike after this many steps.
    batch_size : int
        Images simulated at once.

    Returns
    -------
    TimestepsChoice

    Raises
    ------
    InvalidArgumentError
        A rate-coded neuron model (never quiet), a negative margin, or images that never
        become quiet within `max_timesteps`.
    InvalidInputError
        Empty or mis-shaped images.

    Example
    -------
    >>> choice = qffs_tf.choose_timesteps(qat_model, x_train[:256])
    >>> print(choice)   # T and the distribution of quiet steps
    """
    from qffs_tf.conversion.builder import convert
    from qffs_tf.simulation import simulate
    from qffs_tf.snn.neuron_layer import SpikingNeurons
    from qffs_tf.snn.neurons import get_neuron

    if not (margin >= 0 and math.isfinite(margin)):
        raise InvalidArgumentError(f"margin must be a finite number >= 0, got {margin!r}.")
    model = get_neuron(neuron) if arithmetic == "float" else None
    if model is not None and model.input_coding != "once":
        raise InvalidArgumentError(
            f"timesteps='auto' needs a neuron model that becomes quiet; '{model.name}' applies "
            "a constant input current at every step (rate coding). Give timesteps explicitly."
        )
    x = _check_images(x, qat_model.input_shape[1:])
    probe = convert(qat_model, 1, neuron, arithmetic=arithmetic)
    neurons = [layer for layer in probe.layers if isinstance(layer, SpikingNeurons)]
    top = max(layer.levels for layer in neurons)
    window = min(max(16, 4 * top * len(neurons)), max_timesteps, MAX_TIMESTEPS)
    quiet = np.full(len(x), -1, np.int64)
    while True:
        pending = np.flatnonzero(quiet < 0)
        for start in range(0, len(pending), batch_size):
            chosen = pending[start : start + batch_size]
            result = simulate(probe, x[chosen], window, mode="stepwise", early_exit=True)
            quiet[chosen] = result.quiet_step
        if (quiet > 0).all():
            break
        if window >= max_timesteps:
            raise InvalidArgumentError(
                f"{int((quiet < 0).sum())} calibration image(s) still spike after "
                f"{window} steps; raise max_timesteps or give timesteps explicitly."
            )
        window = min(2 * window, max_timesteps)
    largest = int(quiet.max())
    timesteps = max(largest + 1, math.ceil((1 + margin) * largest))
    return TimestepsChoice(min(timesteps, MAX_TIMESTEPS), quiet, float(margin), window)


def convert_auto(qat_model: keras.Model, calibration_data, neuron="qffs", arithmetic="float"):
    """`convert(..., timesteps="auto")`: choose T, convert, attach the choice to the SNN."""
    from qffs_tf.conversion.builder import convert

    choice = choose_timesteps(qat_model, calibration_data, neuron, arithmetic)
    snn = convert(qat_model, choice.timesteps, neuron, arithmetic=arithmetic)
    snn.qffs_timesteps_choice = choice
    return snn
