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


class QuantizationError(QFFSError, ValueError):
    """An argument of quantize_model or the quantizer that cannot work (bits, init, data)."""
