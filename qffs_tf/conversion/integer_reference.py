"""The integer reference QANN: what an SNN converted with arithmetic="integer" equals bit
for bit (QFFS.md section 6).

It is the same walk over the QAT model's nodes as the integer SNN (`qffs_tf.conversion.
integer`), built from the same layers in their static form and fed with final levels instead
of spike trains: every activation's level is clip(floor(u + 1/2), 0, L) of the same membrane
expression u, and the logits are the output membrane.
"""

from __future__ import annotations

import numpy as np

from qffs_tf._keras import keras
from qffs_tf.conversion.integer import _Walk, integer_graph


class IntegerReference:
    """The QANN in integer form: what an integer-mode SNN equals bit for bit.

    The same walk as the integer SNN, in static form on final levels: each activation's
    level is clip(floor(u + 1/2), 0, L) of the same membrane expression u the SNN's neurons
    compute; the logits are the output membrane. It differs from the tfmot model's own float
    forward pass only where a pre-activation lies within float rounding of a rounding
    boundary (a tie); `verify` reports how often.

    Attributes
    ----------
    model : tf_keras.Model
        Image -> dict: activation name -> levels (integers as float32, before any max-pool the
        converter moved behind it), and "logits".
    activations : list of str
        Activation names, as the SNN's neuron layers are named.
    pooled_by : dict
        Activation -> the max-pool node moved behind it (absent when none).

    Example
    -------
    >>> reference = qffs_tf.integer_reference(qat_model)
    >>> out = reference(x)
    >>> out["logits"].shape, sorted(out)[:1]
    """

    def __init__(self, qat_model: keras.Model):
        nodes, output = integer_graph(qat_model)
        self._nodes, self._output = nodes, output
        walk = _Walk(nodes, output, "reference")
        self.activations = list(walk.levels)
        self.model = keras.Model(
            walk.image, {**walk.levels, "logits": walk.output}, name="integer_reference"
        )
        by_name = {node.name: node for node in nodes}
        self.pooled_by = {
            name: by_name[name].attrs["pooled_by"]
            for name in self.activations
            if by_name[name].attrs.get("pooled_by")
        }
        self.pools = {
            name: by_name[pool].attrs for name, pool in self.pooled_by.items() if pool in by_name
        }
        self._local = None

    def __call__(self, x) -> dict[str, np.ndarray]:
        """Levels of every activation and the logits on images `x` (one batch)."""
        out = self.model(np.asarray(x, np.float32), training=False)
        return {name: np.asarray(value) for name, value in out.items()}

    def local_levels(self, x, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each activation's levels recomputed from the given levels of the activations
        upstream of it (e.g. an SNN's own counts): the local test of the certificate."""
        if self._local is None:
            walk = _Walk(self._nodes, self._output, "local")
            inputs = [walk.image] + [walk.given[name] for name in walk.levels]
            self._local = (keras.Model(inputs, walk.levels), list(walk.levels))
        model, names = self._local
        feeds = [np.asarray(x, np.float32)] + [np.asarray(given[n], np.float32) for n in names]
        out = model(feeds, training=False)
        return {name: np.asarray(value) for name, value in out.items()}


def integer_reference(qat_model: keras.Model) -> IntegerReference:
    """The integer-form QANN of a weight-quantized QAT model (QFFS.md section 6).

    Parameters
    ----------
    qat_model : tf_keras.Model
        A QFFS QAT model quantized with `weight_bits` (e.g. 8).

    Returns
    -------
    IntegerReference
        Callable on images: a dict of levels per activation and "logits".

    Raises
    ------
    ConversionError
        A model the integer conversion cannot carry (float weights, a BatchNormalization
        after an activation, ...); the message names the layer and the fix.

    Example
    -------
    >>> reference = qffs_tf.integer_reference(qat_model)
    >>> logits = reference(x_test[:64])["logits"]
    """
    return IntegerReference(qat_model)
