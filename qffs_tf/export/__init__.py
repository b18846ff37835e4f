"""Export to TFLite (LiteRT): the files, their parity checks and a small LiteRT runner."""

from qffs_tf.export.tflite import (
    KINDS,
    ExportResult,
    check_builtin_only,
    export_tflite,
    operator_names,
)

__all__ = ["KINDS", "ExportResult", "check_builtin_only", "export_tflite", "operator_names"]
