"""The command-line tools' shared plumbing: flag parsing, one error boundary, quiet start-up.

Every tool (`qffs_tf.tools.*`, run as ``bin/<tool>``, ``qffs-<tool>`` or
``python -m qffs_tf.tools.<tool>``) calls `run`. Whatever goes wrong ends in one line on
stderr, never a traceback:

- a failure the user can fix (a `QFFSError`, a bad flag or flagfile, a file that cannot be
  read or written, a corrupt TensorFlow file, an overflowing number) prints
  ``<tool>: error: <what, which file or flag, and the fix>`` and exits with status 2;
- anything else is a bug: ``<tool>: internal error: <type>: <message> ...`` and status 1;
- Ctrl-C prints ``<tool>: interrupted`` and exits with status 130.

Set ``QFFS_DEBUG=1`` to also get the traceback.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import math
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from absl import app, flags, logging

from qffs_tf.errors import ModelNotFoundError, QFFSError, UnsupportedModelError, UsageError

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "UsageError",
    "describe_error",
    "fail",
    "load_model",
    "muted_stderr",
    "quiet_tensorflow",
    "run",
    "tool_name",
    "validate_flagfiles",
]

EXIT_ERROR = 2
EXIT_USAGE = EXIT_ERROR  # the name earlier tools used
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
_HELP_FLAGS = {"help", "helpshort", "helpfull", "helpxml", "?", "h"}
_tool: str | None = None
_defined: set[Callable[[], None]] = set()


def tool_name() -> str:
    """The name the running tool prints before its messages.

    Returns
    -------
    str
        ``convert`` for ``bin/convert`` and ``python -m qffs_tf.tools.convert``,
        ``qffs-convert`` for the console script.

    Example
    -------
    >>> from qffs_tf import cli
    >>> cli.tool_name()  # started as /venv/bin/qffs-convert  # doctest: +SKIP
    'qffs-convert'
    """
    if _tool:
        return _tool
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name.removesuffix(".py") or "qffs_tf"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``<tool>: error: <message>`` as one line to stderr and exit.

    Parameters
    ----------
    message : str
        What went wrong and how to fix it; newlines are folded into spaces.
    code : int, default 2
        Exit status.

    Raises
    ------
    SystemExit
        Always, with `code`.

    Example
    -------
    >>> from qffs_tf import cli
    >>> cli.fail("--timesteps=0: use a whole number >= 1.")  # doctest: +SKIP
    """
    sys.stderr.write(f"{tool_name()}: error: {_one_line(message)}\n")
    sys.stderr.flush()
    sys.exit(code)


@contextlib.contextmanager
def muted_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration of the block.

    TensorFlow prints start-up messages (oneDNN, CUDA) from C++ before its logging is set up,
    so neither TF_CPP_MIN_LOG_LEVEL nor Python's logging can silence them. An exception
    raised in the block is reported after stderr is restored.

    Example
    -------
    >>> from qffs_tf import cli
    >>> with cli.muted_stderr():
    ...     import tensorflow  # doctest: +SKIP
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """Import TensorFlow (inside the block) with its start-up noise silenced.

    Forces tf_keras (``TF_USE_LEGACY_KERAS=1``), mutes stderr while TensorFlow loads, and
    raises the level of TensorFlow's Python logger to WARNING (its INFO messages, such as
    checkpoint sharding, are noise for a user of the tools).

    Example
    -------
    >>> from qffs_tf import cli
    >>> with cli.quiet_tensorflow():
    ...     from qffs_tf import simulation  # doctest: +SKIP
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    with muted_stderr():
        yield
        std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)


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


def _read_flagfile(name: str, path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise UsageError(
            f"flagfile {name!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
            f"{e.start}): save it as UTF-8 text (a binary file cannot be a flagfile)."
        ) from None
    except OSError as e:
        raise UsageError(f"cannot read flagfile {name!r}: {e.strerror or e}.") from None


def validate_flagfiles(argv: Sequence[str], _seen: frozenset[str] = frozenset()) -> None:
    """Check every ``--flagfile`` (recursively): readable UTF-8 text, each line a flag.

    absl silently ignores a line that does not start with '-', so ``epochs=3`` would be
    dropped without a word; here it is an error that names the file and line.

    Parameters
    ----------
    argv : sequence of str
        Command-line arguments (without the program name); only ``--flagfile`` values are
        read. Arguments after ``--`` are not flags and are skipped.

    Raises
    ------
    UsageError
        A flagfile is missing, unreadable, not UTF-8 text, includes itself, or has a line that
        is neither a flag nor a comment.

    Example
    -------
    >>> from qffs_tf import cli
    >>> cli.validate_flagfiles(["--seed=1"])  # no flagfile: nothing to check
    """
    for name in _flagfile_args(argv):
        path = os.path.expanduser(name)
        if path in _seen:
            raise UsageError(f"flagfile {name!r} includes itself (directly or indirectly).")
        flag_lines = []
        for number, raw in enumerate(_read_flagfile(name, path), start=1):
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


# --- The error boundary -------------------------------------------------------------------


def _path_flags() -> list[tuple[str, str]]:
    """(name, value) of every string flag that is set (any of them may name a path)."""
    return [
        (name, flags.FLAGS[name].value)
        for name in flags.FLAGS
        if name == flags.FLAGS[name].name
        and isinstance(flags.FLAGS[name].value, str)
        and flags.FLAGS[name].value
    ]


def _flag_hint(filename: Any) -> str:
    """' (--run_dir=runs/x)' when `filename` is a flag's path or lies under it, else ''."""
    if not isinstance(filename, str | bytes | os.PathLike) or not flags.FLAGS.is_parsed():
        return ""
    target = os.path.abspath(os.fsdecode(filename))
    best = None
    for name, value in _path_flags():
        root = os.path.abspath(os.path.expanduser(value))
        if (target == root or target.startswith(root.rstrip(os.sep) + os.sep)) and (
            best is None or len(root) > len(best[2])
        ):
            best = (name, value, root)
    return f" (--{best[0]}={best[1]})" if best else ""


def _file_part_of(path: str) -> str | None:
    """The first existing ancestor of `path` that is a file (why a folder cannot be made)."""
    parts = os.path.abspath(path).split(os.sep)
    for end in range(2, len(parts) + 1):
        prefix = os.sep.join(parts[:end])
        if os.path.exists(prefix) and not os.path.isdir(prefix):
            return prefix
    return None


def _os_error_message(error: OSError) -> str:
    name = error.filename
    if name is None:  # raised by our own code with a message of its own
        return str(error) or type(error).__name__
    name = os.fsdecode(name)
    hint = _flag_hint(name)
    reason = error.strerror or str(error)
    if isinstance(error, PermissionError):
        return (
            f"permission denied for '{name}'{hint}: make it readable/writable for you, or "
            "choose another location."
        )
    if isinstance(error, FileExistsError):
        if os.path.exists(name) and not os.path.isdir(name):
            return (
                f"'{name}'{hint} is a file, but a folder is needed there: pass another path "
                "or move the file away."
            )
        return f"'{name}'{hint} already exists: pass another path or remove it."
    if isinstance(error, NotADirectoryError):
        blocker = _file_part_of(name)
        where = f"'{blocker}' is a file, not a folder" if blocker else "a part of it is a file"
        return f"cannot use '{name}'{hint}: {where}. Pass another path or move the file away."
    if isinstance(error, IsADirectoryError):
        return f"'{name}'{hint} is a folder, but a file is needed: pass the path of a file."
    if isinstance(error, FileNotFoundError):
        return f"no such file or folder: '{name}'{hint}. Check the path."
    return f"cannot use '{name}'{hint}: {reason}. Check the path, the disk and its free space."


def _non_finite_flags() -> list[str]:
    if not flags.FLAGS.is_parsed():
        return []
    return [
        f"--{name}={flags.FLAGS[name].value}"
        for name in flags.FLAGS
        if name == flags.FLAGS[name].name
        and isinstance(flags.FLAGS[name].value, float)
        and not math.isfinite(flags.FLAGS[name].value)
    ]


def _tensorflow_error(error: BaseException) -> tuple[int, str] | None:
    tf = sys.modules.get("tensorflow")
    errors = getattr(tf, "errors", None)
    if errors is None or not isinstance(error, errors.OpError):
        return None
    detail = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", error.message or str(error))
    detail = _one_line(re.sub(r"\s*\[Op:\w+\]\s*$", "", detail))[:400]
    kind = type(error).__name__
    if isinstance(error, errors.ResourceExhaustedError):
        fix = " Use a smaller --batch_size." if "batch_size" in flags.FLAGS else ""
        return EXIT_ERROR, f"out of memory ({kind}: {detail}).{fix}"
    if isinstance(error, errors.PermissionDeniedError | errors.NotFoundError):
        return EXIT_ERROR, f"TensorFlow cannot open a file ({kind}: {detail}). Check the path."
    if type(error) is errors.OpError or isinstance(
        error, errors.DataLossError | errors.OutOfRangeError | errors.FailedPreconditionError
    ):
        return EXIT_ERROR, (
            f"TensorFlow cannot read a file ({kind}: {detail}). It is truncated or corrupt: "
            "delete it (for a checkpoint, all of its files) and rerun, or restore it from a copy."
        )
    if isinstance(error, errors.UnavailableError | errors.DeadlineExceededError):
        return EXIT_ERROR, (
            f"a TensorFlow peer or device did not answer ({kind}: {detail}). Check TF_CONFIG, "
            "--tpu and the network, then rerun."
        )
    return None


def describe_error(error: BaseException) -> tuple[int, str]:
    """The exit status and one-line message the tools report for `error`.

    Parameters
    ----------
    error : BaseException
        What a tool's main function raised.

    Returns
    -------
    (int, str)
        ``(2, message)`` for a failure the user can fix; ``(1, message)`` for an internal
        error (a bug), whose message carries the exception type and asks for a rerun with
        ``QFFS_DEBUG=1``.

    Example
    -------
    >>> from qffs_tf import cli
    >>> cli.describe_error(PermissionError(13, "Permission denied", "/root/x.json"))
    (2, "permission denied for '/root/x.json': make it readable/writable for you, or choose another location.")
    >>> cli.describe_error(KeyError("logits"))[0]
    1
    """  # noqa: E501
    if isinstance(error, QFFSError):
        return EXIT_ERROR, str(error) or type(error).__name__
    if isinstance(error, UnicodeDecodeError):
        return EXIT_ERROR, (
            f"a file this tool reads is not UTF-8 text ({error.reason} at byte {error.start}): "
            "check the text files named by the flags (flagfiles, JSON files) and save them as "
            "UTF-8."
        )
    if isinstance(error, OSError):
        return EXIT_ERROR, _os_error_message(error)
    if isinstance(error, OverflowError):
        infinite = _non_finite_flags()
        fix = (
            f"{', '.join(infinite)} is not a finite number: pass a finite value."
            if infinite
            else "check the numeric flags for values that are far too large."
        )
        return EXIT_ERROR, f"a number is too large to compute with ({error}): {fix}"
    if isinstance(error, MemoryError):
        fix = " Use a smaller --batch_size." if "batch_size" in flags.FLAGS else ""
        return EXIT_ERROR, f"out of memory.{fix}"
    described = _tensorflow_error(error)
    if described:
        return described
    message = _one_line(str(error))[:400]
    return EXIT_INTERNAL, (
        f"{type(error).__name__}: {message} -- this is a bug in qffs_tf (please report it); "
        "rerun with QFFS_DEBUG=1 for the traceback."
    )


def _report(error: BaseException) -> NoReturn:
    if os.environ.get("QFFS_DEBUG"):
        traceback.print_exception(error)
    logging.debug("error", exc_info=error)
    code, message = describe_error(error)
    if code == EXIT_INTERNAL:
        sys.stderr.write(f"{tool_name()}: internal error: {_one_line(message)}\n")
        sys.stderr.flush()
        sys.exit(code)
    fail(message, code)


def _show_flags_in_help(module_name: str) -> None:
    """Make --help describe the tool when a shim or a console script started it.

    absl's --help lists the key flags of the main module (sys.argv[0]); a tool's flags are
    defined in `qffs_tf.tools.<tool>`, which is not the main module when ``bin/<tool>`` or
    ``qffs-<tool>`` starts it.
    """
    main = sys.argv[0] if sys.argv else ""
    if not main or main == module_name:
        return
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(main, flag)
    # absl's --help starts with the main module's docstring: show the tool's, not the shim's.
    tool, entry = sys.modules.get(module_name), sys.modules.get("__main__")
    if tool is not None and entry is not None and tool is not entry and tool.__doc__:
        entry.__doc__ = tool.__doc__


def run(
    main: Callable[[list[str]], int | None],
    argv: Sequence[str] | None = None,
    define_flags: Callable[[], None] | None = None,
) -> NoReturn:
    """Parse flags and run `main` as an absl app, inside the one error boundary.

    Parameters
    ----------
    main : callable
        ``main(argv) -> int | None``, called with the arguments left after flag parsing; its
        return value is the exit status (None: 0).
    argv : sequence of str, optional
        The full command line, program name first (default `sys.argv`).
    define_flags : callable, optional
        Defines the tool's flags on `absl.flags.FLAGS`; called once per process, before
        parsing (tools define their flags here rather than at import, so importing a tool
        module has no side effect).

    Raises
    ------
    SystemExit
        Always: 0 (or `main`'s status) on success, 2 for a failure the user can fix (one line
        ``<tool>: error: ...``), 1 for an internal error, 130 on Ctrl-C.

    Example
    -------
    >>> from absl import flags
    >>> from qffs_tf import cli
    >>> def define():
    ...     flags.DEFINE_integer("steps", 1, "How many steps.")
    >>> def main(argv):
    ...     print(flags.FLAGS.steps)
    >>> cli.run(main, ["demo", "--steps=3"], define_flags=define)  # doctest: +SKIP
    3
    """
    global _tool
    argv = list(sys.argv if argv is None else argv)
    if argv:
        _tool = os.path.basename(argv[0]).removesuffix(".py") or None
    if define_flags is not None and define_flags not in _defined:
        define_flags()
        _defined.add(define_flags)
        _show_flags_in_help(main.__module__)
    logging.get_absl_logger().addFilter(_not_tensorflow_info)
    # absl runs its init callbacks between flag parsing and main; TensorFlow registers one
    # that probes for GPUs and prints CUDA errors from C++. stderr is muted for that span.
    init = contextlib.ExitStack()

    def parse(args: list[str]) -> list[str]:
        rest = _parse_flags(args)
        init.enter_context(muted_stderr())
        return rest

    def guarded(args: list[str]) -> int | None:
        init.close()
        try:
            return main(args)
        except KeyboardInterrupt:
            sys.stderr.write(f"{tool_name()}: interrupted\n")
            sys.stderr.flush()
            sys.exit(EXIT_INTERRUPTED)
        except Exception as e:  # the boundary: every failure becomes one line
            _report(e)

    flags.FLAGS.unparse_flags()  # a second run in one process starts from the defaults too
    try:
        app.run(guarded, argv=argv, flags_parser=parse)
    except KeyboardInterrupt:  # during flag parsing or start-up
        init.close()
        sys.stderr.write(f"{tool_name()}: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    finally:
        init.close()


def load_model(path: str, what: str, flag: str, missing: str) -> Any:
    """Load the model a tool's flag names, refusing models the tools cannot take.

    Parameters
    ----------
    path : str
        The model file or SavedModel folder.
    what : str
        What the model is, for the messages: ``"QAT model"``, ``"SNN"``.
    flag : str
        The flag (or flags) that chose `path`, e.g. ``"--run_dir"``, for the messages.
    missing : str
        How to get the model when it does not exist, e.g.
        ``"train one first: bin/train --run_dir=runs/x"``.

    Returns
    -------
    tf_keras.Model

    Raises
    ------
    ModelNotFoundError
        Nothing at `path`; the message ends with `missing`.
    ModelLoadError
        The file cannot be read as a model.
    UnsupportedModelError
        The model has more than one input or output.

    Example
    -------
    >>> from qffs_tf import cli
    >>> path = "runs/x/qat_model.keras"
    >>> qat = cli.load_model(path, "QAT model", "--run_dir", "run bin/train")  # doctest: +SKIP
    """
    if not os.path.exists(path):
        blocker = _file_part_of(os.path.dirname(path))
        if blocker:
            missing = f"'{blocker}' is a file, not a folder; pass the folder of the run"
        raise ModelNotFoundError(f"No {what} at '{path}' ({flag}): {missing}.")
    from qffs_tf import serialization

    model = serialization.load_model(path)
    inputs, outputs = len(model.inputs), len(model.outputs)
    if inputs != 1 or outputs != 1:
        raise UnsupportedModelError(
            f"The {what} in '{path}' ({flag}) has {inputs} inputs and {outputs} outputs; "
            "qffs_tf takes classifiers with one image input and one logits output."
        )
    return model
