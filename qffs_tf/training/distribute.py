"""tf.distribute for QFFS training: strategies, chief-only writing, sharded input pipelines.

`make_strategy(name)` builds one of STRATEGIES:

    default       one device (TensorFlow's default strategy)
    mirrored      MirroredStrategy over all local GPUs, or the `devices` given
    multi_worker  MultiWorkerMirroredStrategy; the cluster and this task come from TF_CONFIG
    tpu           TPUStrategy on the TPU named by `tpu` (a name, grpc://host:port or 'local')

Input pipelines come from `distributed_dataset`, which calls `data.load(...,
input_context=ctx)` once per input pipeline (each worker reads its own shard; each replica gets
a per-replica batch of `global batch / replicas`). Only the chief writes checkpoints, models,
TensorBoard logs and reports; the other workers write to a temporary folder that is deleted
at once (the tf.distribute multi-worker recipe: every worker must take part in a save).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence

from qffs_tf._keras import keras, tf
from qffs_tf.errors import StrategyError
from qffs_tf.training.config import STRATEGIES

__all__ = [
    "STRATEGIES",
    "StrategyError",
    "make_strategy",
    "is_chief",
    "task_info",
    "num_replicas",
    "is_distributed",
    "check_global_batch_size",
    "replicas_per_input_pipeline",
    "distributed_dataset",
    "synchronize_batch_norm",
    "worker_write_dir",
    "parse_devices",
]

# TensorFlow's default (no-op) strategy: what get_strategy() returns outside any scope.
_DEFAULT_STRATEGY_TYPE = type(tf.distribute.get_strategy())

_TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\''
)


def parse_devices(devices: str | Sequence[str] | None) -> list[str] | None:
    """'GPU:0,GPU:1' or a list -> ['/device:GPU:0', '/device:GPU:1'] (None stays None)."""
    if devices is None:
        return None
    items = devices.split(",") if isinstance(devices, str) else list(devices)
    names = []
    for item in (item.strip() for item in items):
        if not item:
            continue
        bare = item.removeprefix("/device:").removeprefix("/")
        names.append(f"/device:{bare.upper()}")
    return names or None


def _mirrored(devices: str | Sequence[str] | None) -> tf.distribute.Strategy:
    wanted = parse_devices(devices)
    if wanted is None:
        return tf.distribute.MirroredStrategy()
    available = {d.name.upper(): d.name for d in tf.config.list_logical_devices()}
    missing = [name for name in wanted if name.upper() not in available]
    if missing:
        raise StrategyError(
            f"--devices names {', '.join(missing)}, which this machine does not have; "
            f"available: {', '.join(sorted(available.values()))}."
        )
    if len(set(wanted)) != len(wanted):
        raise StrategyError(f"--devices lists a device twice: {', '.join(wanted)}.")
    return tf.distribute.MirroredStrategy(devices=[available[name.upper()] for name in wanted])


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise StrategyError(
            "--strategy=multi_worker needs the TF_CONFIG environment variable on every worker, "
            f"e.g. {_TF_CONFIG_EXAMPLE} (index 0 on the first host, 1 on the second)."
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise StrategyError(
            f"TF_CONFIG is not valid JSON ({e}); e.g. {_TF_CONFIG_EXAMPLE}."
        ) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict) or "type" not in task:
        raise StrategyError(
            f"TF_CONFIG needs a 'cluster' and a 'task' with 'type' and 'index': "
            f"e.g. {_TF_CONFIG_EXAMPLE}."
        )
    members = cluster.get(task["type"])
    index = task.get("index", 0)
    if not isinstance(members, list) or not isinstance(index, int) or not 0 <= index < len(members):
        raise StrategyError(
            f"TF_CONFIG task {task} is not in its cluster {cluster}: the task's type must be a "
            "key of 'cluster' and its index a position in that list."
        )
    return config


def _tpu(tpu: str | None) -> tf.distribute.Strategy:
    address = tpu or os.environ.get("TPU_NAME")
    if not address:
        raise StrategyError(
            "--strategy=tpu needs --tpu=<TPU name, grpc://host:8470, or 'local' on a TPU VM> "
            "(or the TPU_NAME environment variable)."
        )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as e:  # noqa: BLE001 - TF raises many types here; all mean "no TPU"
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StrategyError(
            f"No TPU reachable at {address!r} ({type(e).__name__}: {first_line[:200]}). Check "
            "--tpu (the TPU name, grpc://host:8470, or 'local' on a TPU VM), or train with "
            "--strategy=default or mirrored."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def make_strategy(
    name: str, devices: str | Sequence[str] | None = None, tpu: str | None = None
) -> tf.distribute.Strategy:
    """The tf.distribute strategy called `name` (one of STRATEGIES).

    Create it before any other TensorFlow work in the process: MultiWorkerMirroredStrategy
    must configure collective ops at start-up, and a TPU must be initialised first.
    """
    if name not in STRATEGIES:
        raise StrategyError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}.")
    if devices is not None and name != "mirrored":
        raise StrategyError(f"--devices is for --strategy=mirrored only, not {name!r}.")
    if tpu is not None and name != "tpu":
        raise StrategyError(f"--tpu is for --strategy=tpu only, not {name!r}.")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return _mirrored(devices)
    if name == "multi_worker":
        _tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu(tpu)


def task_info(strategy: tf.distribute.Strategy) -> tuple[str | None, int | None]:
    """(task type, task index) of this process in a multi-worker cluster, else (None, None)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that writes checkpoints, models and reports.

    That is the 'chief' task if the cluster has one, else worker 0; a single-process run
    (default, mirrored, tpu) is always the chief.
    """
    task_type, task_id = task_info(strategy)
    if task_type is None or task_type == "chief":
        return True
    if task_type != "worker":
        return False  # evaluator / parameter servers never write the run's files
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return "chief" not in cluster and task_id == 0


def num_replicas(strategy: tf.distribute.Strategy) -> int:
    return int(strategy.num_replicas_in_sync)


def is_distributed(strategy: tf.distribute.Strategy) -> bool:
    """True for any strategy but TensorFlow's default one (even a one-device MirroredStrategy)."""
    return not isinstance(strategy, _DEFAULT_STRATEGY_TYPE)


def check_global_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> None:
    """The global batch must split evenly into per-replica batches."""
    replicas = num_replicas(strategy)
    if batch_size % replicas:
        raise StrategyError(
            f"batch_size {batch_size} (the global batch) does not split evenly over "
            f"{replicas} replicas: use a multiple of {replicas}."
        )


def replicas_per_input_pipeline(context: tf.distribute.InputContext) -> int:
    """Per-replica batches one input pipeline produces per global step."""
    return max(1, context.num_replicas_in_sync // context.num_input_pipelines)


def distributed_dataset(
    strategy: tf.distribute.Strategy,
    dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
):
    """`dataset_fn(ctx)` per input pipeline, distributed over the replicas of `strategy`.

    `dataset_fn` must batch with `ctx.get_per_replica_batch_size(global_batch)` and shard with
    `ctx` (`data.load(..., input_context=ctx)` does both). Under the default strategy it is
    called once with a one-replica context and the plain dataset is returned.
    """
    if not is_distributed(strategy):
        return dataset_fn(tf.distribute.InputContext())
    return strategy.distribute_datasets_from_function(dataset_fn)


def synchronize_batch_norm(model: keras.Model) -> int:
    """Make every BatchNormalization of `model` use global-batch statistics across replicas.

    With several replicas, plain BatchNormalization normalises each per-replica batch on its
    own; synchronized BN all-reduces the moments, so training matches one device with the
    same global batch. The flag is not part of the layer config: saved models have plain BN.
    Returns the number of layers changed.
    """
    changed = 0
    for layer in model.submodules:
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            layer.fused = False  # the fused kernel cannot all-reduce the moments
            changed += 1
    return changed


@contextlib.contextmanager
def worker_write_dir(target: str | os.PathLike, strategy: tf.distribute.Strategy) -> Iterator[str]:
    """Yield where this worker writes `target` (a folder): `target` on the chief, else a
    temporary folder that is deleted when the block ends."""
    if is_chief(strategy):
        os.makedirs(target, exist_ok=True)
        yield str(target)
        return
    _, task_id = task_info(strategy)
    temp = tempfile.mkdtemp(prefix=f"qffs_worker{task_id}_")
    try:
        yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)
