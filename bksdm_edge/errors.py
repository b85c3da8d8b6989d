"""User-facing errors and exit codes: the CLI prints these as one line, without a traceback.

Exit codes of every entry point (``bksdm-edge``, ``export/to_*.py``, ``benchmarks/run.py``):

====  ==========================================================================================
0     success
1     an unexpected error (a bug, or a dependency failing in a way we do not know): a short
      message and "run with --debug for the traceback"
2     bad input, or an expected failure around it: a wrong argument, a missing / unreadable /
      corrupt file, an output that cannot be written or that we refuse to replace, a job that
      would not fit in memory
3     an exported model failed its validation against PyTorch (the bundle is left as OUT.failed)
130   interrupted (Ctrl-C)
====  ==========================================================================================

``describe(exc)`` is the one place that turns an exception into ``(message, exit code)``; the
top-level handler (``bksdm_edge.cli.run_entry_point``) prints it.
"""

from __future__ import annotations

import os

EXIT_UNEXPECTED = 1
EXIT_BAD_INPUT = 2
EXIT_VALIDATION = 3
EXIT_INTERRUPTED = 130


class BksdmError(Exception):
    """Base class of errors whose message tells the user what went wrong and what to do."""

    exit_code = EXIT_BAD_INPUT


class InputError(BksdmError, ValueError):
    """A command-line value, or a file it names, that cannot be used; the message names it and the fix."""


class OutputError(BksdmError):
    """An output path that cannot be written, or an existing folder we refuse to replace."""


class ResourceError(BksdmError):
    """A job refused up front because it would not fit (memory, disk)."""


class ValidationFailed(BksdmError):
    """An exported model did not match PyTorch; the message lists every failed check."""

    exit_code = EXIT_VALIDATION


class BksdmWarning(UserWarning):
    """Warnings of ours: always shown on the console, even where dependency warnings are hidden."""


def first_line(err: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an error message, shortened to ``limit`` characters."""
    line = next((s.strip() for s in str(err).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _path_of(exc: OSError) -> str:
    names = [n for n in (exc.filename, exc.filename2) if n]
    return " -> ".join(os.fsdecode(n) for n in names)


def _os_error(exc: OSError) -> str | None:
    path = _path_of(exc)
    what = f"{path}: " if path else ""
    if isinstance(exc, FileNotFoundError):
        return f"{what}no such file or folder; check the path"
    if isinstance(exc, PermissionError):
        return f"{what}permission denied; choose a path you can read/write, or fix its permissions"
    if isinstance(exc, IsADirectoryError):
        return f"{what}is a folder where a file was expected; pass a file path"
    if isinstance(exc, NotADirectoryError):
        return f"{what}a part of this path is a file, not a folder; choose another path"
    if isinstance(exc, FileExistsError):
        return f"{what}already exists; choose another path"
    import errno

    if exc.errno == errno.ENOSPC:
        return f"{what}no space left on the device; free some disk space or write elsewhere"
    if exc.errno == errno.EROFS:
        return f"{what}the file system is read-only; write elsewhere"
    if path:
        return f"{what}{exc.strerror or first_line(exc)}"
    return None


def describe(exc: BaseException) -> tuple[str, int]:
    """``(one-line message, exit code)`` for an exception; unknown ones get exit code 1.

    Expected failures: our ``BksdmError`` classes, file-system errors (missing, unreadable,
    read-only, disk full), corrupt weight files (safetensors), and running out of memory.
    """
    if isinstance(exc, BksdmError):
        return str(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError
        return ("out of memory: " + (first_line(exc) or "the job did not fit") +
                "; use a smaller size/batch, close other programs, or run on a machine with more memory"), \
            EXIT_BAD_INPUT
    if type(exc).__name__ == "SafetensorError":  # safetensors' Rust error: a truncated or corrupt file
        return (f"a .safetensors weight file is corrupt or truncated ({first_line(exc)}); "
                "re-create or re-download it"), EXIT_BAD_INPUT
    if isinstance(exc, OSError):
        message = _os_error(exc)
        if message:
            return message, EXIT_BAD_INPUT
    return f"unexpected {type(exc).__name__}: {first_line(exc) or '(no message)'}", EXIT_UNEXPECTED
