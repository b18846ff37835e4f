"""The converted SNN as a Keras model whose forward pass is its `Program`.

`qffs_tf.convert` returns a `SpikingNetwork`: a functional tf_keras Model of the spiking
layers (its graph, weights, `summary`, saving and loading are Keras's) whose `call` runs
`Program.window` over that graph. That is the path `simulate` runs, with what only the whole
graph knows: the steps from which each neuron layer is quiet (`Program.quiet_from`), and the
first neurons reading the static charge without a copy of it laid over the window. Keras's
own layer-by-layer call knows neither, and computes every step of every layer. So `snn(x)`
and `snn.predict(x)` give what `simulate` gives, bit for bit, by construction, and sooner.
"""

from __future__ import annotations

from qffs_tf._keras import keras, tf
from qffs_tf.snn.program import Program, integrate_and_readout


@keras.utils.register_keras_serializable(package="qffs_tf")
class SpikingNetwork(keras.Model):
    """A converted SNN: a functional tf_keras Model that runs its layer graph as a `Program`.

    Built like any functional model, from the spiking layers' input and output tensors;
    `qffs_tf.convert` builds it, and `load_model` and `with_timesteps` keep it. Everything
    but the forward pass (layers, weights, configs, saving) is the functional model's.

    Parameters
    ----------
    inputs, outputs
        As for ``tf_keras.Model``: the image input and the `Readout` layer's output.
    name : str, optional
        The model's name.

    Example
    -------
    >>> snn = qffs_tf.convert(qat_model, timesteps=8)
    >>> isinstance(snn, SpikingNetwork)
    True
    >>> probabilities = snn.predict(images)
    """

    @property
    def program(self) -> Program:
        """The `Program` of this model's graph, built on first use."""
        program = self.__dict__.get("_qffs_program")
        if program is None:  # kept out of Keras's attribute tracking: not a layer or weight
            program = self.__dict__["_qffs_program"] = Program(self)
        return program

    def call(self, inputs, training=None, mask=None):
        if isinstance(inputs, list | tuple) and len(inputs) == 1:
            inputs = inputs[0]
        dtype = self.inputs[0].dtype
        if inputs.dtype != dtype:  # what the functional call does for, e.g., uint8 images
            inputs = tf.cast(inputs, dtype)
        readout = self.program.readout.name
        values, _ = self.program.window(inputs, keep=(readout,))
        return values[readout]


def as_spiking_network(model: keras.Model) -> keras.Model:
    """A converted SNN saved as a plain functional model, as a `SpikingNetwork` (the same
    layers and weights, shared); any other model as it is.

    Parameters
    ----------
    model : tf_keras.Model
        A loaded model.

    Returns
    -------
    tf_keras.Model
        `model` itself, or a `SpikingNetwork` over its layers.

    Example
    -------
    >>> snn = as_spiking_network(tf_keras.models.load_model("old_snn.keras"))
    """
    if isinstance(model, SpikingNetwork) or not getattr(model, "_is_graph_network", False):
        return model
    integrate, readout = integrate_and_readout(model.layers)
    if not integrate or not readout:  # not an SNN: Program's own test
        return model
    return SpikingNetwork(model.inputs, model.outputs, name=model.name)


def program_of(snn: keras.Model) -> Program:
    """The `Program` of a converted SNN: a `SpikingNetwork`'s own, built once and shared by
    its call, `simulate` and export; a new one for a plain functional SNN.

    Parameters
    ----------
    snn : tf_keras.Model
        A model made by `qffs_tf.convert` (or an SNN loaded as a plain functional model).

    Returns
    -------
    Program

    Raises
    ------
    ConversionError
        If `snn` is not a qffs_tf SNN.

    Example
    -------
    >>> program_of(snn).quiet_from
    {'quant_conv1': 3, 'quant_conv2': 5}
    """
    return snn.program if isinstance(snn, SpikingNetwork) else Program(snn)
