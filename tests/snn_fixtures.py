"""Random networks that contain every layer kind the converter supports."""

import numpy as np

from qffs_tf._keras import keras


def every_layer_model(seed: int = 0) -> keras.Model:
    """Conv/BN/ReLU forms, max-pool before and after activations, BN after an activation,
    residual Add, depthwise conv, average and global pooling, zero padding, dropout."""
    inp = keras.Input((12, 12, 2))
    x = keras.layers.ZeroPadding2D(1, name="pad")(inp)
    x = keras.layers.Conv2D(6, 3, name="c1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", name="c2")(x)
    x = keras.layers.MaxPooling2D(name="pool_before_act")(x)
    x = keras.layers.Activation("relu", name="r2")(x)
    x = keras.layers.BatchNormalization(name="bn_after_act")(x)
    x = keras.layers.Conv2D(6, 1, activation="relu", name="c3")(x)
    branch = keras.layers.Conv2D(6, 3, padding="same", name="c4")(x)
    branch = keras.layers.BatchNormalization(name="bn4")(branch)
    x = keras.layers.Add(name="add")([x, branch])
    x = keras.layers.ReLU(name="r4")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    x = keras.layers.AveragePooling2D(name="avg")(x)
    x = keras.layers.Dropout(0.2, name="drop")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="c5")(x)
    x = keras.layers.BatchNormalization(name="bn5")(x)
    x = keras.layers.ReLU(name="r5")(x)
    x = keras.layers.BatchNormalization(name="bn_before_gap")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(10, activation="relu", name="d1")(x)
    out = keras.layers.Dense(5, name="logits")(x)
    return randomize(keras.Model(inp, out), seed)


def flatten_model(seed: int = 0) -> keras.Model:
    """Conv -> BN -> max-pool -> ReLU, flatten, Dense -> ReLU -> BN folded into the logits."""
    inp = keras.Input((10, 10, 1))
    x = keras.layers.Conv2D(4, 3, name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(12, activation="relu", name="d1")(x)
    x = keras.layers.BatchNormalization(name="bn_d1")(x)
    out = keras.layers.Dense(4, name="logits")(x)
    return randomize(keras.Model(inp, out), seed)


def randomize(model: keras.Model, seed: int) -> keras.Model:
    """Biases of both signs and non-trivial BatchNorm statistics (some negative scales)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            gamma = rng.uniform(0.5, 1.5, channels) * rng.choice([-1, 1], channels, p=[0.2, 0.8])
            layer.set_weights(
                [
                    gamma,
                    rng.normal(0, 0.3, channels),
                    rng.normal(0, 0.3, channels),
                    rng.uniform(0.5, 2.0, channels),
                ]
            )
        elif getattr(layer, "use_bias", False):
            weights = layer.get_weights()
            weights[-1] = rng.normal(0, 0.2, weights[-1].shape)
            layer.set_weights(weights)
    return model


def images(n: int, shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)
