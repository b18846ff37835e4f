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
from qffs_tf.errors import QFFSError
from qffs_tf.snn import layers as spiking
from qffs_tf.snn.timesteps import timesteps_of, with_timesteps

MODES = ("layerwise", "stepwise")


@dataclasses.dataclass
class SimulationResult:
    """Logits and spike statistics of one simulated batch (numpy arrays)."""

    logits: np.ndarray  # (batch, T, classes): logits after steps 1..T
    positive_spikes: dict[str, np.ndarray]  # IF layer -> (batch, T) +1 spikes per step
    negative_spikes: dict[str, np.ndarray]  # IF layer -> (batch, T) -1 spikes per step
    synaptic_ops: dict[str, np.ndarray]  # layer fed by spikes -> (batch, T) accumulations
    counts: dict[str, np.ndarray]  # IF layer -> (batch, *neurons) final net spike counts
    neurons: dict[str, int]  # IF layer -> number of neurons
    quiet_step: np.ndarray  # (batch,) steps after which the logits were final; -1: not quiet
    input_macs: int  # multiply-accumulates per sample on the analog input (step 0)
    timesteps: int
    steps_run: int  # < timesteps when early exit stopped the loop
    active_per_step: list[int]  # samples still computed at each step (early exit drops quiet ones)

    @property
    def final_logits(self) -> np.ndarray:
        return self.logits[:, -1]

    def spikes_per_step(self) -> np.ndarray:
        """(batch, T) all spikes (both signs) over all IF layers."""
        total = np.zeros(self.logits.shape[:2], np.int64)
        for name in self.positive_spikes:
            total += self.positive_spikes[name] + self.negative_spikes[name]
        return total


def layer_graph(snn: keras.Model) -> list[tuple[keras.layers.Layer, list[str]]]:
    """(layer, names of its inputs) in topological order."""
    order = []
    for entry in snn.get_config()["layers"]:
        inbound = entry.get("inbound_nodes") or [[]]
        order.append((snn.get_layer(entry["name"]), [item[0] for item in inbound[0]]))
    return order


def _is_temporal(layer: keras.layers.Layer) -> bool:
    return bool(getattr(layer, "temporal", False))


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


def fanout(layer: spiking.SpikingLinear) -> np.ndarray:
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
            if isinstance(layer, spiking.SpikingLinear) and not layer.temporal
        )
    )


def ann_macs(snn: keras.Model) -> int:
    """Multiply-accumulates per sample of the equivalent ANN (every synapse once)."""
    return int(
        sum(
            float(fanout(layer).sum())
            for layer in snn.layers
            if isinstance(layer, spiking.SpikingLinear)
        )
    )


class _Program:
    """The compiled functions that simulate one SNN at one number of steps."""

    def __init__(self, snn: keras.Model, jit_compile: bool):
        self.snn = snn
        self.graph = layer_graph(snn)
        self.if_layers = [layer for layer, _ in self.graph if isinstance(layer, spiking.IFNeurons)]
        self.synapses = [
            layer
            for layer, _ in self.graph
            if isinstance(layer, spiking.SpikingLinear) and layer.temporal
        ]
        self.fanouts = {layer.name: tf.constant(fanout(layer)) for layer in self.synapses}
        self.integrate = next(
            layer for layer, _ in self.graph if isinstance(layer, spiking.Integrate)
        )
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

    def _layerwise(self, x):
        values = {}
        out = {}
        for layer, inbound in self.graph:
            if isinstance(layer, keras.layers.InputLayer):
                values[layer.name] = x
                continue
            inputs = [values[name] for name in inbound]
            arg = inputs if isinstance(layer, spiking.SpikingAdd) else inputs[0]
            values[layer.name] = layer(arg)
            if isinstance(layer, spiking.IFNeurons):
                spikes = values[layer.name]
                out.update(self._stats(layer.name, spikes, 2))
                total = tf.reduce_sum(spikes, axis=1) / layer.threshold
                out[f"count/{layer.name}"] = tf.round(total)
            if layer.name in self.fanouts:
                out[f"sops/{layer.name}"] = self._sops(layer.name, arg, 2)
        out["logits"] = values[self.integrate.name]
        return out

    def initial_states(self, batch_size: int) -> dict[str, list[tf.Tensor]]:
        return {
            layer.name: layer.initial_state(batch_size)
            for layer, _ in self.graph
            if isinstance(layer, spiking.SpikingLayer | spiking.IFNeurons)
        }

    def _step(self, x, states, first: bool):
        values, new_states, out = {}, {}, {}
        batch = tf.shape(x)[0]
        for layer, inbound in self.graph:
            name = layer.name
            if isinstance(layer, keras.layers.InputLayer):
                values[name] = x
                continue
            inputs = [values[i] for i in inbound]
            arg = inputs if isinstance(layer, spiking.SpikingAdd) else inputs[0]
            if not _is_temporal(layer):  # static: runs once, on the analog input, at step 0
                values[name] = layer(arg) if first else None
                new_states[name] = states[name]
                continue
            if isinstance(layer, spiking.ToTemporal):
                if first:
                    values[name] = arg
                else:
                    values[name] = tf.zeros(tf.concat([[batch], layer.input_shape[1:]], 0))
                new_states[name] = states[name]
                continue
            values[name], new_states[name] = layer.step(arg, states[name], 0 if first else 1)
            if isinstance(layer, spiking.IFNeurons):
                out.update(self._stats(name, values[name], 1))
            if name in self.fanouts:
                out[f"sops/{name}"] = self._sops(name, arg, 1)
        out["logits"] = values[self.integrate.name]
        return out, new_states


def _program(snn: keras.Model, timesteps: int, jit_compile: bool) -> _Program:
    cache = snn.__dict__.setdefault("_qffs_programs", {})
    key = (timesteps, jit_compile)
    if key not in cache:
        model = with_timesteps(snn, timesteps)
        cache[key] = _Program(model, jit_compile)
    return cache[key]


def _run_stepwise(program: _Program, x: tf.Tensor, steps: int, early_exit: bool):
    """Step through the window; with early exit, a sample leaves the batch once it is quiet.

    A sample is quiet after a step in which none of its neurons spiked: nothing arrives after
    step 0 but spikes, so its state, and its logits, cannot change any more.
    Returns per-step statistics for the whole batch, final counts, steps run, and how many
    samples were computed at each step.
    """
    batch = int(x.shape[0])
    states = program.initial_states(batch)
    active = np.arange(batch)
    records: dict[str, list[np.ndarray]] = {}
    last: dict[str, np.ndarray] = {}  # per key, the latest full-batch values
    counts = {
        layer.name: np.zeros((batch, *layer.cell.neuron_shape), np.float32)
        for layer in program.if_layers
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
        for layer in program.if_layers:
            counts[layer.name][active] = states[layer.name][1].numpy()
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


def _check_input(snn: keras.Model, x) -> tf.Tensor:
    x = tf.convert_to_tensor(x, tf.float32)
    expected = tuple(snn.input_shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise QFFSError(
            f"Input shape {tuple(x.shape)} does not match the SNN's input (batch, "
            f"{', '.join(map(str, expected))}); pass a batch of images shaped like the "
            "QAT model's input."
        )
    if not bool(tf.reduce_all(tf.math.is_finite(x))):
        raise QFFSError("The input contains NaN or Inf values; pass finite images.")
    return x


def simulate(
    snn: keras.Model,
    x,
    timesteps: int | None = None,
    mode: str = "layerwise",
    early_exit: bool = False,
    jit_compile: bool = False,
) -> SimulationResult:
    """Simulate `snn` on a batch `x` for `timesteps` steps (default: the SNN's own).

    Returns the logits after every step and per-step spike statistics. `early_exit`
    (stepwise only) stops computing each sample once it is quiet; the logits stay exact.
    `jit_compile` runs the simulation under XLA.
    """
    if mode not in MODES:
        raise QFFSError(f"mode must be one of {MODES}, got {mode!r}")
    if early_exit and mode != "stepwise":
        raise QFFSError("early_exit needs mode='stepwise' (layerwise runs all steps at once)")
    steps = timesteps_of(snn) if timesteps is None else int(timesteps)
    if steps < 1:
        raise QFFSError(f"timesteps must be at least 1, got {timesteps}")
    x = _check_input(snn, x)
    program = _program(snn, steps, jit_compile)
    batch = int(x.shape[0])
    if mode == "layerwise":
        out = {key: value.numpy() for key, value in program.layerwise(x).items()}
        steps_run = steps
        counts = {layer.name: out[f"count/{layer.name}"] for layer in program.if_layers}
        active_per_step = [batch] * steps
        logits = out["logits"]
    else:
        out, counts, steps_run, active_per_step = _run_stepwise(program, x, steps, early_exit)
        logits = out["logits"]
    positive = {layer.name: out[f"pos/{layer.name}"] for layer in program.if_layers}
    negative = {layer.name: out[f"neg/{layer.name}"] for layer in program.if_layers}
    result = SimulationResult(
        logits=logits,
        positive_spikes=positive,
        negative_spikes=negative,
        synaptic_ops={layer.name: out[f"sops/{layer.name}"] for layer in program.synapses},
        counts=counts,
        neurons={layer.name: int(np.prod(layer.cell.neuron_shape)) for layer in program.if_layers},
        quiet_step=np.zeros(batch, np.int64),
        input_macs=program.input_macs,
        timesteps=steps,
        steps_run=steps_run,
        active_per_step=active_per_step,
    )
    result.quiet_step = _quiet_steps(result.spikes_per_step(), steps)
    return result
