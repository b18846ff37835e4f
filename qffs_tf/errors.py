"""Every exception qffs_tf raises on purpose, with messages that name the problem and the fix.

All classes derive from `QFFSError`, so ``except qffs_tf.QFFSError`` catches any error a caller
can cause. Most also derive from the built-in class a Python caller would expect for that kind
of mistake (`ValueError` for a bad value, `TypeError` for a wrong type, `OSError` for a file
that cannot be read), so existing ``except ValueError`` code keeps working.

Messages are written for the caller who will read them: errors raised by the library name
Python arguments (``timesteps``, ``calibration_data``), never command-line flags; the
command-line tools (`qffs_tf.cli`) add the flag when they know it.

Example
-------
>>> import qffs_tf
>>> try:
...     raise qffs_tf.errors.InvalidArgumentError("timesteps must be >= 1, got 0")
... except ValueError as error:  # also a QFFSError
...     print(type(error).__name__, "-", error)
InvalidArgumentError - timesteps must be >= 1, got 0
"""

from __future__ import annotations

__all__ = [
    "QFFSError",
    "UsageError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "InvalidInputError",
    "UnsupportedModelError",
    "ConversionError",
    "ExportError",
    "DatasetNotFoundError",
    "ModelLoadError",
    "ModelNotFoundError",
]


class QFFSError(Exception):
    """Base class of every error qffs_tf raises on purpose.

    The command-line tools print its message as one line, ``tool: error: <message>``, and
    exit with status 2.
    """


class UsageError(QFFSError):
    """A bad command line: a flag value, a flagfile, a positional argument."""


class InvalidArgumentError(QFFSError, ValueError):
    """An argument with a value the function cannot take (``timesteps=0``, ``bits=9``,
    an unknown ``init`` or ``mode``)."""


class InvalidTypeError(QFFSError, TypeError):
    """An argument of the wrong type (``timesteps=None``, a string where a model is
    expected)."""


class InvalidInputError(QFFSError, ValueError):
    """Data the function cannot use: an array of the wrong shape, NaN or Inf values, an
    empty batch or data set, images on the wrong scale."""


class UnsupportedModelError(QFFSError, ValueError):
    """A model the API cannot take: a Keras 3 or subclassed model, a model without ReLUs,
    a model with more than one input or output."""


class ConversionError(QFFSError, ValueError):
    """A model (layer, topology or value) that the ANN-to-SNN conversion cannot carry."""


class ExportError(QFFSError):
    """A model that cannot be exported to TFLite with builtin ops only."""


class DatasetNotFoundError(QFFSError):
    """A data set that is not present on this machine, with how to provide it."""


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


class ModelLoadError(QFFSError, OSError):
    """A saved model that cannot be loaded: unreadable, truncated, corrupt, or not a model."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """No saved model at the given path."""
