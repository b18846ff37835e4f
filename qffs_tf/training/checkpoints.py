"""Checkpoints of a training stage: what is saved, when a save is refused, how a resume reads.

A stage's checkpoint (`tf.train.CheckpointManager`, two kept) holds the model, the optimizer,
the dropout random generators (tf_keras leaves them out of its own checkpoints) and the
stage's counters: epochs done, batches done in the current epoch, the training seconds, the
per-epoch history and the metric sums of the epoch so far (so an epoch's loss and accuracy
after a resume cover the whole epoch).

Every save first checks every floating-point variable of the model and the optimizer: a
variable that holds NaN or infinity stops the stage with TrainingDivergedError, and nothing
is written. A resume tries the kept checkpoints newest first: one that cannot be read (or holds
non-finite values) is moved to `corrupt/` with a warning and the previous one is used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from absl import logging

from qffs_tf import io_utils
from qffs_tf._keras import keras, tf
from qffs_tf.errors import CheckpointError, TrainingDivergedError
from qffs_tf.training import distribute

__all__ = [
    "MAX_TO_KEEP",
    "StageCheckpoint",
    "random_generators",
    "nonfinite_variables",
    "diverged_error",
]

MAX_TO_KEEP = 2
_PREFIX = re.compile(r"^ckpt-(\d+)\.index$")


def random_generators(model: keras.Model) -> list[tf.random.Generator]:
    """The tf.random.Generator of every random layer (dropout), created now if still lazy.

    tf_keras leaves these out of checkpoints, so they are saved explicitly: without them a
    resumed run would draw different dropout masks.

    Example
    -------
    >>> random_generators(keras.Sequential([keras.layers.Dropout(0.5)]))  # doctest: +SKIP
    [<tf.random.Generator ...>]
    """
    generators = []
    for layer in model.submodules:
        rng = getattr(layer, "_random_generator", None)
        if rng is None or not hasattr(rng, "_maybe_init"):
            continue
        rng._maybe_init()
        if getattr(rng, "_generator", None) is not None:
            generators.append(rng._generator)
    return generators


def _optimizer_variables(optimizer) -> list[tf.Variable]:
    variables = optimizer.variables
    return list(variables() if callable(variables) else variables)


def nonfinite_variables(variables) -> list[str]:
    """Names of the floating-point variables that hold a NaN or an infinity.

    Example
    -------
    >>> nonfinite_variables([tf.Variable([1.0, float("inf")], name="w")])
    ['w:0']
    """
    bad = []
    for variable in variables:
        if not variable.dtype.is_floating:
            continue
        if not bool(tf.reduce_all(tf.math.is_finite(variable))):
            bad.append(variable.name)
    return bad


def diverged_error(stage: str, cause: str, last_checkpoint: str | None) -> TrainingDivergedError:
    """The error of a stage that diverged; `cause` says what became non-finite and when.

    Example
    -------
    >>> print(diverged_error("float", "the loss became nan at epoch 1, batch 3", None))
    ... # doctest: +ELLIPSIS
    The float stage diverged: the loss became nan at epoch 1, batch 3. Lower ...
    """
    kept = (
        f"the last checkpoint kept is {last_checkpoint}"
        if last_checkpoint
        else "no checkpoint of this stage was written yet"
    )
    return TrainingDivergedError(
        f"The {stage} stage diverged: {cause}. Lower the learning rate (lr_{stage}; "
        f"--lr_{stage} on the command line) or check the data for NaNs, and start again in a "
        "new run folder (a run folder refuses changed settings). No checkpoint or model of the "
        f"diverged variables was written; {kept}."
    )


class StageCheckpoint:
    """The checkpointed state of one training stage and its CheckpointManager.

    Parameters
    ----------
    name : str
        'float' or 'qat' (for messages).
    model : keras.Model
        The stage's model (built, compiled).
    optimizer : keras.optimizers.Optimizer
        Its optimizer, with its slot variables built (so a restore can fill them).
    directory : str or Path
        The chief's checkpoint folder of the stage; every worker restores from it.
    strategy : tf.distribute.Strategy
        Only the chief keeps checkpoints; other workers save into a temporary folder.
    generators : list of tf.random.Generator
        The dropout generators (`random_generators(model)`).

    Example
    -------
    >>> stage = StageCheckpoint("float", model, optimizer, "run/checkpoints/float",
    ...                         strategy, random_generators(model))  # doctest: +SKIP
    >>> stage.restore()  # doctest: +SKIP
    False
    """

    def __init__(self, name, model, optimizer, directory, strategy, generators):
        self.name = name
        self.directory = Path(directory)
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.chief = distribute.is_chief(strategy)
        # The counters are plain local variables, outside any strategy scope: every worker
        # holds the same values, and a string variable cannot be broadcast by collectives.
        self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.history = tf.Variable("[]", dtype=tf.string, trainable=False)
        # {metric name: [total, count]} of the current epoch up to the saved batch.
        self.epoch_metrics = tf.Variable("{}", dtype=tf.string, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            random_generators=generators,
            epochs_done=self.epochs_done,
            step_in_epoch=self.step_in_epoch,
            seconds=self.seconds,
            history=self.history,
            epoch_metrics=self.epoch_metrics,
        )
        self._manager = None
        self.last_saved: str | None = None  # for the divergence message
        self._clock = time.perf_counter()
        self.iterations = 0  # Python mirrors of the counters: no device read per batch
        self.batches_in_epoch = 0

    # ------------------------------------------------------------------------- counters

    def history_rows(self) -> list[dict]:
        """The per-epoch history so far."""
        return json.loads(self.history.numpy().decode())

    def append_history(self, row: dict) -> None:
        """Add one epoch's row to the history."""
        self.history.assign(json.dumps([*self.history_rows(), row]))

    def carried_metrics(self) -> dict[str, list[float]]:
        """{metric: [total, count]} of the current epoch's batches before this process ran."""
        return json.loads(self.epoch_metrics.numpy().decode())

    def add_seconds(self) -> None:
        """Add the wall time since the last call (or the restore) to the stage's seconds."""
        now = time.perf_counter()
        self.seconds.assign_add(now - self._clock)
        self._clock = now

    # ------------------------------------------------------------------------- saving

    def _variables(self) -> list[tf.Variable]:
        return list(self.model.variables) + _optimizer_variables(self.optimizer)

    def check_finite(self, where: str) -> None:
        """Raise TrainingDivergedError if a model or optimizer variable is not finite.

        `where` says when (e.g. 'after step 12 (epoch 2, batch 4)').
        """
        bad = nonfinite_variables(self._variables())
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise diverged_error(
                self.name, f"{shown} hold NaN or infinite values {where}", self.last_saved
            )

    @property
    def manager(self) -> tf.train.CheckpointManager:
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(
                self.checkpoint, str(self.directory), max_to_keep=MAX_TO_KEEP
            )
        return self._manager

    def save(self, metrics: dict[str, list[float]]) -> None:
        """Checkpoint the stage after `self.iterations` steps; refuse diverged variables.

        Parameters
        ----------
        metrics : dict
            {metric: [total, count]} of the current epoch so far ({} at an epoch end).

        Raises
        ------
        TrainingDivergedError
            When a variable is not finite; nothing is written then.
        """
        self.check_finite(
            f"after step {self.iterations} (epoch {int(self.epochs_done.numpy()) + 1}, "
            f"batch {self.batches_in_epoch})"
            if self.batches_in_epoch
            else f"at the end of epoch {int(self.epochs_done.numpy())} (step {self.iterations})"
        )
        self.step_in_epoch.assign(self.batches_in_epoch)
        self.epoch_metrics.assign(json.dumps(metrics))
        self.add_seconds()
        if self.chief:
            self.last_saved = self.manager.save(checkpoint_number=self.iterations)
            return
        # A non-chief worker takes part in the save (as tf.distribute requires) into a
        # temporary folder that is deleted at once.
        with distribute.worker_write_dir(self.directory, self.strategy) as folder:
            manager = tf.train.CheckpointManager(self.checkpoint, folder, max_to_keep=1)
            manager.save(checkpoint_number=self.iterations)

    # ------------------------------------------------------------------------- resuming

    def kept_checkpoints(self) -> list[str]:
        """Prefixes of the checkpoints in the folder, newest first.

        Read from the file names, not from TensorFlow's `checkpoint` state file, so a damaged
        state file loses nothing.
        """
        if not self.directory.is_dir():
            return []
        numbered = []
        for entry in os.listdir(self.directory):
            match = _PREFIX.match(entry)
            if match:
                numbered.append((int(match.group(1)), str(self.directory / f"ckpt-{match[1]}")))
        return [prefix for _, prefix in sorted(numbered, reverse=True)]

    def restore(self) -> bool:
        """Restore the newest readable checkpoint; False if the stage has none.

        A checkpoint that cannot be read, or that holds non-finite variables, is set aside
        (moved to `corrupt/` by the chief) with a warning, and the previous one is tried.

        Raises
        ------
        CheckpointError
            When checkpoints exist but none of them can be read.
        """
        candidates = self.kept_checkpoints()
        if not candidates:
            return False
        failures = []
        for prefix in candidates:
            try:
                # expect_partial: the manager's save_counter is in the file, not in ours.
                self.checkpoint.restore(prefix).expect_partial().assert_existing_objects_matched()
                bad = nonfinite_variables(self._variables())
                if bad:
                    raise ValueError(f"{', '.join(bad[:3])} hold NaN or infinite values")
            except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways
                reason = " ".join(str(e).split())[:300] or type(e).__name__
                logging.warning(
                    "The %s stage's checkpoint %s cannot be used (%s: %s); falling back to the "
                    "previous kept checkpoint.",
                    self.name,
                    prefix,
                    type(e).__name__,
                    reason,
                )
                failures.append(prefix)
                continue
            if self.chief:
                self._set_aside(failures)
                self._write_state([p for p in candidates if p not in failures])
            self.last_saved = prefix
            self.iterations = int(self.optimizer.iterations.numpy())
            self.batches_in_epoch = int(self.step_in_epoch.numpy())
            self._clock = time.perf_counter()
            return True
        names = ", ".join(os.path.basename(p) for p in failures)
        raise CheckpointError(
            f"None of the kept checkpoints of the {self.name} stage in {self.directory} can be "
            f"read ({names}; see the warnings above). Delete {self.directory} to train the "
            f"{self.name} stage again from its start."
        )

    def _set_aside(self, failed: list[str]) -> None:
        """Move unusable checkpoints to corrupt/ (kept for inspection, never read again)."""
        if not failed:
            return
        corrupt = self.directory / "corrupt"
        corrupt.mkdir(exist_ok=True)
        for prefix in failed:
            base = os.path.basename(prefix)
            for entry in os.listdir(self.directory):
                if entry == f"{base}.index" or entry.startswith(f"{base}.data-"):
                    shutil.move(str(self.directory / entry), str(corrupt / entry))
            logging.warning("Moved the unusable checkpoint %s to %s/.", base, corrupt)

    def _write_state(self, usable: list[str]) -> None:
        """Rewrite TensorFlow's `checkpoint` state file to list `usable` (newest first).

        The CheckpointManager reads it to know which checkpoints to delete; a damaged or stale
        one would make it keep old checkpoints forever. Relative paths, as TensorFlow's own.
        """
        names = [os.path.basename(p) for p in usable]
        lines = [f'model_checkpoint_path: "{names[0]}"']
        lines += [f'all_model_checkpoint_paths: "{name}"' for name in reversed(names)]
        io_utils.atomic_write_text(self.directory / "checkpoint", "\n".join(lines) + "\n")
