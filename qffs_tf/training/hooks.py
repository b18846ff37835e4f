"""Test hooks of a training run: stop or SIGKILL the process at a chosen point.

They let tests interrupt a run exactly where they want to (`bin/train --test_stop_after_steps`,
`--test_kill_at`) and check that re-running the same command resumes to identical weights.
A SIGKILL here is a real one: no `finally` block, no atexit handler, no flush runs.
"""

from __future__ import annotations

import os
import signal
import sys

from qffs_tf.errors import StopForTest

__all__ = ["KILL_POINTS", "parse_kill_point", "RunHooks"]

# Named points of a run, in the order a run passes them.
KILL_POINTS = (
    "after_float_model",  # float_model.keras written, state.json not yet updated
    "calibration",  # calibration images read, QAT model not yet built
    "report",  # metrics.json written, report.json and the final state.json not yet
)


def parse_kill_point(spec: str) -> tuple[str, int | None]:
    """('step', N) for 'step:N', (name, None) for a named point.

    Raises
    ------
    ValueError
        For anything else, listing the valid points.

    Example
    -------
    >>> parse_kill_point("step:7")
    ('step', 7)
    """
    name, _, count = spec.partition(":")
    if name == "step" and count.isdigit() and int(count) >= 1:
        return "step", int(count)
    if spec in KILL_POINTS:
        return spec, None
    raise ValueError(f"use one of {', '.join(KILL_POINTS)} or step:N with N >= 1, got {spec!r}.")


class RunHooks:
    """Counts this process's training steps and fires the configured stop or kill.

    Parameters
    ----------
    stop_after_steps : int
        Raise StopForTest right after this many steps of this process (0: never).
    kill_at : str or None
        A point of KILL_POINTS or 'step:N': SIGKILL the process there.

    Example
    -------
    >>> hooks = RunHooks(stop_after_steps=0, kill_at=None)
    >>> hooks.after_step()
    >>> hooks.steps
    1
    """

    def __init__(self, stop_after_steps: int = 0, kill_at: str | None = None):
        self.stop_after_steps = stop_after_steps
        self.kill_point = parse_kill_point(kill_at) if kill_at else None
        self.steps = 0

    @staticmethod
    def _kill() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def point(self, name: str) -> None:
        """Called when the run reaches the named point; kills the process if asked to."""
        if self.kill_point == (name, None):
            self._kill()

    def after_step(self) -> None:
        """Called after every training step of this process.

        Raises
        ------
        StopForTest
            When `stop_after_steps` steps have run.
        """
        self.steps += 1
        if self.kill_point == ("step", self.steps):
            self._kill()
        if self.stop_after_steps and self.steps >= self.stop_after_steps:
            raise StopForTest(f"stopped after {self.steps} steps (test hook)")
