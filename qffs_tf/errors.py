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
