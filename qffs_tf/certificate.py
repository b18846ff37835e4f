"""The certificate: why does a neuron's final spike count differ from the QANN's level?

QFFS.md section 6: in float32 the SNN sums a neuron's charge over time steps, the QANN sums it
once, and the two sums may differ in the last bits; a pre-activation that lies that close to a
rounding boundary can round the other way (a *tie*), and the flipped count then changes every
charge downstream (*inherited* mismatches). Anything else is *unexplained*: a bug.

The local test that tells them apart: recompute every activation's pre-activation from the
SNN's **own** upstream levels through the folded QANN's layers (the converter's nodes and
static layers, `build_layer(temporal=False)`: the same code), and round it.

- The SNN's count equals that local level: the layer computed right from what it received.
  If its count still differs from the QANN's, either its input differed (inherited), or, when
  the same recomputation from the QANN's own upstream levels disagrees with the QANN's level,
  the QANN itself sits on a boundary (the tfmot model's unfolded BatchNorm sums in yet another
  order): a tie when that pre-activation is within the tolerance of a boundary.
- The counts differ: a tie when the recomputed pre-activation is within the tolerance of a
  rounding boundary, unexplained otherwise.

Tie tolerance (stated and justified). For a sum of n float32 terms t_i, in any order, the
computed value is within gamma_n * sum |t_i| of the exact one, gamma_n = n u / (1 - n u),
u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms, section 4.2: each term
passes through at most n roundings whatever the order). Two evaluations of the same
pre-activation x (the SNN's over T steps and the QANN's, or the recomputation) can therefore
fall on different sides of a boundary only if the exact value is within gamma_n * M of it,
so the recomputed x, itself within gamma_n * M of the exact value, is within 2 gamma_n M:

    tie  <=>  |x/s + 1/2 - k| <= 2 * gamma_n * M / s   for a boundary k in 1..L,

with M the sum of the magnitudes of every product and bias feeding x (the same graph run on
|weights| and |inputs|), and n the largest number of roundings a term meets on its way
(products, additions over the fan-in, biases, BatchNorm, pooling, residual sums) plus T for
the SNN's additions over time. It is a worst-case bound, so it never calls a real tie
unexplained; it is also small: for a 3x3x64 convolution n is about 600 and the tolerance
about 1e-4 * M / s, far below the error of any wrong threshold or weight. (A neuron whose
input spikes were later taken back by negative spikes carries those charges twice; the
recomputation sees only the net charge, so M can be smaller than the SNN's own magnitude.)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qffs_tf._keras import keras, tf
from qffs_tf.conversion.builder import build_layer
from qffs_tf.conversion.graph import Node
from qffs_tf.conversion.rewrites import simplified_graph

UNIT_ROUNDOFF = 2.0**-24


def gamma(n: int | float) -> float:
    """gamma_n = n u / (1 - n u): the relative error bound of an n-rounding float32 sum."""
    nu = float(n) * UNIT_ROUNDOFF
    return nu / (1.0 - nu) if nu < 1.0 else float("inf")


@dataclasses.dataclass
class Classification:
    """Counts of mismatched neurons of one layer by cause (over a batch)."""

    ties: int = 0
    inherited: int = 0
    unexplained: int = 0
    max_tolerance: float = 0.0  # largest tie tolerance used, in level units


def _abs_node(node: Node) -> Node:
    attrs = dict(node.attrs)
    for key in ("kernel", "bias", "scale", "offset"):
        if key in attrs:
            attrs[key] = np.abs(attrs[key])
    return Node(node.name, node.op, node.inputs, attrs)


class LocalQANN:
    """The folded QANN with every activation's output given from outside.

    Inputs: the image and, per activation, the value its consumers see (the activation's
    output, or the max-pool's output where the converter moved a max-pool behind it).
    Outputs: each activation's pre-activation x (before the moved max-pool), its magnitude
    M (the same graph on absolute values) and, per activation, the rounding count n.

    Parameters
    ----------
    qat_model : tf_keras.Model
        The QFFS QAT model the SNN was converted from.

    Example
    -------
    >>> local = LocalQANN(qat_model)
    >>> x_pre, magnitude = local(images, {name: levels * step for ...})
    """

    def __init__(self, qat_model: keras.Model):
        nodes, output = simplified_graph(qat_model)
        self.acts = [node for node in nodes if node.op == "act"]
        self.sources = {node.name: node.attrs["source"] for node in self.acts}
        self.step_sizes = {node.name: float(node.attrs["threshold"]) for node in self.acts}
        self.levels = {node.name: int(node.attrs["levels"]) for node in self.acts}
        self.pooled_by = {
            node.name: node.attrs["pooled_by"] for node in self.acts if node.attrs.get("pooled_by")
        }
        self.pools = {node.name: node.attrs for node in nodes if node.op == "maxpool"}
        self.model, self.roundings = self._build(nodes, magnitude=False)
        self.magnitude_model, _ = self._build([_abs_node(node) for node in nodes], magnitude=True)

    def _build(self, nodes: list[Node], magnitude: bool):
        visible = {self.pooled_by.get(act.name, act.name): act.name for act in self.acts}
        values, roundings, given, pre = {}, {}, {}, {}
        image = None
        for node in nodes:
            inputs = [values[name] for name in node.inputs]
            counts = [roundings[name] for name in node.inputs]
            if node.op == "input":
                image = keras.Input(node.attrs["shape"], name=node.name)
                values[node.name], roundings[node.name] = image, 0
                continue
            if node.op in ("act", "head"):
                # An activation's own value matters only through the `given` inputs; a
                # moved max-pool, its only consumer, gets the pre-activation for its shape.
                if node.op == "act":
                    pre[node.name] = (inputs[0], counts[0])
                values[node.name], roundings[node.name] = inputs[0], counts[0]
            else:
                layer, weights = build_layer(node, temporal=False)
                values[node.name] = layer(inputs if len(inputs) > 1 else inputs[0])
                if weights is not None:
                    layer.set_weights(weights)
                roundings[node.name] = self._roundings(node, counts, inputs[0])
            if node.name in visible:
                act = visible[node.name]
                given[act] = keras.Input(values[node.name].shape[1:], name=f"{act}_given")
                values[node.name], roundings[node.name] = given[act], 1
        names = [act.name for act in self.acts]
        model = keras.Model(
            [image] + [given[name] for name in names], {name: pre[name][0] for name in names}
        )
        return model, {name: pre[name][1] for name in names}

    @staticmethod
    def _roundings(node: Node, counts: list[int], first) -> int:
        """Roundings a term meets through this node, added to its input's."""
        if node.op == "linear":
            kernel = node.attrs["kernel"]
            fan_in = int(
                np.prod(
                    kernel.shape[:-1]
                    if node.attrs["kind"] != "depthwise_conv2d"
                    else kernel.shape[:2]
                )
            )
            return counts[0] + fan_in + 1
        if node.op == "affine":
            return counts[0] + 2
        if node.op == "add":
            return max(counts) + len(counts) - 1
        if node.op == "shape" and node.attrs["op"] == "average_pooling2d":
            return counts[0] + int(np.prod(node.attrs["pool_size"]))
        if node.op == "shape" and node.attrs["op"] == "global_average_pooling2d":
            return counts[0] + int(np.prod(first.shape[1:-1]))
        return counts[0]

    def __call__(self, x, given: dict[str, np.ndarray]):
        """(pre-activations, magnitudes) per activation for images `x` and given values."""
        names = [act.name for act in self.acts]
        feeds = [np.asarray(x, np.float32)] + [np.asarray(given[n], np.float32) for n in names]
        pre = self.model(feeds, training=False)
        magnitude = self.magnitude_model([np.abs(value) for value in feeds], training=False)
        return (
            {name: np.asarray(value) for name, value in pre.items()},
            {name: np.asarray(value) for name, value in magnitude.items()},
        )

    def pool(self, name: str, values: np.ndarray) -> np.ndarray:
        """`values` (shaped like activation `name`) through the max-pool moved behind it."""
        pool = self.pooled_by.get(name)
        if not pool:
            return values
        attrs = self.pools[pool]
        return tf.nn.max_pool2d(
            tf.constant(values, tf.float32),
            attrs["pool_size"],
            attrs["strides"],
            attrs["padding"].upper(),
        ).numpy()


def level(x: np.ndarray, step: float, levels: int) -> np.ndarray:
    """clip(floor(x/s + 1/2), 0, L), the QFFS quantizer's level."""
    return np.clip(np.floor(x / np.float32(step) + np.float32(0.5)), 0, levels)


def near_boundary(x: np.ndarray, step: float, levels: int, tolerance: np.ndarray) -> np.ndarray:
    """Whether x/s + 1/2 is within `tolerance` (level units) of a boundary k in 1..L."""
    position = x.astype(np.float64) / step + 0.5
    boundary = np.clip(np.round(position), 1, levels)
    return np.abs(position - boundary) <= tolerance


def classify(
    snn: np.ndarray,
    qann: np.ndarray,
    x_snn: np.ndarray,
    x_qann: np.ndarray,
    tol_snn: np.ndarray,
    tol_qann: np.ndarray,
    step: float,
    levels: int,
    pool=lambda values: values,
) -> Classification:
    """Classify one layer's mismatches (see the module docstring).

    `snn`, `x_snn`, `x_qann` and the tolerances are per neuron before a moved max-pool;
    `qann` is the QANN's level after it (`pool`), the units mismatches are counted in.
    """
    local = level(x_snn, step, levels)
    snn_post = pool(snn)
    mismatch = snn_post != qann
    local_ok = snn_post == pool(local)
    wrong_unexplained = (snn != local) & ~near_boundary(x_snn, step, levels, tol_snn)
    unexplained_local = pool(wrong_unexplained.astype(np.float32)) > 0
    qann_recomputed = pool(level(x_qann, step, levels))
    qann_near = pool(near_boundary(x_qann, step, levels, tol_qann).astype(np.float32)) > 0
    qann_off = qann_recomputed != qann
    ties = mismatch & ((~local_ok & ~unexplained_local) | (local_ok & qann_off & qann_near))
    unexplained = mismatch & ((~local_ok & unexplained_local) | (local_ok & qann_off & ~qann_near))
    inherited = mismatch & local_ok & ~qann_off
    return Classification(
        ties=int(ties.sum()),
        inherited=int(inherited.sum()),
        unexplained=int(unexplained.sum()),
        max_tolerance=float(max(np.max(tol_snn, initial=0.0), np.max(tol_qann, initial=0.0))),
    )


def tie_candidates(
    local: LocalQANN, x, qann_levels: dict[str, np.ndarray], timesteps: int = 0
) -> np.ndarray:
    """Per image, the neurons whose QANN pre-activation lies within the tie tolerance of a
    rounding boundary: the only neurons that another float32 summation order (the SNN's over
    T steps, LiteRT's kernels, ...) may round the other way. An image with none gives the
    same levels under every order, so its outputs must agree to float rounding.

    Parameters
    ----------
    local : LocalQANN
        The folded QANN of the model.
    x : array
        Images.
    qann_levels : dict
        Activation name -> the QANN's levels (after a moved max-pool).
    timesteps : int
        T of the SNN being compared (0 for a QANN).

    Returns
    -------
    numpy.ndarray
        (images,) counts.

    Example
    -------
    >>> tie_candidates(LocalQANN(qat), x, levels, 8)
    """
    given = {
        name: values * np.float32(local.step_sizes[name]) for name, values in qann_levels.items()
    }
    pre, magnitude = local(x, given)
    counts = np.zeros(len(np.asarray(x)), np.int64)
    for name in qann_levels:
        step, levels = local.step_sizes[name], local.levels[name]
        tolerance = 2.0 * gamma(local.roundings[name] + timesteps) / step * magnitude[name]
        near = near_boundary(pre[name], step, levels, tolerance)
        counts += near.reshape(len(counts), -1).sum(axis=1)
    return counts


def certify_float(
    qat_model: keras.Model,
    x,
    snn_levels: dict[str, np.ndarray],
    qann_levels: dict[str, np.ndarray],
    timesteps: int,
) -> dict[str, Classification]:
    """Classify every float-mode neuron layer's mismatches.

    Parameters
    ----------
    qat_model : tf_keras.Model
        The QAT model the SNN was converted from.
    x : array
        The images both networks ran on.
    snn_levels : dict
        Neuron layer (= activation node) name -> the SNN's final counts, before any moved
        max-pool.
    qann_levels : dict
        Same names -> the QANN's levels, after a moved max-pool (the QAT model's own layer).
    timesteps : int
        T of the SNN run (its additions over time count as roundings).

    Returns
    -------
    dict
        Layer name -> Classification.

    Example
    -------
    >>> certify_float(qat, x, counts, levels, 32)["quant_r1"].unexplained
    0
    """
    local = LocalQANN(qat_model)

    def given(levels_by_name, pooled: bool) -> dict[str, np.ndarray]:
        out = {}
        for name, values in levels_by_name.items():
            values = local.pool(name, values) if pooled else values
            out[name] = values * np.float32(local.step_sizes[name])
        return out

    x_snn, m_snn = local(x, given(snn_levels, pooled=True))
    x_qann, m_qann = local(x, given(qann_levels, pooled=False))
    out = {}
    for name in snn_levels:
        step, levels = local.step_sizes[name], local.levels[name]
        bound = 2.0 * gamma(local.roundings[name] + timesteps) / step
        out[name] = classify(
            snn_levels[name],
            qann_levels[name],
            x_snn[name],
            x_qann[name],
            bound * m_snn[name],
            bound * m_qann[name],
            step,
            levels,
            pool=lambda values, name=name: local.pool(name, values),
        )
    return out


def certify_integer(
    reference, x, snn_levels: dict[str, np.ndarray], reference_levels: dict[str, np.ndarray]
) -> dict[str, Classification]:
    """Classify an integer-mode SNN's mismatches against the integer reference QANN.

    Integer arithmetic has no ties: every mismatch is inherited (the layer's level,
    recomputed by the reference from the SNN's own upstream counts, equals the SNN's) or
    unexplained.

    Example
    -------
    >>> certify_integer(qffs_tf.integer_reference(qat), x, counts, levels)
    """
    local = reference.local_levels(x, snn_levels)
    out = {}
    for name, counts in snn_levels.items():
        mismatch = counts != reference_levels[name]
        right = counts == local[name]
        out[name] = Classification(
            inherited=int((mismatch & right).sum()), unexplained=int((mismatch & ~right).sum())
        )
    return out
