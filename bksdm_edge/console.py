"""Our output on the console, dependencies' chatter out of the way.

The libraries we drive print a lot that is not for our users: import-time notices (torchao's
``Failed to load ..._C_mxfp8.so``, transformers' ``... requires torchvision``), FutureWarnings
(``copyreg``), tracer warnings, progress bars of their own (ai-edge-quantizer, coremltools' MIL
passes) interleaving ours, and C++ log lines (TensorFlow/LiteRT/absl ``I0000 ...``,
``INFO: Created TensorFlow Lite XNNPACK delegate``) written straight to file descriptor 2.

Every entry point runs its command inside ``quiet_console()`` (unless ``--verbose``):

1. File descriptor 2 is pointed at a log file: C/C++ writes of every native library go there, and so
   does everything written to ``sys.__stderr__`` or to a stream captured before the block.
2. ``sys.stderr`` becomes a router that decides each write by who wrote it: the nearest calling frame
   that is neither the standard library nor tqdm (which only format and print for someone else) is
   looked up; code of this repository (the ``bksdm_edge`` package, ``export/``, ``benchmarks/``) goes
   to the real console, anything from an installed package goes to the log. So our progress bars and
   messages show wherever they are written from, while a dependency's print, logging record or
   progress bar does not -- whatever it says (nothing is filtered by text).
3. Warnings are sorted by category: ``BksdmWarning`` (ours) on the console, every other one in the log
   (a warning a library raises from C code names our line as its caller, so the caller cannot decide).
4. ``stream()`` is the console itself, for code that wants to name it.

The log is deleted when the command ends normally and kept (its path printed) when it fails
unexpectedly. A crash in native code is still reported on the console (faulthandler). Everything is
restored on exit, so calling an entry point in-process (tests) leaves no trace.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import io
import os
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path
from typing import IO, Iterator

from .errors import BksdmWarning

_REPO_DIR = Path(__file__).resolve().parents[1]  # the package, and export/ and benchmarks/ beside it
_STDLIB_DIR = Path(sysconfig.get_paths()["stdlib"]).resolve()
_HELPERS = ("tqdm",)  # installed packages that only write on behalf of their caller
_console: IO[str] | None = None


def stream() -> IO[str]:
    """Where our progress bars and messages go: the real console (stderr), also in quiet mode."""
    return _console if _console is not None else sys.stderr


def notice(message: str) -> None:
    """Print one line of ours on the console (stderr), e.g. what ``--overwrite`` replaced."""
    print(message, file=stream(), flush=True)


@functools.lru_cache(maxsize=4096)
def _owner(filename: str) -> bool | None:
    """True: our code; False: a dependency's; None: a helper that writes for its caller (keep looking)."""
    if filename.startswith("<"):  # <frozen ...>, <string>
        return None
    path = Path(filename).resolve()
    parts = path.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return None if parts[parts.index(marker) + 1:][:1] in [(h,) for h in _HELPERS] else False
    if path.is_relative_to(_REPO_DIR):
        return True
    if path.is_relative_to(_STDLIB_DIR):
        return None
    return False


class _Router(io.TextIOBase):
    """``sys.stderr`` in quiet mode: each write goes to the console or the log by the code that made it."""

    def __init__(self, console: IO[str], log: IO[str]):
        self._console, self._log = console, log

    def _target(self) -> IO[str]:
        frame = sys._getframe(2)
        while frame is not None:
            owner = _owner(frame.f_code.co_filename)
            if owner is not None:
                return self._console if owner else self._log
            frame = frame.f_back
        return self._log

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        for s in (self._console, self._log):
            with contextlib.suppress(Exception):
                s.flush()

    def fileno(self) -> int:
        return self._log.fileno()  # what a dependency hands to a child process or native code: the log

    def isatty(self) -> bool:
        return self._console.isatty()

    @property
    def encoding(self) -> str:
        return self._console.encoding

    def writable(self) -> bool:
        return True


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
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
    if _writes_to_fd2(sys.stderr):
        encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
        console = os.fdopen(os.dup(2), "w", buffering=1, encoding=encoding, errors="backslashreplace")
    else:  # sys.stderr was already replaced (a test's capture, an embedding program): our output keeps going there
        console = sys.stderr
    own_console = console is not sys.stderr
    os.dup2(fd, 2)
    os.close(fd)
    log = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    old_stderr, old_showwarning = sys.stderr, warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        # By category, not by caller: a warning raised in a library's C code shows our line as its caller.
        text = warnings.formatwarning(message, category, filename, lineno, line)
        (console if issubclass(category, BksdmWarning) else log).write(text)

    sys.stderr = _Router(console, log)
    warnings.showwarning = showwarning
    _console = console
    # A crash inside a native library (segfault, abort) is still reported on the console; what the library printed
    # before it stays in the log (/tmp/bksdm-edge-*.log), which is not deleted then.
    faulthandler_was_on = faulthandler.is_enabled()
    if own_console:
        faulthandler.enable(file=console)
    try:
        yield state
    finally:
        if own_console:
            faulthandler.disable()
        _console = None
        sys.stderr, warnings.showwarning = old_stderr, old_showwarning
        for s in (console, log):
            with contextlib.suppress(Exception):
                s.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        if own_console and faulthandler_was_on:
            faulthandler.enable(file=2)
        for s in (console, log) if own_console else (log,):
            with contextlib.suppress(Exception):
                s.close()
        if not state.keep_log:
            with contextlib.suppress(OSError):
                state.log_path.unlink()
