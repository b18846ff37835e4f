"""Exceptions with messages that name the problem and the fix."""

from __future__ import annotations


class QFFSError(Exception):
    """Base class of every error qffs_tf raises on purpose; command-line tools print it."""


class ConversionError(QFFSError):
    """A model (layer, topology or value) that the ANN-to-SNN conversion cannot carry."""


class UnsupportedModelError(QFFSError, ValueError):
    """A model that quantize_model or the API cannot take (Keras 3, subclassed, no ReLU...)."""


class DatasetNotFoundError(QFFSError):
    """A data set that is not present on this machine, with how to provide it."""


class ExportError(QFFSError):
    """A model that cannot be exported to TFLite with builtin ops only."""


class InvalidArgumentError(QFFSError, ValueError):
    """An argument value the API cannot take (a number out of range, an unknown option)."""


class InvalidInputError(QFFSError, ValueError):
    """Input data the API cannot take: wrong shape, NaN or Inf, an empty batch."""


# ----------------------------------------------------------------------------- training, run folder


class TrainConfigError(QFFSError, ValueError):
    """A training setting out of range, or a run folder that holds a run with other settings."""


class TrainingDivergedError(QFFSError):
    """A training stage whose loss or variables became NaN or infinite.

    Raised before any checkpoint or model file of the diverged variables is written.
    """


class StrategyError(QFFSError, ValueError):
    """A tf.distribute strategy that cannot be built here: bad name, devices, TF_CONFIG or TPU."""


class CheckpointError(QFFSError):
    """No kept checkpoint of a training stage can be read (all of them are corrupt)."""


class RunFolderError(QFFSError):
    """A run folder that cannot be used: a file, not writable, or in use by another process."""


class RunFolderBusyError(RunFolderError):
    """Another live process holds the run folder's lock (one writer per run folder)."""


class StopForTest(Exception):
    """Test hook (`stop_after_steps`): ends training right after a step, as a kill would.

    Not a QFFSError: it is no user error, and command-line tools exit with status 3 on it.
    """


class CorruptFileError(QFFSError, ValueError):
    """A file of a run folder (JSON) that cannot be read: not UTF-8, not JSON, wrong shape."""


class QuantizationError(QFFSError, ValueError):
    """An argument of quantize_model or the quantizer that cannot work (bits, init, data)."""
