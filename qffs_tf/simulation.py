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
import functools
import itertools

import numpy as np

from qffs_tf._keras import keras, tf
from qffs_tf.errors import InvalidArgumentError, InvalidInputError
from qffs_tf.snn.base import fused, group_size
from qffs_tf.snn.layers import SpikingLinear
from qffs_tf.snn.network import program_of
from qffs_tf.snn.program import Program
from qffs_tf.snn.timesteps import check_timesteps, timesteps_of, with_timesteps

MODES = ("layerwise", "stepwise")
# The automatic memory budget of a layerwise run is never below this (megabytes).
AUTOMATIC_FLOOR_MB = 256


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


@tf.function(jit_compile=True, autograph=False)
def _partial_counts(values: tf.Tensor, fanouts: tuple, lead: int, signs: bool):
    """Per group of 32 neurons: spikes of each sign and events times fan-out, in int32.

    One fused pass over `values`. The reduction stops at groups of 32 because XLA's CPU
    backend turns longer reductions into a slow reduce-window; the caller finishes them.
    """
    shape = tf.shape(values)
    size = values.shape[lead:].num_elements()
    group = group_size(size)
    grouped = tf.reshape(values, tf.concat([shape[:lead], [size // group, group]], 0))
    out = []
    if signs:
        out.append(tf.reduce_sum(tf.cast(grouped > 0, tf.int32), -1))
        out.append(tf.reduce_sum(tf.cast(grouped < 0, tf.int32), -1))
    nonzero = tf.not_equal(grouped, 0)
    for fan in fanouts:
        fan = tf.reshape(tf.cast(fan, tf.int32), [size // group, group])
        out.append(tf.reduce_sum(tf.where(nonzero, fan, tf.zeros_like(fan)), -1))
    return out


def _integer_statistics(
    values: tf.Tensor, fanouts: list, lead: int, signs: bool
) -> list[tf.Tensor]:
    """Exact integer statistics of a (B, T, ...) or (B, ...) tensor, per sample (and step):
    [positive, negative] if `signs`, then events times each fan-out (synaptic operations)."""
    partial = fused(_partial_counts, values.shape[lead:].num_elements())
    return [tf.reduce_sum(part, -1) for part in partial(values, tuple(fanouts), lead, signs)]


@tf.function(jit_compile=True, autograph=False)
def _spikes_per_neuron(outputs: tf.Tensor, threshold: float) -> tf.Tensor:
    """Net spikes per neuron over a run: outputs (B, T, ...) are spikes times the
    threshold; the sum over the run divided by it, rounded (XLA may turn the division into a
    multiplication by 1/threshold, which is not exact, hence the rounding)."""
    return tf.round(tf.reduce_sum(outputs, axis=1) / threshold)


def memory_estimate(program: Program, batch: int) -> tuple[int, int]:
    """(bytes of every layer's state, bytes one step of a layerwise run holds), for `batch`.

    A layerwise run holds, per step, about four of its largest per-step tensors at once (a
    layer's input and output, a residual branch, the statistics' input); measured on
    ResNet-18 at T = 8 and 16 (67 MB per step at batch 64). A stepwise run holds every
    state plus about one step of tensors.
    """
    sizes = sorted(
        (
            int(np.prod(layer.output_shape[2:]))
            for layer, _ in program.graph
            if getattr(layer, "temporal", False) and len(layer.output_shape) > 2
        ),
        reverse=True,
    )
    per_step = 4 * batch * 4 * sum(sizes[:4])
    state = sum(
        4 * batch * int(np.prod(value.shape[1:]))
        for values in program.initial_state(1).values()
        for value in values
    )
    return state, max(1, per_step)


def chunk_steps(program: Program, batch: int, max_memory_mb: float | None) -> int:
    """Steps per layerwise run so that a run's tensors and the carried state stay within
    `max_memory_mb`; None: 1.5x the estimated memory of a stepwise run (so that a long
    window costs at most about that much more memory than streaming it), but never less
    than AUTOMATIC_FLOOR_MB: below that, memory is not worth the cost of a chunked graph
    (one copy of every layer per chunk to trace and optimise)."""
    steps = program.timesteps
    state, per_step = memory_estimate(program, batch)
    if max_memory_mb is None:
        budget = max(1.5 * (state + per_step), AUTOMATIC_FLOOR_MB * 2**20)
    else:
        budget = max_memory_mb * 2**20
    if steps * per_step <= budget:  # the whole window fits: no state needs carrying
        return steps
    return max(1, min(steps, int((budget - state) // per_step)))


class _Simulator:
    """The compiled functions that simulate one SNN at one number of steps, with statistics.

    The work is `qffs_tf.snn.Program`'s (each layer's own `window` and `step`); this class
    only adds what a simulation records: spikes of each sign per neuron layer, synaptic
    operations and the logits. The statistics are reduced on the device, in compiled
    clusters that read each spike tensor once, and reach the host once per simulation.
    """

    def __init__(self, snn: keras.Model, jit_compile: bool, chunk: int):
        self.program = program_of(snn)
        self.steps = self.program.timesteps
        self.chunk = chunk
        self.neuron_layers = self.program.neuron_layers
        self.synapses = self.program.synapses
        self.fanouts = {layer.name: tf.constant(fanout(layer)) for layer in self.synapses}
        self.inbound = {layer.name: inbound for layer, inbound in self.program.graph}
        self.input_macs = input_macs(snn)
        self.layerwise = tf.function(self._layerwise, jit_compile=jit_compile, autograph=False)
        self.stepwise = tf.function(self._stepwise, jit_compile=jit_compile, autograph=False)
        self.first_step = tf.function(
            lambda x, s: self._step(x, s, True), jit_compile=jit_compile, autograph=False
        )
        # The batch shrinks as samples become quiet (early exit): one trace for all sizes.
        self.next_step = tf.function(
            lambda x, s: self._step(x, s, False),
            jit_compile=jit_compile,
            reduce_retracing=True,
            autograph=False,
        )

    def _statistics(self, values: dict, lead: int) -> dict[str, tf.Tensor]:
        """Logits, spikes of each sign and synaptic operations of a run (lead=2: (B, T)) or
        of one step (lead=1: (B,)). Each tensor is read once for all its statistics."""
        out = {"logits": values[self.program.integrate.name]}
        readers: dict[str, list] = {layer.name: [] for layer in self.neuron_layers}
        for layer in self.synapses:
            readers.setdefault(self.inbound[layer.name][0], []).append(layer.name)
        neuron_names = set(readers) & {layer.name for layer in self.neuron_layers}
        for name, synapses in readers.items():
            tensor, signs = values[name], name in neuron_names
            if tensor is None:  # nothing arrived (or quiet neurons): no spike, no operation
                zeros = tf.zeros(tf.shape(out["logits"])[:lead], tf.int32)
                if signs:
                    out[f"pos/{name}"], out[f"neg/{name}"] = zeros, zeros
                for synapse in synapses:
                    out[f"sops/{synapse}"] = tf.cast(zeros, tf.float32)
                continue
            counts = _integer_statistics(tensor, [self.fanouts[s] for s in synapses], lead, signs)
            if signs:
                out[f"pos/{name}"], out[f"neg/{name}"] = counts[:2]
                counts = counts[2:]
            for synapse, value in zip(synapses, counts, strict=True):
                out[f"sops/{synapse}"] = tf.cast(value, tf.float32)
        return out

    def _counts(self, state: dict) -> dict[str, tf.Tensor]:
        return {
            f"count/{layer.name}": layer.count(state[layer.name]) for layer in self.neuron_layers
        }

    def _collect(self, values: dict, before: dict, last: bool) -> dict[str, tf.Tensor]:
        """Statistics of one run of steps; after the last run, the final counts too: the
        counts the run started from plus the spikes it made (so that no final state is
        computed)."""
        out = self._statistics(values, 2)
        if last:
            for layer in self.neuron_layers:
                outputs = values[layer.name]
                per_neuron = fused(_spikes_per_neuron, outputs.shape[2:].num_elements())
                spikes = per_neuron(outputs, layer.threshold)
                out[f"count/{layer.name}"] = layer.count(before[layer.name]) + spikes
        return out

    def _layerwise(self, x):
        runs, _ = self.program.chunked_window(x, self.chunk, self._collect)
        stacked = [key for key in runs[0] if not key.startswith("count/")]
        out = {key: tf.concat([run[key] for run in runs], axis=1) for key in stacked}
        counts = {key: value for key, value in runs[-1].items() if key.startswith("count/")}
        return {**out, **counts}

    def initial_states(self, batch_size: int) -> dict[str, list[tf.Tensor]]:
        return self.program.initial_state(batch_size)

    def _step(self, x, states, first: bool, known_quiet: frozenset = frozenset()):
        values, new_states = self.program.step(x, states, first, quiet=known_quiet)
        out = self._statistics(values, 1)
        quiet = tf.ones([tf.shape(x)[0]], tf.bool)
        for layer in self.neuron_layers:
            silent = (out[f"pos/{layer.name}"] + out[f"neg/{layer.name}"]) == 0
            quiet = tf.logical_and(quiet, silent)
        return {**out, "quiet": quiet}, new_states

    def _stepwise(self, x):
        """All steps in one compiled function: step 0, then a loop over the others; the
        per-step statistics are stacked on the device."""
        state = self.program.initial_state(tf.shape(x)[0])
        first, state = self._step(x, state, True)
        first.pop("quiet")
        arrays = {
            key: tf.TensorArray(value.dtype, size=self.steps - 1) for key, value in first.items()
        }

        def loop(start: int, stop: int, known_quiet: frozenset, state, arrays):
            def body(t, state, arrays):
                out, state = self._step(x, state, False, known_quiet)
                return (
                    t + 1,
                    state,
                    {key: array.write(t - 1, out[key]) for key, array in arrays.items()},
                )

            _, state, arrays = tf.while_loop(
                lambda t, *_: t < stop, body, (tf.constant(start), state, arrays)
            )
            return state, arrays

        # One loop per stretch of steps with the same neuron layers known quiet (each from its
        # bound in `Program.quiet_from` on): those are not computed.
        quiet_from = self.program.quiet_from
        edges = sorted({1, self.steps, *(q for q in quiet_from.values() if 1 < q < self.steps)})
        for start, stop in itertools.pairwise(edges):
            known_quiet = self.program.quiet_at(start)
            state, arrays = loop(start, stop, known_quiet, state, arrays)
        out = {}
        for key, value in first.items():
            value = tf.expand_dims(value, 1)
            if self.steps > 1:
                rest = arrays[key].stack()  # (T - 1, B, ...)
                rest = tf.transpose(rest, [1, 0, *range(2, rest.shape.rank)])
                value = tf.concat([value, rest], axis=1)
            out[key] = value
        return {**out, **self._counts(state)}


def _simulator(
    snn: keras.Model, timesteps: int, jit_compile: bool, chunk: int | None = None
) -> _Simulator:
    """The cached simulator of `snn` at `timesteps` steps (one model per length, shared)."""
    cache = snn.__dict__.setdefault("_qffs_programs", {})
    chunk = None if chunk is None or chunk >= timesteps else int(chunk)
    key = (timesteps, jit_compile, chunk)
    if key not in cache:
        models = snn.__dict__.setdefault("_qffs_timed_models", {})
        if timesteps not in models:
            models[timesteps] = with_timesteps(snn, timesteps)
        cache[key] = _Simulator(models[timesteps], jit_compile, chunk or timesteps)
    return cache[key]


def _rows(indices: np.ndarray, value: tf.Tensor) -> tf.Tensor:
    return tf.gather(value, indices)


def _run_early_exit(program: _Simulator, x: tf.Tensor, steps: int):
    """Step through the window; a sample leaves the batch once it is quiet.

    A sample is quiet after a step in which none of its neurons spiked: with the "once"
    input coding nothing arrives after step 0 but spikes, so its state, and its logits,
    cannot change any more. The statistics stay on the device until the end; per step only
    the quiet flags of the computed samples reach the host (they decide the next batch).
    Returns per-step statistics for the whole batch, final counts, steps run, and how many
    samples were computed at each step.
    """
    batch = int(x.shape[0])
    states = program.initial_states(batch)
    active = np.arange(batch)
    records = []  # per step: (indices of the computed samples, statistics on the device)
    finished = []  # (sample indices, counts on the device) of samples that left the batch
    for t in range(steps):
        fn = program.first_step if t == 0 else program.next_step
        out, states = fn(x, states)
        quiet = out.pop("quiet").numpy()
        records.append((active, out))
        last = t + 1 == steps
        if quiet.all() or last:
            finished.append((active, program._counts(states)))
            break
        if quiet.any():
            leaving, keep = np.flatnonzero(quiet), np.flatnonzero(~quiet)
            finished.append(
                (
                    active[leaving],
                    {k: tf.gather(v, leaving) for k, v in program._counts(states).items()},
                )
            )
            active = active[keep]
            x = tf.gather(x, keep)
            states = tf.nest.map_structure(functools.partial(_rows, keep), states)
    steps_run = len(records)
    out: dict[str, np.ndarray] = {}
    for key in records[0][1]:
        value = records[0][1][key].numpy()
        full = np.zeros((batch, steps, *value.shape[1:]), value.dtype)
        for t, (indices, stats) in enumerate(records):
            if key == "logits" and t > 0:  # samples that left keep their logits
                full[:, t] = full[:, t - 1]
            full[indices, t] = stats[key].numpy()
        if key == "logits":
            for t in range(steps_run, steps):
                full[:, t] = full[:, steps_run - 1]
        out[key] = full
    counts = {}
    for layer in program.neuron_layers:
        total = np.zeros((batch, *layer.neuron_shape), np.float32)
        for indices, values in finished:
            total[indices] = values[f"count/{layer.name}"].numpy()
        counts[layer.name] = total
    active_per_step = [len(indices) for indices, _ in records] + [0] * (steps - steps_run)
    return out, counts, steps_run, active_per_step


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


def _simulate_batch(
    snn: keras.Model,
    x: tf.Tensor,
    steps: int,
    mode: str,
    early_exit: bool,
    jit_compile: bool,
    max_memory_mb: float | None,
):
    batch = int(x.shape[0])
    chunk = None
    if mode == "layerwise":
        chunk = chunk_steps(_simulator(snn, steps, jit_compile).program, batch, max_memory_mb)
    program = _simulator(snn, steps, jit_compile, chunk)
    if early_exit:
        out, counts, steps_run, active_per_step = _run_early_exit(program, x, steps)
    else:
        run = program.layerwise if mode == "layerwise" else program.stepwise
        out = {key: value.numpy() for key, value in run(x).items()}
        steps_run = steps
        counts = {layer.name: out[f"count/{layer.name}"] for layer in program.neuron_layers}
        active_per_step = [batch] * steps
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
    max_memory_mb: float | None = None,
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
    max_memory_mb : float, optional
        Layerwise only: a bound on the memory of a batch's window tensors, in megabytes. A
        window that would exceed it runs in time chunks, each layer's state carried from
        chunk to chunk (the same numbers). Default (None): 1.5x the estimated memory of a
        stepwise run, at least 256 MB; `math.inf` never chunks.

    Returns
    -------
    SimulationResult

    Raises
    ------
    InvalidInputError
        Images of the wrong shape, NaN or Inf values, or no image at all.
    InvalidArgumentError
        A bad mode, timesteps value or max_memory_mb, or early_exit with layerwise or rate
        coding.
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
    if max_memory_mb is not None and not (
        isinstance(max_memory_mb, int | float)
        and not isinstance(max_memory_mb, bool)
        and max_memory_mb > 0
    ):
        raise InvalidArgumentError(
            f"max_memory_mb must be a number > 0 (megabytes) or None, got {max_memory_mb!r}."
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
        images = _check_batch(program, images)
        parts.append(
            _simulate_batch(snn, images, steps, mode, early_exit, jit_compile, max_memory_mb)
        )
        seen += len(images)
        if progbar is not None:
            progbar.update(seen)
    if not parts:
        raise InvalidInputError("No image to simulate: pass at least one image.")
    return SimulationResult.concatenate(parts)
