"""Exact rewrites of the node list: identities out, BatchNorm folded, max-pool moved."""

from __future__ import annotations

import numpy as np

from qffs_tf._keras import keras
from qffs_tf.conversion.graph import Node, read_graph
from qffs_tf.errors import ConversionError


def _consumers(nodes: list[Node], name: str) -> list[Node]:
    return [node for node in nodes if name in node.inputs]


def _replace_input(nodes: list[Node], old: str, new: str) -> None:
    for node in nodes:
        node.inputs = [new if name == old else name for name in node.inputs]


def _remove_identities(nodes: list[Node], output: str) -> tuple[list[Node], str]:
    kept = []
    for node in nodes:
        if node.op == "identity":
            _replace_input(nodes, node.name, node.inputs[0])
            if output == node.name:
                output = node.inputs[0]
        else:
            kept.append(node)
    return kept, output


def _fold_affine_backward(nodes: list[Node], output: str) -> tuple[list[Node], str]:
    """Conv/Dense -> BN  ==>  Conv/Dense with W*scale, (b*scale + offset)."""
    by_name = {node.name: node for node in nodes}
    removed = set()
    for node in nodes:
        if node.op != "affine":
            continue
        source = by_name[node.inputs[0]]
        if source.op != "linear" or len(_consumers(nodes, source.name)) != 1:
            continue
        scale, offset = node.attrs["scale"], node.attrs["offset"]
        kernel = source.attrs["kernel"]
        if source.attrs["kind"] == "depthwise_conv2d":
            kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
        elif source.attrs["kind"] == "conv2d_transpose":  # kernel (h, w, out, in)
            kernel = kernel * scale[None, None, :, None]
        else:
            kernel = kernel * scale
        source.attrs["kernel"] = kernel.astype(np.float32)
        source.attrs["bias"] = (source.attrs["bias"] * scale + offset).astype(np.float32)
        _replace_input(nodes, node.name, source.name)
        if output == node.name:
            output = source.name
        removed.add(node.name)
    return [node for node in nodes if node.name not in removed], output


def _fold_affine_forward(nodes: list[Node], output: str) -> tuple[list[Node], str]:
    """act -> BN -> Dense/'valid' conv  ==>  act -> Dense/conv with scaled rows, shifted bias."""
    by_name = {node.name: node for node in nodes}
    removed = set()
    for node in nodes:
        if node.op != "affine" or node.name == output:
            continue
        consumers = _consumers(nodes, node.name)
        if len(consumers) != 1 or consumers[0].op != "linear":
            continue
        target = consumers[0]
        kind = target.attrs["kind"]
        if kind == "conv2d_transpose":
            continue  # overlapping windows sum the offset a varying number of times
        if kind != "dense" and target.attrs["padding"] != "valid":
            continue  # padding zeros would not see the offset: keep the affine (exact too)
        scale, offset = node.attrs["scale"], node.attrs["offset"]
        kernel = target.attrs["kernel"]
        if kind == "dense":
            bias_shift = offset @ kernel
            kernel = kernel * scale[:, None]
        elif kind == "conv2d":
            bias_shift = np.einsum("hwio,i->o", kernel, offset)
            kernel = kernel * scale[None, None, :, None]
        else:
            bias_shift = np.einsum("hwcm,c->cm", kernel, offset).reshape(-1)
            kernel = kernel * scale[None, None, :, None]
        target.attrs["kernel"] = kernel.astype(np.float32)
        target.attrs["bias"] = (target.attrs["bias"] + bias_shift).astype(np.float32)
        _replace_input(nodes, node.name, node.inputs[0])
        removed.add(node.name)
        del by_name[node.name]
    return [node for node in nodes if node.name not in removed], output


def _move_maxpool_behind_activation(nodes: list[Node], output: str) -> list[Node]:
    """x -> MaxPool -> act  ==>  x -> act -> MaxPool (exact: the quantizer is monotone)."""
    order = {node.name: index for index, node in enumerate(nodes)}
    for pool in [node for node in nodes if node.op == "maxpool"]:
        consumers = _consumers(nodes, pool.name)
        if len(consumers) != 1 or consumers[0].op != "act" or pool.name == output:
            continue
        act = consumers[0]
        act_consumers = _consumers(nodes, act.name)
        act.inputs = list(pool.inputs)
        pool.inputs = [act.name]
        for consumer in act_consumers:
            consumer.inputs = [pool.name if name == act.name else name for name in consumer.inputs]
        act.attrs["pooled_by"] = pool.name
        order[act.name], order[pool.name] = order[pool.name], order[act.name]
    return sorted(nodes, key=lambda node: order[node.name])


def simplify(nodes: list[Node], output: str) -> tuple[list[Node], str]:
    """All exact rewrites, in order."""
    nodes, output = _remove_identities(nodes, output)
    nodes, output = _fold_affine_backward(nodes, output)
    nodes = _move_maxpool_behind_activation(nodes, output)
    nodes, output = _fold_affine_forward(nodes, output)
    return nodes, output


def simplified_graph(qat_model: keras.Model) -> tuple[list[Node], str]:
    """The QAT model's nodes after every exact rewrite; it must hold a QFFS activation."""
    nodes, output = read_graph(qat_model)
    if not any(node.op == "act" for node in nodes):
        raise ConversionError(
            "The model has no QFFS activation: quantize it with qffs_tf.quantize_model "
            "(or build it with QuantReLU layers) and train it before converting."
        )
    return simplify(nodes, output)
