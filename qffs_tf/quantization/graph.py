"""A Keras model as a flat list of layer calls, nested models inlined, and rebuilt from it.

`flatten_graph` walks a Sequential or functional model from its outputs back to its inputs and
lists every call of a leaf layer in topological order; a Functional or Sequential model used as
a layer is inlined (its layers become calls of the outer graph). `rebuild` makes a new
functional model from that list, one new layer per old layer from a caller-supplied factory,
and copies the weights. quantize_model uses the pair to inline nested models and annotate
layers in one pass, where `keras.models.clone_model` keeps nested models nested.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable

from qffs_tf._keras import keras, tf
from qffs_tf.errors import UnsupportedModelError

__all__ = ["LayerCall", "FlatGraph", "flatten_graph", "rebuild"]

TensorKey = tuple[int, int]  # (graph instance, id of the KerasTensor in that instance)


@dataclasses.dataclass
class LayerCall:
    """One call of a leaf layer in the flattened graph."""

    layer: keras.layers.Layer
    name: str  # unique layer name in the flattened model
    scope: str  # "" for the outer model, "inner_model/" inside a nested model
    args: tuple
    kwargs: dict
    keys: dict[int, TensorKey]  # id of each KerasTensor in args/kwargs -> its graph key
    outputs: list[TensorKey]
    inherited: dict  # call arguments of the enclosing nested-model call (e.g. training=False)

    @property
    def inputs(self) -> list[TensorKey]:
        """Keys of the tensors this call reads, in argument order."""
        return list(self.keys.values())

    def describe(self) -> str:
        """'layer 'name' (Type)', with the nested model it came from when there is one."""
        where = f" in nested model '{self.scope.rstrip('/')}'" if self.scope else ""
        return f"layer '{self.layer.name}' ({type(self.layer).__name__}){where}"


@dataclasses.dataclass
class FlatGraph:
    """A model's leaf-layer calls in topological order, with its inputs and outputs."""

    name: str
    inputs: list[tuple[keras.layers.InputLayer, TensorKey]]
    outputs: list[TensorKey]
    single_output: bool
    calls: list[LayerCall]

    def output_calls(self) -> list[LayerCall]:
        """The calls that produce a model output (the head layers)."""
        wanted = set(self.outputs)
        return [call for call in self.calls if wanted.intersection(call.outputs)]


def _is_keras_tensor(value) -> bool:
    return hasattr(value, "_keras_history") and not isinstance(value, tf.Variable)


def _is_nested_network(layer) -> bool:
    return isinstance(layer, keras.Model)


def _producer(tensor):
    layer, node_index, _ = tensor._keras_history
    return layer.inbound_nodes[node_index]


def _topological_nodes(net: keras.Model) -> list:
    """Nodes of `net` (one per layer call) from its inputs to its outputs, in order."""
    input_ids = {id(t) for t in net.inputs}
    order, visited, emitted = [], set(), set()
    stack = [(_producer(t), False) for t in reversed(net.outputs) if id(t) not in input_ids]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            if id(node) not in emitted:
                emitted.add(id(node))
                order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for tensor in reversed(node.keras_inputs):
            if id(tensor) not in input_ids:
                stack.append((_producer(tensor), False))
    return order


def _check_graph_network(net: keras.Model, where: str) -> None:
    is_graph = isinstance(net, keras.Sequential) or getattr(net, "_is_graph_network", False)
    if not is_graph or not getattr(net, "inputs", None):
        raise UnsupportedModelError(
            f"{where} ('{net.name}', {type(net).__name__}) is not a built Sequential or "
            "functional model, so its layer graph cannot be read. Rebuild it with the tf_keras "
            "functional API starting from keras.Input(...)."
        )


def flatten_graph(model: keras.Model) -> FlatGraph:
    """List the leaf-layer calls of `model` in topological order, inlining nested models.

    Parameters
    ----------
    model : keras.Model
        A built tf_keras Sequential or functional model (nested models allowed).

    Returns
    -------
    FlatGraph
        The calls, the model's input layers and its output tensor keys.

    Raises
    ------
    UnsupportedModelError
        If the model or a nested model is not a graph network (subclassed, or never built
        on a ``keras.Input``), or a nested model is called with something other than its
        inputs as the first argument.

    Example
    -------
    >>> inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> x = keras.Input((3,))
    >>> [c.name for c in flatten_graph(keras.Model(x, inner(x))).calls]
    ['dense']
    """
    _check_graph_network(model, "The model")
    instances = itertools.count()
    alias: dict[TensorKey, TensorKey] = {}
    calls: list[LayerCall] = []

    def key(instance: int, tensor) -> TensorKey:
        own = (instance, id(tensor))
        return alias.get(own, own)

    def walk(net, instance: int, scope: str, inherited: dict) -> None:
        for node in _topological_nodes(net):
            layer = node.layer
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if _is_nested_network(layer):
                _check_graph_network(layer, "A nested model")
                child = next(instances)
                given = tf.nest.flatten(node.call_args[0]) if node.call_args else []
                if len(given) != len(layer.inputs) or not all(map(_is_keras_tensor, given)):
                    raise UnsupportedModelError(
                        f"Nested model '{layer.name}' is called with {len(given)} tensors for "
                        f"its {len(layer.inputs)} inputs; pass its inputs as the first argument."
                    )
                for inner, outer in zip(layer.inputs, given, strict=True):
                    alias[(child, id(inner))] = key(instance, outer)
                extra = {k: v for k, v in node.call_kwargs.items() if k == "training"}
                walk(layer, child, f"{scope}{layer.name}/", {**inherited, **extra})
                outer_outputs = tf.nest.flatten(node.outputs)
                for outer, inner in zip(outer_outputs, layer.outputs, strict=True):
                    alias[(instance, id(outer))] = key(child, inner)
                continue
            flat = tf.nest.flatten((node.call_args, node.call_kwargs))
            keys = {id(t): key(instance, t) for t in flat if _is_keras_tensor(t)}
            calls.append(
                LayerCall(
                    layer=layer,
                    name=layer.name,
                    scope=scope,
                    args=tuple(node.call_args),
                    kwargs=dict(node.call_kwargs),
                    keys=keys,
                    outputs=[key(instance, t) for t in tf.nest.flatten(node.outputs)],
                    inherited=dict(inherited),
                )
            )

    top = next(instances)
    walk(model, top, "", {})
    input_layers = [t._keras_history.layer for t in model.inputs]
    _assign_unique_names(calls, {layer.name for layer in input_layers})
    return FlatGraph(
        name=model.name,
        inputs=[(layer, key(top, t)) for layer, t in zip(input_layers, model.inputs, strict=True)],
        outputs=[key(top, t) for t in model.outputs],
        single_output=not isinstance(model.output, list | tuple | dict),
        calls=calls,
    )


def _assign_unique_names(calls: list[LayerCall], input_names: set[str]) -> None:
    """Keep every layer's name unless an inlined layer clashes: then prefix its model's name."""
    taken = input_names | {call.layer.name for call in calls if not call.scope}
    named: dict[int, str] = {}
    for call in calls:
        if not call.scope:
            continue
        if id(call.layer) in named:
            call.name = named[id(call.layer)]
            continue
        name = call.layer.name
        if name in taken:
            base = call.scope.replace("/", "_") + name
            name = next(
                candidate
                for candidate in itertools.chain(
                    [base], (f"{base}_{i}" for i in itertools.count(1))
                )
                if candidate not in taken
            )
        taken.add(name)
        named[id(call.layer)] = call.name = name


def _accepts_training(layer: keras.layers.Layer) -> bool:
    return "training" in inspect.signature(layer.call).parameters


def _new_input(layer: keras.layers.InputLayer):
    config = layer.get_config()
    return keras.Input(
        batch_shape=config["batch_input_shape"],
        dtype=config.get("dtype"),
        name=config["name"],
        sparse=config.get("sparse"),
        ragged=config.get("ragged"),
    )


def rebuild(graph: FlatGraph, make_layer: Callable[[LayerCall], keras.layers.Layer]) -> keras.Model:
    """Build a new functional model from `graph`, one new layer per old layer.

    ``make_layer(call)`` returns the new layer for ``call.layer`` (a fresh copy, possibly
    wrapped, named ``call.name``); a layer called several times gets one new layer, called
    as often. If the factory returns a layer of another type than the old one (a
    ``tf.nn.relu6`` op replaced by a ``ReLU`` layer), it is called on the first input tensor
    alone. Every new layer then gets the weights of the old one.

    Parameters
    ----------
    graph : FlatGraph
        From ``flatten_graph``.
    make_layer : callable
        ``LayerCall -> keras.layers.Layer``.

    Returns
    -------
    keras.Model
        A functional model with the same name, inputs and outputs.

    Example
    -------
    >>> x = keras.Input((3,))
    >>> model = keras.Model(x, keras.layers.Dense(2)(x))
    >>> copy = rebuild(flatten_graph(model), lambda c: keras.layers.Dense.from_config(
    ...     c.layer.get_config()))
    >>> copy.output_shape
    (None, 2)
    """
    tensors = {key: _new_input(layer) for layer, key in graph.inputs}
    made: dict[int, tuple[keras.layers.Layer, keras.layers.Layer]] = {}
    for call in graph.calls:
        if id(call.layer) not in made:
            made[id(call.layer)] = (call.layer, make_layer(call))
        new = made[id(call.layer)][1]
        inner = getattr(new, "layer", new)  # a QuantizeAnnotate wrapper's layer
        if type(inner) is not type(call.layer):
            args, kwargs = (tensors[next(iter(call.keys.values()))],), {}
        else:
            flat = tf.nest.flatten((call.args, call.kwargs))
            flat = [tensors[call.keys[id(v)]] if id(v) in call.keys else v for v in flat]
            args, kwargs = tf.nest.pack_sequence_as((call.args, call.kwargs), flat)
            if call.inherited and _accepts_training(call.layer) and "training" not in kwargs:
                kwargs = {**kwargs, **call.inherited}
        outputs = tf.nest.flatten(new(*args, **kwargs))
        for key, tensor in zip(call.outputs, outputs, strict=True):
            tensors[key] = tensor
    inputs = [tensors[key] for _, key in graph.inputs]
    outputs = [tensors[key] for key in graph.outputs]
    model = keras.Model(
        inputs if len(inputs) > 1 else inputs[0],
        outputs[0] if graph.single_output else outputs,
        name=graph.name,
    )
    for old, new in made.values():
        new.set_weights(old.get_weights())
    return model
