"""Shared plumbing of the bin/ tools: flag parsing, one-line errors, quiet TensorFlow start-up.

Every tool calls `run(main)`. A user error (QFFSError, a bad flag value, a missing file, a
malformed flagfile, an unknown flag) prints one line `<tool>: error: <message>` to stderr and
exits with status 2, without a traceback. Set QFFS_DEBUG=1 to get the traceback anyway.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence

from absl import app, flags, logging

from qffs_tf.errors import QFFSError

__all__ = ["run", "fail", "quiet_tensorflow", "validate_flagfiles", "UsageError"]

EXIT_USAGE = 2
_HELP_FLAGS = {"help", "helpshort", "helpfull", "helpxml", "?", "h"}


class UsageError(QFFSError):
    """A bad command line (flag value, flagfile, positional argument)."""


def tool_name() -> str:
    return os.path.basename(sys.argv[0]) or "qffs_tf"


def fail(message: str) -> None:
    """Print `<tool>: error: <message>` (one line) to stderr and exit with status 2."""
    one_line = " ".join(str(message).split())
    sys.stderr.write(f"{tool_name()}: error: {one_line}\n")
    sys.stderr.flush()
    sys.exit(EXIT_USAGE)


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """Import TensorFlow with its C++ start-up messages silenced.

    TF_CPP_MIN_LOG_LEVEL does not reach the messages TensorFlow prints before its logging is
    initialised (oneDNN, CUDA), so stderr is pointed at /dev/null while TensorFlow loads.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
                # TF's Python INFO messages (checkpoint sharding...) are noise for a user.
                std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _flagfile_args(argv: Sequence[str]) -> Iterator[str]:
    it = iter(argv)
    for arg in it:
        if arg == "--":
            return
        for prefix in ("--flagfile=", "-flagfile="):
            if arg.startswith(prefix):
                yield arg[len(prefix) :]
        if arg in ("--flagfile", "-flagfile"):
            value = next(it, None)
            if value is None:
                raise UsageError("--flagfile needs a file name: --flagfile=path/to/file.cfg")
            yield value


def validate_flagfiles(argv: Sequence[str], _seen: frozenset[str] = frozenset()) -> None:
    """Check every --flagfile (recursively): it exists and each line is a flag or a comment.

    absl silently ignores a line that does not start with '-', so `epochs=3` would be dropped
    without a word; here it is an error that names the file and line.
    """
    for name in _flagfile_args(argv):
        path = os.path.expanduser(name)
        if path in _seen:
            raise UsageError(f"flagfile {name!r} includes itself (directly or indirectly).")
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise UsageError(f"cannot read flagfile {name!r}: {e.strerror or e}.") from None
        flag_lines = []
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#") or line.startswith("//"):
                continue
            if not line.startswith("-"):
                raise UsageError(
                    f"{name}:{number}: malformed line {line!r}: every line of a flagfile must "
                    "be a flag such as --name=value (comments start with #)."
                )
            flag_lines.append(line)
        validate_flagfiles(flag_lines, _seen | {path})


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        validate_flagfiles(argv[1:])
        rest = flags.FLAGS(argv)
    except SystemExit as e:
        # absl prints --help/--helpshort/--helpfull and exits 1; asking for help is a success.
        asked = any(arg.lstrip("-").split("=")[0] in _HELP_FLAGS for arg in argv[1:])
        sys.exit(0 if asked and e.code == 1 else e.code)
    except UsageError as e:
        fail(str(e))
    except flags.Error as e:
        fail(f"{e} (see --helpfull)")
    if len(rest) > 1:
        fail(f"unexpected argument(s) {' '.join(rest[1:])!r}: this tool takes only --flags.")
    return rest


def _not_tensorflow_info(record: std_logging.LogRecord) -> bool:
    """Drop TensorFlow's own INFO records logged through absl (checkpoint sharding...)."""
    internal = f"{os.sep}tensorflow{os.sep}" in record.pathname
    return record.levelno >= std_logging.WARNING or not internal


def run(main: Callable[[list[str]], int | None]) -> None:
    """Run `main(argv)` as an absl app; user errors become a one-line message and exit 2."""
    logging.get_absl_logger().addFilter(_not_tensorflow_info)

    def guarded(argv: list[str]) -> int | None:
        try:
            return main(argv)
        except (QFFSError, ValueError, FileNotFoundError) as e:
            if os.environ.get("QFFS_DEBUG"):
                traceback.print_exc()
            logging.debug("user error", exc_info=True)
            fail(str(e) or type(e).__name__)
        except KeyboardInterrupt:
            sys.stderr.write(f"{tool_name()}: interrupted\n")
            sys.exit(130)
        return None

    app.run(guarded, flags_parser=_parse_flags)
