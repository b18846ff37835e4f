"""The one place that imports TensorFlow: forces tf_keras (Keras 2) before TF loads."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from qffs_tf.errors import UnsupportedModelError  # noqa: E402

__all__ = ["tf", "keras", "check_tf_keras_model"]


def check_tf_keras_model(model, what: str = "model") -> None:
    """Raise a clear error unless `model` is a tf_keras Sequential or functional Model."""
    module = type(model).__module__
    if not isinstance(model, keras.Model):
        if module.startswith("keras") or "keras.src" in module:
            raise UnsupportedModelError(
                f"The {what} is a Keras 3 model ({type(model).__name__} from '{module}'). "
                "qffs_tf runs on tf_keras (Keras 2), which tensorflow-model-optimization "
                "requires: build it with `import tf_keras as keras` (or set "
                "TF_USE_LEGACY_KERAS=1 before importing TensorFlow and use tf.keras)."
            )
        raise UnsupportedModelError(
            f"The {what} is a {type(model).__name__}, not a tf_keras Model: pass a "
            "tf_keras Sequential or functional model."
        )
    if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)):
        raise UnsupportedModelError(
            f"The {what} is a subclassed model ({type(model).__name__}); its layer graph "
            "cannot be inspected. Rebuild it with the tf_keras Sequential or functional API."
        )
