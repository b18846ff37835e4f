"""The input pipelines of a training run: epoch batches, calibration images, test batches.

Labels are one-hot (the loss may smooth them). The batches of an epoch are a function of
(seed, epoch) alone (`qffs_tf.data.load`), and a resumed epoch skips the batches already
done, so a resumed run sees exactly the data of an uninterrupted one. Under a tf.distribute
strategy each input pipeline reads its own shard.
"""

from __future__ import annotations

import math

import numpy as np

from qffs_tf import data
from qffs_tf._keras import tf
from qffs_tf.errors import TrainConfigError
from qffs_tf.training import distribute
from qffs_tf.training.config import TrainConfig

__all__ = ["RunData", "steps_per_epoch"]


def steps_per_epoch(config: TrainConfig, train_size: int) -> int:
    """Batches per epoch: the (limited) training split in global batches, capped by the config.

    Example
    -------
    >>> steps_per_epoch(TrainConfig(batch_size=32, train_limit=100), 4000)
    4
    """
    examples = train_size if config.train_limit is None else min(config.train_limit, train_size)
    steps = max(1, math.ceil(examples / config.batch_size))
    return steps if config.steps_per_epoch is None else min(steps, config.steps_per_epoch)


class RunData:
    """The training and test pipelines of a run.

    Parameters
    ----------
    config : TrainConfig
        Data set, batch size, limits, augmentation, seed.
    strategy : tf.distribute.Strategy, optional
        Shards the pipelines over its replicas (None: one device).
    check_available : bool
        Fail now if the data set is not on this machine (before anything is written).

    Raises
    ------
    DatasetNotFoundError
        For an unknown or unprepared data set.
    TrainConfigError
        For an empty training or test split.

    Example
    -------
    >>> run_data = RunData(TrainConfig(train_limit=64, batch_size=32))  # doctest: +SKIP
    >>> run_data.steps_per_epoch  # doctest: +SKIP
    2
    """

    def __init__(self, config: TrainConfig, strategy=None, check_available: bool = True):
        self.config = config
        self.strategy = strategy
        if check_available:
            data.check_available(config.dataset, data_dir=config.data_dir)
        self.info = data.info(config.dataset, data_dir=config.data_dir)
        for split, size in (("train", self.info.train_size), ("test", self.info.test_size)):
            if size < 1:
                raise TrainConfigError(
                    f"The {split} split of data set {config.dataset!r} is empty: nothing to "
                    f"{'train on' if split == 'train' else 'evaluate'}. Prepare the data set "
                    "again (it holds no examples)."
                )
        self.steps_per_epoch = steps_per_epoch(config, self.info.train_size)
        test_examples = self.info.test_size
        if config.test_limit is not None:
            test_examples = min(test_examples, config.test_limit)
        self.test_steps = max(1, math.ceil(test_examples / config.batch_size))

    @property
    def distributed(self) -> bool:
        """Whether the pipelines are distributed over a strategy's replicas."""
        return self.strategy is not None and distribute.is_distributed(self.strategy)

    def _one_hot(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        classes = self.info.num_classes
        return dataset.map(lambda x, y: (x, tf.one_hot(y, classes)))

    def train(self, epoch: int, skip_batches: int = 0):
        """Epoch `epoch`'s batches (a function of seed and epoch), minus the first ones done.

        Under a strategy: a distributed dataset; each input pipeline yields per-replica
        batches, `replicas per pipeline` of them per global step.
        """
        c = self.config

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            dataset = data.load(
                c.dataset,
                "train",
                batch_size=c.batch_size,
                data_dir=c.data_dir,
                augment=c.augment,
                shuffle=True,
                seed=c.seed,
                epoch=epoch,
                take=c.train_limit,
                input_context=context if self.distributed else None,
            )
            per_step = distribute.replicas_per_input_pipeline(context)
            dataset = dataset.take(self.steps_per_epoch * per_step)
            if skip_batches:
                dataset = dataset.skip(skip_batches * per_step)
            return self._one_hot(dataset)

        if not self.distributed:
            return dataset_fn(tf.distribute.InputContext())
        return distribute.distributed_dataset(self.strategy, dataset_fn)

    def calibration_images(self) -> np.ndarray:
        """The first `calibration_batches` training batches (canonical order, no augmentation)."""
        c = self.config
        dataset = data.load(
            c.dataset, "train", batch_size=c.batch_size, data_dir=c.data_dir, take=c.train_limit
        )
        images = [x.numpy() for x, _ in dataset.take(c.calibration_batches)]
        if not images:
            raise TrainConfigError(
                f"The train split of data set {c.dataset!r} yielded no batch to calibrate the "
                "step sizes with."
            )
        return np.concatenate(images)

    def test(self, distributed: bool = False):
        """The test batches; `distributed=True` shards them over the replicas (validation)."""
        c = self.config

        def dataset_fn(context: tf.distribute.InputContext | None) -> tf.data.Dataset:
            dataset = data.load(
                c.dataset,
                "test",
                batch_size=c.batch_size,
                data_dir=c.data_dir,
                take=c.test_limit,
                input_context=context,
            )
            return self._one_hot(dataset)

        if not (distributed and self.distributed):
            return dataset_fn(None)
        return distribute.distributed_dataset(self.strategy, dataset_fn)
