"""`simulate`: run a converted SNN and record what happens at every time step.

Two modes give identical spikes:
- "layerwise": each linear layer runs once on all T steps (time folded into the batch), then
  each neuron layer scans over T. Fast; what accuracy-per-step evaluation uses.
- "stepwise": one step at a time, every layer's state carried from step to step, as a device
  or a streaming application would run it. Memory does not grow with T, and with
  `early_exit=True` a sample leaves the batch after a step in which none of its neurons
  spiked (it is quiet: its logits can no longer change), and the loop stops when no sample
  is left; the logits stay exact.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qffs_tf._keras import keras, tf
from qffs_tf.errors import InvalidArgumentError, InvalidInputError
from qffs_tf.snn.layers import SpikingLinear
from qffs_tf.snn.program import Program
from qffs_tf.snn.timesteps import check_timesteps, timesteps_of, with_timesteps

MODES = ("layerwise", "stepwise")


@dataclasses.dataclass
class SimulationResult:
    """Logits and spike statistics of a simulation (numpy arrays, one row per sample).

    Attributes
    ----------
    logits : np.ndarray
        (samples, T, classes): the logits after steps 1..T (before any head activation).
    positive_spikes, negative_spikes : dict of str to np.ndarray
        Neuron layer -> (samples, T) number of +1 / -1 spike events per step.
    synaptic_ops : dict of str to np.ndarray
        Layer fed by spikes -> (samples, T) accumulations caused by the events it received.
    counts : dict of str to np.ndarray
        Neuron layer -> (samples, *neurons) final net spike counts.
    neurons : dict of str to int
        Neuron layer -> neurons per sample.
    quiet_step : np.ndarray
        (samples,) the step after which no layer spiked any more; -1 if still spiking at T
        (always -1 for the constant input coding, where a silent step proves nothing).
    input_macs : int
        Multiply-accumulates per sample on the analog input.
    timesteps : int
    steps_run : int
        Steps computed (fewer than `timesteps` when early exit emptied the batch).
    active_per_step : list of int
        Samples still computed at each step (early exit drops quiet ones).

    Example
    -------
    >>> result = qffs_tf.simulate(snn, x_test[:64])
    >>> result.final_logits.argmax(-1)  # the SNN's answers after T steps
    >>> result.spikes_per_step().mean(0)  # spikes per image at each step
    """

    logits: np.ndarray
    positive_spikes: dict[str, np.ndarray]
    negative_spikes: dict[str, np.ndarray]
    synaptic_ops: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    neurons: dict[str, int]
    quiet_step: np.ndarray
    input_macs: int
    timesteps: int
    steps_run: int
    active_per_step: list[int]

    @property
    def final_logits(self) -> np.ndarray:
        """(samples, classes): the logits after the last step."""
        return self.logits[:, -1]

    @property
    def samples(self) -> int:
        return int(self.logits.shape[0])

    def spikes_per_step(self) -> np.ndarray:
        """(samples, T) all spike events (both signs) over all neuron layers."""
        total = np.zeros(self.logits.shape[:2], np.int64)
        for name in self.positive_spikes:
            total += self.positive_spikes[name] + self.negative_spikes[name]
        return total

    def __repr__(self) -> str:
        quiet = self.quiet_step[self.quiet_step > 0]
        mean_quiet = f"{quiet.mean():.2f}" if quiet.size else "-"
        return (
            f"SimulationResult(samples={self.samples}, timesteps={self.timesteps}, "
            f"neuron_layers={len(self.neurons)}, "
            f"spikes_per_sample={self.spikes_per_step().sum() / max(self.samples, 1):.1f}, "
            f"quiet={quiet.size}/{self.samples} (mean step {mean_quiet}))"
        )

    @staticmethod
    def concatenate(parts: list[SimulationResult]) -> SimulationResult:
        """One result from the results of consecutive batches."""
        first = parts[0]
        if len(parts) == 1:
            return first

        def join(field):
            return {
                name: np.concatenate([getattr(part, field)[name] for part in parts])
                for name in getattr(first, field)
            }

        return SimulationResult(
            logits=np.concatenate([part.logits for part in parts]),
            positive_spikes=join("positive_spikes"),
            negative_spikes=join("negative_spikes"),
            synaptic_ops=join("synaptic_ops"),
            counts=join("counts"),
            neurons=dict(first.neurons),
            quiet_step=np.concatenate([part.quiet_step for part in parts]),
            input_macs=first.input_macs,
            timesteps=first.timesteps,
            steps_run=max(part.steps_run for part in parts),
            active_per_step=[
                int(sum(values)) for values in zip(*[p.active_per_step for p in parts], strict=True)
            ],
        )


def _neuron_axes(tensor: tf.Tensor, first: int) -> list[int]:
    return list(range(first, tensor.shape.rank))


def _window_cover(size: int, kernel: int, stride: int, dilation: int, padding: str) -> np.ndarray:
    """For each input index along one axis: how many (output index, kernel tap) pairs read it."""
    span = (kernel - 1) * dilation + 1
    if padding == "SAME":
        outputs = -(-size // stride)
        before = max((outputs - 1) * stride + span - size, 0) // 2
    else:
        outputs = (size - span) // stride + 1
        before = 0
    cover = np.zeros(size, np.int64)
    for out in range(outputs):
        for tap in range(kernel):
            index = out * stride - before + tap * dilation
            if 0 <= index < size:
                cover[index] += 1
    return cover


def _transpose_cover(size: int, kernel: int, stride: int, outputs: int) -> np.ndarray:
    """For each input index of a transposed convolution: how many outputs it writes to."""
    before = max((size - 1) * stride + kernel - outputs, 0) // 2
    taps = np.arange(kernel)
    return np.array(
        [
            int(((0 <= i * stride + taps - before) & (i * stride + taps - before < outputs)).sum())
            for i in range(size)
        ],
        np.int64,
    )


def fanout(layer: SpikingLinear) -> np.ndarray:
    """Per input position, how many accumulations one input event causes.

    Counted from the layer's geometry (padding, stride, dilation): exact, and without a
    gradient through the convolution, which TF 2.21's oneDNN kernels mishandle for batch 1.
    """
    shape = layer.input_shape
    per_step = tuple(int(d) for d in (shape[2:] if layer.temporal else shape[1:]))
    kernel = layer.kernel_shape
    if layer.kind == "dense":
        return np.full(per_step, kernel[-1], np.float32)
    height, width, _ = per_step
    if layer.kind == "conv2d_transpose":
        rows = _transpose_cover(height, kernel[0], layer.strides[0], layer.output_size[0])
        cols = _transpose_cover(width, kernel[1], layer.strides[1], layer.output_size[1])
        per_channel = np.outer(rows, cols) * kernel[2]
        return np.repeat(per_channel[:, :, None], per_step[2], axis=2).astype(np.float32)
    rows = _window_cover(height, kernel[0], layer.strides[0], layer.dilation_rate[0], layer.padding)
    cols = _window_cover(width, kernel[1], layer.strides[1], layer.dilation_rate[1], layer.padding)
    outputs_per_tap = kernel[3]  # Conv2D: output channels; depthwise: channel multiplier
    per_channel = np.outer(rows, cols) * outputs_per_tap
    return np.repeat(per_channel[:, :, None], per_step[2], axis=2).astype(np.float32)


def input_macs(snn: keras.Model) -> int:
    """Multiply-accumulates per sample of the layers that act on the analog input."""
    return int(
        sum(
            float(fanout(layer).sum())
            for layer in snn.layers
            if isinstance(layer, SpikingLinear) and not layer.temporal
        )
    )


def ann_macs(snn: keras.Model) -> int:
    """Multiply-accumulates per sample of the equivalent ANN (every synapse once)."""
    return int(
        sum(float(fanout(layer).sum()) for layer in snn.layers if isinstance(layer, SpikingLinear))
    )


class _Simulator:
    """The compiled functions that simulate one SNN at one number of steps, with statistics.

    The work is `qffs_tf.snn.Program`'s (each layer's own `call` and `step`); this class only
    adds what a simulation records: spikes of each sign per neuron layer, synaptic operations
    and the logits.
    """

    def __init__(self, snn: keras.Model, jit_compile: bool):
        self.program = Program(snn)
        self.neuron_layers = self.program.neuron_layers
        self.synapses = self.program.synapses
        self.fanouts = {layer.name: tf.constant(fanout(layer)) for layer in self.synapses}
        self.input_macs = input_macs(snn)
        self.layerwise = tf.function(self._layerwise, jit_compile=jit_compile)
        self.first_step = tf.function(lambda x, s: self._step(x, s, True), jit_compile=jit_compile)
        # The batch shrinks as samples become quiet (early exit): one trace for all sizes.
        self.next_step = tf.function(
            lambda x, s: self._step(x, s, False), jit_compile=jit_compile, reduce_retracing=True
        )

    def _stats(self, name: str, spikes: tf.Tensor, axis: int) -> dict[str, tf.Tensor]:
        axes = _neuron_axes(spikes, axis)
        return {
            f"pos/{name}": tf.reduce_sum(tf.cast(spikes > 0, tf.int32), axes),
            f"neg/{name}": tf.reduce_sum(tf.cast(spikes < 0, tf.int32), axes),
        }

    def _sops(self, name: str, inputs: tf.Tensor, axis: int) -> tf.Tensor:
        events = tf.cast(tf.not_equal(inputs, 0), tf.float32) * self.fanouts[name]
        return tf.reduce_sum(events, _neuron_axes(events, axis))

    def _inputs_of(self, values: dict, name: str) -> tf.Tensor | None:
        inbound = next(inbound for layer, inbound in self.program.graph if layer.name == name)
        return values[inbound[0]]

    def _layerwise(self, x):
        values = self.program.window(x)
        out = {"logits": values[self.program.integrate.name]}
        for layer in self.neuron_layers:
            spikes = values[layer.name]
            out.update(self._stats(layer.name, spikes, 2))
            out[f"count/{layer.name}"] = tf.round(tf.reduce_sum(spikes, axis=1) / layer.threshold)
        for layer in self.synapses:
            out[f"sops/{layer.name}"] = self._sops(
                layer.name, self._inputs_of(values, layer.name), 2
            )
        return out

    def initial_states(self, batch_size: int) -> dict[str, list[tf.Tensor]]:
        return self.program.initial_state(batch_size)

    def _step(self, x, states, first: bool):
        values, new_states = self.program.step(x, states, first)
        batch = tf.shape(x)[0]
        out = {"logits": values[self.program.integrate.name]}
        for layer in self.neuron_layers:
            out.update(self._stats(layer.name, values[layer.name], 1))
        for layer in self.synapses:
            inputs = self._inputs_of(values, layer.name)
            if inputs is None:  # nothing arrived: no operation
                out[f"sops/{layer.name}"] = tf.zeros([batch], tf.float32)
            else:
                out[f"sops/{layer.name}"] = self._sops(layer.name, inputs, 1)
        return out, new_states


def _simulator(snn: keras.Model, timesteps: int, jit_compile: bool) -> _Simulator:
    cache = snn.__dict__.setdefault("_qffs_programs", {})
    key = (timesteps, jit_compile)
    if key not in cache:
        model = with_timesteps(snn, timesteps)
        cache[key] = _Simulator(model, jit_compile)
    return cache[key]


def _run_stepwise(program: _Simulator, x: tf.Tensor, steps: int, early_exit: bool):
    """Step through the window; with early exit, a sample leaves the batch once it is quiet.

    A sample is quiet after a step in which none of its neurons spiked: with the "once"
    input coding nothing arrives after step 0 but spikes, so its state, and its logits,
    cannot change any more.
    Returns per-step statistics for the whole batch, final counts, steps run, and how many
    samples were computed at each step.
    """
    batch = int(x.shape[0])
    states = program.initial_states(batch)
    active = np.arange(batch)
    records: dict[str, list[np.ndarray]] = {}
    last: dict[str, np.ndarray] = {}  # per key, the latest full-batch values
    counts = {
        layer.name: np.zeros((batch, *layer.neuron_shape), np.float32)
        for layer in program.neuron_layers
    }
    active_per_step = []
    for t in range(steps):
        if active.size == 0:
            break
        fn = program.first_step if t == 0 else program.next_step
        step_out, states = fn(x, states)
        active_per_step.append(int(active.size))
        silent = np.ones(active.size, bool)
        for key, value in step_out.items():
            value = value.numpy()
            if key == "logits":
                full = last.get(key, np.zeros((batch, *value.shape[1:]), value.dtype)).copy()
            else:
                full = np.zeros((batch, *value.shape[1:]), value.dtype)
                if key.startswith(("pos/", "neg/")):
                    silent &= value == 0
            full[active] = value
            last[key] = full
            records.setdefault(key, []).append(full)
        for layer in program.neuron_layers:
            counts[layer.name][active] = layer.count(states[layer.name]).numpy()
        if early_exit and silent.any() and t + 1 < steps:
            keep = np.flatnonzero(~silent)
            active = active[keep]
            x = tf.gather(x, keep)
            states = {
                name: [tf.gather(value, keep) for value in values]
                for name, values in states.items()
            }
    steps_run = len(active_per_step)
    out = {key: np.stack(values, axis=1) for key, values in records.items()}
    if steps_run < steps:  # everything quiet: nothing changes any more
        for key, value in out.items():
            pad = value[:, -1:] if key == "logits" else np.zeros_like(value[:, -1:])
            out[key] = np.concatenate([value] + [pad] * (steps - steps_run), axis=1)
    active_per_step += [0] * (steps - steps_run)
    return (
        out,
        {name: np.round(value) for name, value in counts.items()},
        steps_run,
        active_per_step,
    )


def _quiet_steps(spikes_per_step: np.ndarray, timesteps: int) -> np.ndarray:
    """Steps after which no spike follows; -1 where the last step still had spikes."""
    active = spikes_per_step > 0
    any_active = active.any(axis=1)
    last = np.where(any_active, timesteps - 1 - np.argmax(active[:, ::-1], axis=1), -1)
    quiet = np.maximum(last + 1, 1)
    return np.where(last + 1 < timesteps, quiet, -1).astype(np.int64)


def _check_batch(program: _Simulator, x: np.ndarray) -> tf.Tensor:
    expected = program.program.input_shape
    if tuple(x.shape[1:]) != expected:
        raise InvalidInputError(
            f"Input shape {tuple(x.shape)} does not match the SNN's input (batch, "
            f"{', '.join(map(str, expected))}); pass a batch of images shaped like the "
            "QAT model's input."
        )
    if not np.isfinite(x).all():
        raise InvalidInputError("The input contains NaN or Inf values; pass finite images.")
    return tf.convert_to_tensor(x, tf.float32)


def _simulate_batch(program: _Simulator, x: tf.Tensor, steps: int, mode: str, early_exit: bool):
    batch = int(x.shape[0])
    if mode == "layerwise":
        out = {key: value.numpy() for key, value in program.layerwise(x).items()}
        steps_run = steps
        counts = {layer.name: out[f"count/{layer.name}"] for layer in program.neuron_layers}
        active_per_step = [batch] * steps
    else:
        out, counts, steps_run, active_per_step = _run_stepwise(program, x, steps, early_exit)
    layers = program.neuron_layers
    result = SimulationResult(
        logits=out["logits"],
        positive_spikes={layer.name: out[f"pos/{layer.name}"] for layer in layers},
        negative_spikes={layer.name: out[f"neg/{layer.name}"] for layer in layers},
        synaptic_ops={layer.name: out[f"sops/{layer.name}"] for layer in program.synapses},
        counts=counts,
        neurons={layer.name: int(np.prod(layer.neuron_shape)) for layer in layers},
        quiet_step=np.zeros(batch, np.int64),
        input_macs=program.input_macs,
        timesteps=steps,
        steps_run=steps_run,
        active_per_step=active_per_step,
    )
    if program.program.constant_input:  # a constant current can always make another spike
        result.quiet_step = np.full(batch, -1, np.int64)
    else:
        result.quiet_step = _quiet_steps(result.spikes_per_step(), steps)
    return result


def simulate(
    snn: keras.Model,
    x,
    timesteps: int | None = None,
    mode: str = "layerwise",
    early_exit: bool = False,
    jit_compile: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
) -> SimulationResult:
    """Simulate `snn` on images `x` and record the logits and spikes at every time step.

    Parameters
    ----------
    snn : tf_keras.Model
        A model made by `qffs_tf.convert` (or loaded from its saved file).
    x : array, tensor, tf.data.Dataset or iterable
        Images (N, ...) shaped like the model's input; or (images, labels); or a dataset or
        generator of images or (images, labels) (labels are ignored here).
    timesteps : int, optional
        Steps to simulate (default: the SNN's own window).
    mode : {"layerwise", "stepwise"}
        "layerwise" runs each layer once over the whole window (fast); "stepwise" runs one
        step at a time carrying each layer's state (memory does not grow with T). Both give
        the same spikes.
    early_exit : bool
        Stepwise only: a sample leaves the batch after a step in which none of its neurons
        spiked (nothing can change for it any more); the logits stay exact.
    jit_compile : bool
        Run the simulation under XLA.
    batch_size : int, optional
        Images per simulated batch (default 256); results are concatenated.
    progress : bool
        Show a Keras progress bar.

    Returns
    -------
    SimulationResult

    Raises
    ------
    InvalidInputError
        Images of the wrong shape, NaN or Inf values, or no image at all.
    InvalidArgumentError
        A bad mode, timesteps value, or early_exit with layerwise or rate coding.
    ConversionError
        If `snn` is not a qffs_tf SNN.

    Example
    -------
    >>> result = qffs_tf.simulate(snn, x_test[:256])
    >>> result.logits.shape
    (256, 8, 10)
    """
    from qffs_tf.evaluation.inputs import iterate_batches, num_examples

    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {MODES}, got {mode!r}.")
    if early_exit and mode != "stepwise":
        raise InvalidArgumentError(
            "early_exit needs mode='stepwise' (layerwise runs all steps at once)."
        )
    steps = timesteps_of(snn) if timesteps is None else check_timesteps(timesteps)
    program = _simulator(snn, steps, jit_compile)
    if early_exit and program.program.constant_input:
        raise InvalidArgumentError(
            "early_exit needs the 'once' input coding: with a constant input current (rate "
            "coding) a silent step does not mean the sample is done; use early_exit=False."
        )
    progbar = keras.utils.Progbar(num_examples(x), unit_name="image") if progress else None
    parts, seen = [], 0
    for images, _ in iterate_batches(x, batch_size, program.program.input_shape):
        parts.append(
            _simulate_batch(program, _check_batch(program, images), steps, mode, early_exit)
        )
        seen += len(images)
        if progbar is not None:
            progbar.update(seen)
    if not parts:
        raise InvalidInputError("No image to simulate: pass at least one image.")
    return SimulationResult.concatenate(parts)
