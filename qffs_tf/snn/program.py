"""The SNN as one program: its layer graph, its state, the whole window and one step.

`simulate` (layerwise and stepwise) and both TFLite programs (the unrolled full window and the
streaming step) are built from `Program`; each layer's own `call` / `step` does the work, so
the semantics live in the layers and neuron models and nowhere else.
"""

from __future__ import annotations

from collections.abc import Collection

from qffs_tf._keras import keras, tf
from qffs_tf.errors import ConversionError
from qffs_tf.snn.base import SpikingLayer
from qffs_tf.snn.layers import Integrate, Readout, SpikingLinear, ToTemporal
from qffs_tf.snn.neuron_layer import SpikingNeurons
from qffs_tf.snn.timesteps import timesteps_of


def layer_graph(snn: keras.Model) -> list[tuple[keras.layers.Layer, list[str]]]:
    """(layer, names of its inputs) in topological order.

    Parameters
    ----------
    snn : tf_keras.Model
        A functional model (an SNN from `qffs_tf.convert`, or any single-call graph).

    Returns
    -------
    list of (layer, list of str)

    Example
    -------
    >>> [layer.name for layer, _ in layer_graph(snn)][:2]
    ['image', 'conv1']
    """
    order = []
    for entry in snn.get_config()["layers"]:
        inbound = entry.get("inbound_nodes") or [[]]
        order.append((snn.get_layer(entry["name"]), [item[0] for item in inbound[0]]))
    return order


def _is_temporal(layer) -> bool:
    return bool(getattr(layer, "temporal", False))


def integrate_and_readout(layers) -> tuple[list, list]:
    """The `Integrate` and the `Readout` layers among `layers`: a qffs_tf SNN has one of
    each, so an empty list means the model is not one."""
    return (
        [layer for layer in layers if isinstance(layer, Integrate)],
        [layer for layer in layers if isinstance(layer, Readout)],
    )


class Program:
    """A converted SNN as a program over its layer graph.

    Parameters
    ----------
    snn : tf_keras.Model
        A model made by `qffs_tf.convert`.

    Attributes
    ----------
    quiet_from : dict of str to int
        Neuron layer name -> the step from which it is known quiet (no spike, state kept),
        followed through the graph from the static input (see `SpikingLayer.zero_from`).

    Raises
    ------
    ConversionError
        If `snn` is not a qffs_tf SNN (no Integrate or Readout layer).

    Example
    -------
    >>> program = Program(snn)
    >>> state = program.initial_state(batch_size=4)
    >>> values, state = program.step(images, state, first=True)
    >>> values[program.integrate.name]  # logits after step 1
    """

    def __init__(self, snn: keras.Model):
        self.snn = snn
        self.graph = layer_graph(snn)
        self.inbound = {layer.name: inbound for layer, inbound in self.graph}
        layers = [layer for layer, _ in self.graph]
        self.neuron_layers = [layer for layer in layers if isinstance(layer, SpikingNeurons)]
        self.synapses = [
            layer for layer in layers if isinstance(layer, SpikingLinear) and layer.temporal
        ]
        self.static_linears = [
            layer for layer in layers if isinstance(layer, SpikingLinear) and not layer.temporal
        ]
        integrate, readout = integrate_and_readout(layers)
        if not integrate or not readout:
            raise ConversionError(
                "This model is not a qffs_tf SNN (no Integrate / Readout layer); pass a model "
                "made by qffs_tf.convert."
            )
        self.integrate = integrate[0]
        self.readout = readout[0]
        self.constant_input = any(
            isinstance(layer, ToTemporal) and layer.constant_input for layer in layers
        )
        self.direct_static = self._direct_static_inputs()
        self.quiet_from = self._quiet_bounds()
        self._released_before = self._releases()

    def reads_static(self, name: str) -> bool:
        """Whether layer `name` takes the static value itself in `window`: a neuron layer
        whose only input is a ToTemporal in `direct_static` (nothing laid over the window).

        Parameters
        ----------
        name : str
            A layer of the SNN.

        Returns
        -------
        bool

        Example
        -------
        >>> [layer.name for layer, _ in program.graph if program.reads_static(layer.name)]
        ['quant_conv1']
        """
        inbound = self.inbound[name]
        return len(inbound) == 1 and inbound[0] in self.direct_static

    def _window_reads(self, name: str) -> list[str]:
        """The values `window` reads to compute layer `name`."""
        if self.reads_static(name):
            return list(self.inbound[self.inbound[name][0]])
        return list(self.inbound[name])

    def _releases(self) -> dict[int, list[str]]:
        """Graph index -> the values no layer from that index on reads in `window` (each
        listed once, just after its last reader)."""
        last = {}
        for index, (layer, _) in enumerate(self.graph):
            for name in self._window_reads(layer.name):
                last[name] = index
        released: dict[int, list[str]] = {}
        for name, index in last.items():
            released.setdefault(index + 1, []).append(name)
        return released

    def _quiet_bounds(self) -> dict[str, int]:
        """Neuron layers with a known step from which they are quiet (no spike, state kept):
        each temporal layer's `zero_from`, followed through the graph from the static input
        (delivered at step 0 only by the "once" coding). The first neuron layers are quiet
        from L + 1, a layer behind them from 2L + 1 (its input ends at step L), and so on."""
        zero_from: dict[str, int | None] = {}
        for layer, inbound in self.graph:
            if isinstance(layer, SpikingLayer) and _is_temporal(layer):
                zero_from[layer.name] = layer.zero_from([zero_from.get(i) for i in inbound])
        return {
            layer.name: zero_from[layer.name]
            for layer in self.neuron_layers
            if zero_from.get(layer.name) is not None
        }

    def quiet_at(self, step: int) -> frozenset[str]:
        """Neuron layers known to be quiet at `step`: past their `quiet_from` bound they
        neither spike nor change state, so `step(..., quiet=...)` may skip them.

        Parameters
        ----------
        step : int
            The step index (0 is the step that receives the image).

        Returns
        -------
        frozenset of str
            Names of the neuron layers quiet at that step.

        Example
        -------
        >>> values, state = program.step(x, state, False, quiet=program.quiet_at(t))
        """
        return frozenset(name for name, bound in self.quiet_from.items() if bound <= step)

    def _direct_static_inputs(self) -> set[str]:
        """ToTemporal layers whose only readers are neuron layers of the same input coding:
        in `window` those neurons take the static value itself (nothing laid over T)."""
        readers: dict[str, list] = {}
        for layer, inbound in self.graph:
            for name in inbound:
                readers.setdefault(name, []).append(layer)
        direct = set()
        for layer, _ in self.graph:
            if not isinstance(layer, ToTemporal):
                continue
            users = readers.get(layer.name, [])
            if users and all(
                isinstance(user, SpikingNeurons)
                and (user.neuron.input_coding == "constant") == layer.constant_input
                for user in users
            ):
                direct.add(layer.name)
        return direct

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.snn.input_shape[1:])

    @property
    def timesteps(self) -> int:
        """The SNN's window length T."""
        return timesteps_of(self.snn)

    def static_names(self) -> list[str]:
        """Layers computed once from the analog input (the static part)."""
        return [layer.name for layer, _ in self.graph if not _is_temporal(layer)]

    def initial_state(self, batch_size, dtype=tf.float32) -> dict[str, list[tf.Tensor]]:
        """Every stateful layer's state before step 0 (layers without state are absent)."""
        state = {}
        for layer, _ in self.graph:
            if isinstance(layer, SpikingLayer) and layer.temporal:
                values = list(layer.initial_state(batch_size, dtype))
                if values:
                    state[layer.name] = values
        return state

    def window(
        self,
        x: tf.Tensor,
        state: dict | None = None,
        start: int = 0,
        steps: int | None = None,
        static: dict | None = None,
        keep: Collection[str] | None = None,
    ) -> tuple[dict[str, tf.Tensor], dict]:
        """Steps [start, start + steps) layer by layer, each layer's `window` from `state`.

        Parameters
        ----------
        x : tf.Tensor
            The analog input batch.
        state : dict, optional
            From `initial_state` (the default) or the previous run of steps.
        start : int
            Index of the first step of this run (0: the run that receives the static part).
        steps : int, optional
            Length of the run (default: the SNN's whole window T).
        static : dict, optional
            The static layers' values from an earlier run, so they are not computed again.
        keep : collection of str, optional
            The layers whose values to return; the others are dropped once their last
            reader has run, so that an eager call holds a few layers' windows at a time,
            not all of them. Default: every layer's value.

        Returns
        -------
        values : dict
            Layer name -> output (temporal ones (B, steps, ...)).
        state : dict
            The state after the run.
        """
        if state is None:
            state = self.initial_state(tf.shape(x)[0], x.dtype)
        values, new_state = {}, dict(state)
        for index, (layer, inbound) in enumerate(self.graph):
            if keep is not None:  # drop what no layer from here on reads
                for name in self._released_before.get(index, ()):
                    if name not in keep:
                        values.pop(name, None)
            name = layer.name
            if isinstance(layer, keras.layers.InputLayer):
                values[name] = x
                continue
            if not _is_temporal(layer) and static is not None:
                values[name] = static[name]
                continue
            if name in self.direct_static:  # its neurons read the static value directly
                values[name] = None
                if name in state:  # "constant" coding keeps the value (see ToTemporal.step)
                    new_state[name] = [values[inbound[0]]]
                continue
            inputs = [values[i] for i in self._window_reads(name)]
            steps_here = (steps or self.timesteps) if self.reads_static(name) else steps
            arg = inputs if len(inputs) > 1 else inputs[0]
            if not _is_temporal(layer):
                values[name] = layer(arg)
                continue
            # Neuron layers are left out from their quiet bound on (zeros stand for the steps).
            bound = {"quiet_from": self.quiet_from[name]} if name in self.quiet_from else {}
            with tf.name_scope(name):
                values[name], layer_state = layer.window(
                    arg, state.get(name, []), start, steps_here, **bound
                )
            if name in state:
                new_state[name] = layer_state
        if keep is not None:
            values = {name: values[name] for name in keep}
        return values, new_state

    def chunked_window(self, x: tf.Tensor, chunk_steps: int, collect):
        """The whole window as runs of at most `chunk_steps` steps, each layer's state carried
        from run to run, so that only one run's tensors are alive at a time.

        Parameters
        ----------
        x : tf.Tensor
            The analog input batch.
        chunk_steps : int
            Steps per run.
        collect : callable
            `collect(values, state, last)` -> what to keep of a run (small tensors), from the
            run's values, the state it started from and whether it is the last run; called
            once per run, in order. A state that nothing reads is never computed.

        Returns
        -------
        results : list
            `collect`'s results, one per run.
        state : dict
            The state after the last step.

        Example
        -------
        >>> runs, _ = program.chunked_window(x, 4, lambda v, s, last: v["logits_integrate"])
        >>> logits = tf.concat(runs, axis=1)  # (B, T, classes)
        """
        total = self.timesteps
        chunk_steps = max(1, min(int(chunk_steps), total))
        state, static, results = None, None, []
        for start in range(0, total, chunk_steps):
            if results:  # finish the previous run before starting this one: bounded memory
                with tf.control_dependencies(tf.nest.flatten(results[-1])):
                    state = tf.nest.map_structure(tf.identity, state)
                    static = tf.nest.map_structure(tf.identity, static)
            steps = min(chunk_steps, total - start)
            before = self.initial_state(tf.shape(x)[0], x.dtype) if state is None else state
            values, state = self.window(x, before, start, steps, static)
            static = {name: values[name] for name in self.static_names()}
            results.append(collect(values, before, start + steps == total))
        return results, state

    def static_values(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        """The static part: every layer computed once from the analog input, by name."""
        values = {}
        for layer, inbound in self.graph:
            if isinstance(layer, keras.layers.InputLayer):
                values[layer.name] = x
            elif not _is_temporal(layer):
                inputs = [values[name] for name in inbound]
                values[layer.name] = layer(inputs if len(inputs) > 1 else inputs[0])
        return values

    def step(
        self,
        x,
        state: dict,
        first,
        arithmetic: bool = False,
        static: dict | None = None,
        quiet: Collection[str] = (),
    ):
        """One time step over the graph.

        Parameters
        ----------
        x : tf.Tensor
            The analog input batch (read where the input coding needs it).
        state : dict
            From `initial_state` or the previous step.
        first : bool or tf.Tensor
            Step 0 or not: a Python bool, or a float32 scalar mask (1 at step 0) for programs
            without control flow.
        arithmetic : bool
            Neuron decisions with floor/min/max instead of comparisons (TFLite / XNNPACK),
            and no control flow.
        static : dict, optional
            The static part's values (`static_values`) computed by the caller, e.g. once per
            window; by default the static layers run here (at step 0 only when `first` is a
            bool, at every step, masked, when it is a tensor).
        quiet : collection of str
            Neuron layers the caller knows to be quiet at this step (from `quiet_from`):
            their output is None (zero) and their state is kept, without computing them.

        Returns
        -------
        values : dict
            Layer name -> output at this step (None where it is known to be zero).
        state : dict
            The new state.
        """
        values, new_state = {}, dict(state)
        dynamic = not isinstance(first, bool)
        for layer, inbound in self.graph:
            name = layer.name
            if isinstance(layer, keras.layers.InputLayer):
                values[name] = x
                continue
            inputs = [values[i] for i in inbound]
            arg = inputs if len(inputs) > 1 else inputs[0]
            if not _is_temporal(layer):  # static: runs on the analog input, at step 0 only
                if static is not None:
                    values[name] = static[name]
                    continue
                present = (dynamic or first) and all(value is not None for value in inputs)
                values[name] = layer(arg) if present else None
                continue
            if name in quiet:  # no spike, state kept: nothing to compute
                values[name] = None
                continue
            with tf.name_scope(name):
                values[name], layer_state = layer.step(arg, state.get(name, []), first, arithmetic)
            if name in state:
                new_state[name] = layer_state
        return values, new_state
