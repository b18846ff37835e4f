"""Running exported .tflite files with the LiteRT interpreter (XNNPACK, its default delegate).

`predict` runs a single-signature file (QANN kinds, snn_full) on a batch of float images and
returns float logits (int8 files are quantized/dequantized at the boundary). `stream` runs a
snn_step file for T steps (`start` then `advance`, or `reset` then `step` with the image at
every step) and returns the logits after every step.
"""

from __future__ import annotations

import bisect
import os

import numpy as np

__all__ = ["interpreter", "predict", "stream", "input_batch_size", "StreamingRunner"]

_CHUNK = 256


def quiet_signature_name(k: int) -> str:
    """Name of a snn_step file's k-th quiet signature (k = 1, 2, ...), in bound order.

    Parameters
    ----------
    k : int
        1 for the first quiet bound, 2 for the next, ...

    Returns
    -------
    str
        `advance_quiet`, `advance_quiet_2`, ...

    Example
    -------
    >>> quiet_signature_name(2)
    'advance_quiet_2'
    """
    return "advance_quiet" if k == 1 else f"advance_quiet_{k}"


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


class StreamingRunner:
    """One way of running a snn_step file's windows, for callers that step it themselves.

    By default `start(image)` runs step 0 and `advance()` each further step (the image's
    layers run once per window); with `image_every_step`, or for files exported before
    `start` existed, `reset()` begins a window and `step(image)` runs every step. Both give
    the same numbers. Where the file has `advance_quiet` (and `advance_quiet_2`, ...), each
    runs the steps from the one `start` names for it (`quiet_from`, one step per signature):
    more neuron layers are quiet from each, and it skips them and what reads only them,
    with the same numbers as `advance`.

    Parameters
    ----------
    runtime : Interpreter
        From `interpreter(path)` on a snn_step file.
    image_every_step : bool
        Use `reset` / `step(image)` even where `start` / `advance` exist.
    skip_quiet : bool
        Use the `advance_quiet*` signatures where the file has them (default); False runs
        `advance` throughout (to compare or time the two).

    Attributes
    ----------
    quiet_from : tuple of int
        Set by step 0: the step from which each `advance_quiet*` signature runs (empty
        where there is none or `skip_quiet` is False).

    Example
    -------
    >>> runner = StreamingRunner(interpreter("snn_step.tflite"))
    >>> outputs = runner.window(image, 8)  # or begin_window(), then step(t, image) per step
    """

    def __init__(self, runtime, image_every_step: bool = False, skip_quiet: bool = True):
        signatures = runtime.get_signature_list()
        self.masked = image_every_step or "start" not in signatures
        names = ("reset", "step") if self.masked else ("start", "advance")
        self._begin, self._next = (runtime.get_signature_runner(name) for name in names)
        self._quiet = []  # advance_quiet, advance_quiet_2, ... as far as the file has them
        while skip_quiet and not self.masked:
            name = quiet_signature_name(len(self._quiet) + 1)
            if name not in signatures:
                break
            self._quiet.append(runtime.get_signature_runner(name))
        self.quiet_from: tuple[int, ...] = ()
        step = runtime.get_signature_runner("step")
        self.batch_size = int(step.get_input_details()["image"]["shape"][0])

    @property
    def skips_quiet(self) -> bool:
        """Whether later steps run `advance_quiet*` (the file has it and it was not turned off)."""
        return bool(self._quiet)

    def begin_window(self) -> None:
        """Before step 0 of a window: `reset` in the image-every-step way, nothing otherwise
        (`start` begins the window itself)."""
        if self.masked:
            self._begin()

    def step(self, t: int, image: np.ndarray) -> dict:
        """Step `t` of the current window on `image` (batch of the file's size); the file's
        outputs (logits so far, spikes in this step, step count)."""
        if self.masked:
            return self._next(image=image)
        if t == 0:
            outputs = self._begin(image=image)
            quiet_from = outputs.pop("quiet_from", None)
            if self._quiet:  # files of one advance_quiet gave a scalar
                self.quiet_from = tuple(int(b) for b in np.atleast_1d(quiet_from))
            return outputs
        # The latest signature whose bound has come: its layers are quiet by now, skipped.
        come = bisect.bisect_right(self.quiet_from, t)
        return self._quiet[come - 1]() if come else self._next()

    def window(self, image: np.ndarray, timesteps: int) -> list[dict]:
        """A whole window of `timesteps` steps on `image`: each step's outputs, in order."""
        self.begin_window()
        return [self.step(t, image) for t in range(timesteps)]


def stream(
    path: str | os.PathLike,
    images: np.ndarray,
    timesteps: int,
    num_threads: int | None = None,
    image_every_step: bool = False,
    skip_quiet: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Run a snn_step file for `timesteps` steps per batch (see `StreamingRunner` for the two
    ways, chosen by `image_every_step`, and for `skip_quiet`; all give the same numbers).

    Returns the logits after every step, (N, T, classes), and the spikes emitted in every
    step, (N, T). The file's fixed batch size sets the chunk size (the last chunk is padded).
    """
    images = np.asarray(images, np.float32)
    runner = StreamingRunner(interpreter(path, num_threads), image_every_step, skip_quiet)
    size = runner.batch_size
    logits, spikes = [], []
    for start in range(0, len(images), size):
        count = len(images[start : start + size])
        chunk = _pad(images[start : start + size], size)
        per_step = runner.window(chunk, timesteps)
        logits.append(np.stack([out["logits"][:count] for out in per_step], axis=1))
        spikes.append(np.stack([out["spikes"][:count] for out in per_step], axis=1))
    return np.concatenate(logits), np.concatenate(spikes)
