"""Our output on the console, dependencies' chatter out of the way.

The libraries we drive print a lot that is not for our users: import-time notices (torchao's
``Failed to load ..._C_mxfp8.so``, transformers' ``... requires torchvision``), FutureWarnings
(``copyreg``), tracer warnings, progress bars of their own (ai-edge-quantizer, coremltools' MIL
passes) interleaving ours, and C++ log lines (TensorFlow/LiteRT/absl ``I0000 ...``,
``INFO: Created TensorFlow Lite XNNPACK delegate``) written straight to file descriptor 2.

Every entry point runs its command inside ``quiet_console()`` (unless ``--verbose``):

1. File descriptor 2 -- and with it ``sys.stderr``, Python warnings, logging handlers, tqdm bars
   and C/C++ writes of every dependency -- is pointed at a log file.
2. Our own progress bars and messages write to ``stream()``: a duplicate of the real console.
3. Our warnings (``BksdmWarning``, or warnings raised from the ``bksdm_edge`` package) are shown
   on the console; other warnings follow fd 2 into the log.

Nothing is filtered by message text, so nothing of ours can be hidden by accident and nothing a
dependency adds tomorrow leaks through. The log is deleted when the command ends normally and
kept (its path printed) when it fails unexpectedly. Everything is restored on exit, so calling
an entry point in-process (tests) leaves no trace.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import IO, Iterator

from .errors import BksdmWarning

_PACKAGE_DIR = Path(__file__).resolve().parent
_console: IO[str] | None = None


def stream() -> IO[str]:
    """Where our progress bars and messages go: the real console (stderr), also in quiet mode."""
    return _console if _console is not None else sys.stderr


def notice(message: str) -> None:
    """Print one line of ours on the console (stderr), e.g. what ``--overwrite`` replaced."""
    print(message, file=stream(), flush=True)


def _is_ours(category: type, filename: str) -> bool:
    if issubclass(category, BksdmWarning):
        return True
    try:
        return Path(filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False


class QuietConsole:
    """One ``quiet_console()`` block: ``log_path`` holds the dependencies' output; set ``keep_log``."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.keep_log = False

    def has_output(self) -> bool:
        try:
            return self.log_path.stat().st_size > 0
        except OSError:
            return False


@contextlib.contextmanager
def quiet_console(enabled: bool = True) -> Iterator[QuietConsole | None]:
    """Send dependencies' console output to a log file for the block (see the module docstring).

    Yields the ``QuietConsole``, or None when ``enabled`` is False (``--verbose``) or when
    already inside a quiet block.
    """
    global _console
    if not enabled or _console is not None:
        yield None
        return
    fd, name = tempfile.mkstemp(prefix="bksdm-edge-", suffix=".log")
    state = QuietConsole(Path(name))
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    saved_fd = os.dup(2)
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    console = os.fdopen(os.dup(2), "w", buffering=1, encoding=encoding, errors="backslashreplace")
    old_showwarning = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if _is_ours(category, filename):
            console.write(warnings.formatwarning(message, category, filename, lineno, line))
        else:
            old_showwarning(message, category, filename, lineno, file, line)

    os.dup2(fd, 2)
    os.close(fd)
    _console = console
    warnings.showwarning = showwarning
    # A crash inside a native library (segfault, abort) is still reported on the console; what the library printed
    # before it stays in the log (/tmp/bksdm-edge-*.log), which is not deleted then.
    faulthandler_was_on = faulthandler.is_enabled()
    faulthandler.enable(file=console)
    try:
        yield state
    finally:
        if faulthandler_was_on:
            faulthandler.enable(file=sys.stderr)
        else:
            faulthandler.disable()
        warnings.showwarning = old_showwarning
        _console = None
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        with contextlib.suppress(Exception):
            console.close()
        if not state.keep_log:
            with contextlib.suppress(OSError):
                state.log_path.unlink()
