"""Running exported .tflite files with the LiteRT interpreter (XNNPACK, its default delegate).

`predict` runs a single-signature file (QANN kinds, snn_full) on a batch of float images and
returns float logits (int8 files are quantized/dequantized at the boundary). `stream` runs a
snn_step file for T steps (`start` then `advance`, or `reset` then `step` with the image at
every step) and returns the logits after every step.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["interpreter", "predict", "stream", "input_batch_size"]

_CHUNK = 256


def interpreter(path: str | os.PathLike, num_threads: int | None = None):
    """A LiteRT Interpreter for the file at `path` (XNNPACK applied by default)."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path), num_threads=num_threads)


def input_batch_size(path: str | os.PathLike) -> int | None:
    """The fixed batch size of the file's first input, or None if the batch is dynamic."""
    runtime = interpreter(path)
    detail = runtime.get_input_details()[0]
    signature = detail.get("shape_signature", detail["shape"])
    return None if int(signature[0]) == -1 else int(detail["shape"][0])


def _to_input(images: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return images.astype(np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    quantized = np.round(images / scale + zero_point)
    return np.clip(quantized, info.min, info.max).astype(detail["dtype"])


def _from_output(values: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _pad(chunk: np.ndarray, size: int) -> np.ndarray:
    if len(chunk) == size:
        return chunk
    filler = np.repeat(chunk[-1:], size - len(chunk), axis=0)
    return np.concatenate([chunk, filler])


def predict(
    path: str | os.PathLike, images: np.ndarray, num_threads: int | None = None
) -> np.ndarray:
    """Float logits of a single-signature .tflite file on float `images` (N, ...)."""
    images = np.asarray(images, np.float32)
    runtime = interpreter(path, num_threads)
    detail = runtime.get_input_details()[0]
    fixed = input_batch_size(path)
    size = fixed or min(_CHUNK, len(images))
    runtime.resize_tensor_input(detail["index"], [size, *images.shape[1:]])
    runtime.allocate_tensors()
    detail = runtime.get_input_details()[0]
    output = runtime.get_output_details()[0]
    results = []
    for start in range(0, len(images), size):
        chunk = images[start : start + size]
        runtime.set_tensor(detail["index"], _to_input(_pad(chunk, size), detail))
        runtime.invoke()
        logits = _from_output(runtime.get_tensor(output["index"]), output)
        results.append(logits[: len(chunk)])
    return np.concatenate(results)


def stream(
    path: str | os.PathLike,
    images: np.ndarray,
    timesteps: int,
    num_threads: int | None = None,
    image_every_step: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Run a snn_step file for `timesteps` steps per batch.

    By default `start(image)` then `advance()` (the image's layers run once); with
    `image_every_step`, or for files exported before `start` existed, `reset()` then
    `step(image)` at every step. Both give the same numbers.

    Returns the logits after every step, (N, T, classes), and the spikes emitted in every
    step, (N, T). The file's fixed batch size sets the chunk size (the last chunk is padded).
    """
    images = np.asarray(images, np.float32)
    runtime = interpreter(path, num_threads)
    masked = image_every_step or "start" not in runtime.get_signature_list()
    first = runtime.get_signature_runner("reset" if masked else "start")
    step = runtime.get_signature_runner("step" if masked else "advance")
    size = int(runtime.get_signature_runner("step").get_input_details()["image"]["shape"][0])
    logits, spikes = [], []
    for start in range(0, len(images), size):
        count = len(images[start : start + size])
        chunk = _pad(images[start : start + size], size)
        if masked:
            first()
            per_step = [step(image=chunk) for _ in range(timesteps)]
        else:
            per_step = [first(image=chunk)] + [step() for _ in range(timesteps - 1)]
        logits.append(np.stack([out["logits"][:count] for out in per_step], axis=1))
        spikes.append(np.stack([out["spikes"][:count] for out in per_step], axis=1))
    return np.concatenate(logits), np.concatenate(spikes)
