"""Batches from whatever a Keras user passes: arrays, tensors, tf.data, generators.

`simulate`, `verify` and `analyze` all read their data through `iterate_batches`, so they
accept the same inputs and stream them in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from qffs_tf._keras import tf
from qffs_tf.errors import InvalidInputError

DEFAULT_BATCH_SIZE = 256


def _as_array(value, what: str) -> np.ndarray:
    try:
        return np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"Cannot read {what} as an array: {e}") from None


def _split(element) -> tuple[object, object | None]:
    """(images, labels or None) from one element: images, (images, labels), or a dict."""
    if isinstance(element, dict):
        images = element.get("image", element.get("images"))
        if images is None:
            raise InvalidInputError(
                f"A dict element needs an 'image' key; got keys {sorted(element)}."
            )
        return images, element.get("label", element.get("labels"))
    if isinstance(element, tuple | list) and len(element) in (2, 3):
        return element[0], element[1]
    return element, None


def num_examples(data) -> int | None:
    """How many examples `data` holds, where that is known without reading it."""
    if isinstance(data, tuple) and len(data) == 2:
        return num_examples(data[0])
    if isinstance(data, np.ndarray):
        return int(data.shape[0]) if data.ndim else None
    if isinstance(data, tf.Tensor) and data.shape.rank:
        return data.shape[0]
    return None


def iterate_batches(
    data, batch_size: int | None = None, input_shape: tuple[int, ...] | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield (images, labels or None) batches of float32 images.

    Parameters
    ----------
    data
        A numpy array or tensor of images; an (images, labels) tuple of arrays; a
        `tf.data.Dataset` of images, (images, labels) or {"image", "label"} elements, batched
        or not; or any iterable (a generator) of such batches.
    batch_size : int, optional
        Images per batch for arrays (default 256); a dataset of single examples is batched
        with it; an already batched dataset or a generator keeps its own batches.
    input_shape : tuple of int, optional
        The model's input shape without the batch axis, to tell single examples from
        batches and to check every batch.

    Yields
    ------
    (np.ndarray, np.ndarray or None)

    Raises
    ------
    InvalidInputError
        A batch of the wrong shape, with NaN or Inf values, or data of an unknown kind.

    Example
    -------
    >>> for images, labels in iterate_batches((x_test, y_test), batch_size=128):
    ...     pass
    """
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise InvalidInputError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")
    size = int(batch_size or DEFAULT_BATCH_SIZE)
    if isinstance(data, tuple) and len(data) == 2:
        all_images, all_labels = _as_array(data[0], "images"), _as_array(data[1], "labels")
        if len(all_images) != len(all_labels):
            raise InvalidInputError(
                f"{len(all_images)} images but {len(all_labels)} labels; pass one label per image."
            )
        source = (
            (all_images[i : i + size], all_labels[i : i + size])
            for i in range(0, len(all_images), size)
        )
    elif isinstance(data, np.ndarray | tf.Tensor | list) and not _is_batch_list(data):
        all_images = _as_array(data, "images")
        source = ((all_images[i : i + size], None) for i in range(0, len(all_images), size))
    elif isinstance(data, tf.data.Dataset):
        source = _dataset_batches(data, size, input_shape)
    elif hasattr(data, "__iter__") or hasattr(data, "__next__"):
        source = (_split(element) for element in data)
    else:
        raise InvalidInputError(
            f"Cannot read images from a {type(data).__name__}; pass a numpy array, a tensor, "
            "an (images, labels) tuple, a tf.data.Dataset or a generator of batches."
        )
    for images, labels in source:
        images = _as_array(images, "images")
        if images.dtype.kind in "uib":
            raise InvalidInputError(
                f"The images are {images.dtype} (e.g. 0-255 pixels); convert them to float32 "
                "and scale them as during training (mnist5k: divide by 255)."
            )
        images = images.astype(np.float32, copy=False)
        if input_shape is not None and images.ndim == len(input_shape):
            images = images[None]  # a single example
        labels = None if labels is None else _as_array(labels, "labels").reshape(-1)
        if len(images) == 0:
            continue
        yield images, labels


def _is_batch_list(data) -> bool:
    return isinstance(data, list) and bool(data) and isinstance(data[0], tuple | dict)


def _dataset_batches(dataset, size: int, input_shape):
    spec = dataset.element_spec
    images_spec = _split(spec)[0]
    rank = getattr(images_spec, "shape", tf.TensorShape(None)).rank
    if input_shape is not None and rank == len(input_shape):  # single examples: batch them
        dataset = dataset.batch(size)
    for element in dataset:
        yield _split(element)


def collect_images(data, batch_size: int | None = None, input_shape=None) -> np.ndarray:
    """All images of `data` as one array (for APIs that need the whole set at once).

    Raises
    ------
    InvalidInputError
        If `data` holds no image.
    """
    batches = [images for images, _ in iterate_batches(data, batch_size, input_shape)]
    if not batches:
        raise InvalidInputError("The data holds no image; pass at least one.")
    return np.concatenate(batches)
