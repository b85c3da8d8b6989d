"""Safe outputs: folders appear complete or not at all, and we only ever replace what we wrote.

Every command that writes a folder builds it as a hidden temporary sibling and renames it into
place (``replace_dir``), so an interrupted command never leaves a complete-looking output and a
failed one never destroys the previous good one. ``--overwrite`` / ``--force`` replace an existing
folder only when it carries the marker file of something this tool writes (``KINDS``) and say what
they replaced; an ordinary folder of the user's is refused, whatever the flag.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .errors import OutputError


@dataclass(frozen=True)
class OutputKind:
    """Something this tool writes, recognised by a marker file inside it."""

    name: str  # what the messages call it, with its article ("a bundle")
    marker: str  # file inside the folder that only we write
    keys: tuple[str, ...] = ()  # when the marker is JSON: keys it must hold (a foreign manifest.json is not ours)

    def owns(self, folder: Path) -> bool:
        marker = folder / self.marker
        if not marker.is_file():
            return False
        if not self.keys:
            return True
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and all(k in data for k in self.keys)


# The marker names are also constants of the modules that write them; tests/test_bad_inputs.py ties them.
BUNDLE = OutputKind("a bundle", "manifest.json", keys=("format_version", "files"))
FAILED_BUNDLE = OutputKind("the remains of a failed export", "EXPORT_FAILED.txt")
FAILED_VALIDATION = OutputKind("the remains of a failed export", "validation.json", keys=("target", "failures"))
STUDENT = OutputKind("a student U-Net folder", "bksdm_edge.json", keys=("teacher",))
DISTILL_RUN = OutputKind("a distillation run folder", "run_config.json")
EVAL_RUN = OutputKind("an eval folder", "eval_config.json")
BENCH_RUN = OutputKind("a benchmark run folder", "results.json", keys=("rows",))
LATENT_CACHE = OutputKind("a latent cache", "cache.json", keys=("format", "num_rows"))
PLAN_SENSITIVITY = OutputKind("a plan-sensitivity result", "sensitivity.json", keys=("kind",))
PLAN_SEARCH = OutputKind("a plan-search result", "search.json")
PLAN_SEARCH_STARTED = OutputKind("a plan search that stopped after its sensitivity run", "sensitivity/sensitivity.json",
                                 keys=("kind",))
KINDS = (BUNDLE, FAILED_BUNDLE, FAILED_VALIDATION, STUDENT, DISTILL_RUN, EVAL_RUN, BENCH_RUN, LATENT_CACHE,
         PLAN_SENSITIVITY, PLAN_SEARCH, PLAN_SEARCH_STARTED)


def kind_of(folder: Path, kinds: Sequence[OutputKind] = KINDS) -> OutputKind | None:
    """Which of ``kinds`` wrote ``folder`` (None: not ours, or not a folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return next((k for k in kinds if k.owns(folder)), None)


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def claim(out: str | Path, kinds: Sequence[OutputKind], *, replace: bool, flag: str, option: str) -> str | None:
    """Decide, before any work, whether ``out`` may be written.

    Free (absent, or an empty folder): returns None. An existing folder of one of ``kinds`` with
    ``replace``: returns a description of what will be replaced. Anything else raises ``OutputError``:
    a file, a folder of ours without ``replace`` (the message names ``option``), or a folder we did
    not write (never replaced, whatever the flags).
    """
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return None
    if not out.is_dir() or out.is_symlink():
        raise OutputError(f"{flag} {out} exists and is not a folder; choose another {flag}")
    if is_empty_dir(out):
        return None
    kind = kind_of(out, kinds)
    if kind is None:
        markers = ", ".join(dict.fromkeys(k.marker for k in kinds))
        raise OutputError(
            f"{flag} {out} is an existing folder that bksdm-edge did not write (it has no {markers}); bksdm-edge "
            f"never writes into or replaces such a folder: choose a new {flag}, or move that folder away")
    if not replace:
        raise OutputError(f"{flag} {out} already holds {kind.name}; pass {option} to replace it, or choose another {flag}")
    return f"{kind.name} {out}"


def replace_dir(new: Path, out: Path) -> bool:
    """Move the finished folder ``new`` to ``out``; an existing ``out`` is moved aside first and deleted last.

    There is never a moment when ``out`` holds a mix of old and new files; only between the two
    renames is there no ``out`` at all. Returns True when something was replaced.
    """
    new, out = Path(new), Path(out)
    if not out.exists():
        os.rename(new, out)
        return False
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / out.name)  # rename within the parent folder: atomic, no copying
    os.rename(new, out)
    shutil.rmtree(old, ignore_errors=True)
    return True


def temp_sibling(out: Path, tag: str = "tmp") -> Path:
    """A new hidden folder next to ``out`` (same file system, so the final rename is atomic).

    Its name carries our process id; temporary siblings of ``out`` left by a process that no longer runs
    (killed during a write) are deleted first, so a ``kill -9`` leaves no lasting litter.
    """
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.{tag}-"
    for stale in out.parent.glob(prefix + "*"):
        pid = stale.name[len(prefix):].split("-", 1)[0]
        if stale.is_dir() and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=out.parent))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def atomic_dir(out: str | Path, *, replaced: str | None = None, log: Callable[[str], None] | None = None
               ) -> Iterator[Path]:
    """Write a folder atomically: yields a temporary sibling; on success it becomes ``out``.

    On an exception the temporary folder is deleted and ``out`` is untouched. ``replaced`` (from
    ``claim``) is reported through ``log`` when an existing folder was replaced.
    """
    out = Path(out).absolute()
    tmp = temp_sibling(out)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)
    if replaced and log:
        log(f"replaced {replaced}")


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write a file so that readers see the old content or the new, never a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def user_cache_dir() -> Path:
    """Where this tool keeps what it can rebuild (benchmark artifacts, measured run-time choices):
    ``$XDG_CACHE_HOME/bksdm-edge``, by default ``~/.cache/bksdm-edge``. Read at call time, so setting
    ``XDG_CACHE_HOME`` moves it (tests do)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bksdm-edge"


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``write_bytes_atomic`` for UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
