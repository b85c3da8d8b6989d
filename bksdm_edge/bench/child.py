"""Measured child processes: run a job in its own process and read its peak memory, time and log.

Every benchmark that measures memory runs the measured work in a fresh process, so the peak is that work's
alone and an out-of-memory kill costs one row, not the run. This module is the one way the project does it
(the bench harness's worker, ``benchmarks/coreml_conversion.py``, ``tflite_conversion.py``, ``train_bench.py``):

* ``run_child(argv)``: start a command in its own session, drain its output, sample the peak RSS of its
  process tree, kill the whole group on timeout or when the parent is stopped; returns a ``ChildResult``
  with the exit status, wall time, peak RSS, log tail and a one-line error.
* ``run_task(argv, task)`` / ``task_main(fn)``: the JSON protocol on top of it: the parent writes the task,
  the child runs ``fn(task)`` and writes ``{"ok": ..., **result, "peak_rss_mb": own peak}`` (any exception
  becomes ``ok: false`` with its message), the parent reads it back or builds the same shape from how the
  child died.
* ``own_peak_rss_mb()``: this process's peak RSS, exact (``VmHWM``); ``PeakRss``: the peak RSS of this
  process during one phase (a ``with`` block), sampled.

Why not ``ru_maxrss`` of ``wait4``: on Linux a child's maximum starts from the RSS of the parent that forked
it (the kernel carries the old address space's high-water mark across exec), so a parent that holds a model
inflates every child's number. ``VmHWM`` starts afresh at exec.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[2]  # the checkout holding bksdm_edge/ (for children's PYTHONPATH)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
LOG_TAIL_CHARS = 4000


def _vm_hwm_mb(pid: int | str = "self") -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _maxrss_mb(ru_maxrss: int) -> float:
    return ru_maxrss / 2**20 if sys.platform == "darwin" else ru_maxrss / 2**10  # macOS: bytes, Linux: KiB


def own_peak_rss_mb() -> float | None:
    """This process's own peak RSS in MB (Linux ``VmHWM``; elsewhere ``ru_maxrss``)."""
    peak = _vm_hwm_mb()
    if peak is not None:
        return peak
    try:
        import resource

        return _maxrss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except (ImportError, OSError):
        return None


def _rss_mb(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - gone, or psutil missing
        return None


class PeakRss:
    """Peak RSS of this process while a ``with`` block runs (sampled every ``interval_s``; MB).

    ``before_mb`` is the RSS on entry, ``peak_mb`` the highest RSS seen until exit (at least ``before_mb``).
    Use it for one phase of a job (a conversion after the model was built); ``own_peak_rss_mb`` is the whole
    process.
    """

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.before_mb: float | None = None
        self.peak_mb: float | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        now = _rss_mb(os.getpid())
        if now is not None:
            self.peak_mb = max(self.peak_mb or 0.0, now)

    def __enter__(self) -> "PeakRss":
        self.before_mb = _rss_mb(os.getpid())
        self.peak_mb = self.before_mb

        def loop():
            while not self._done.wait(self.interval_s):
                self._sample()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self._sample()


@dataclass(frozen=True)
class ChildResult:
    """How a child process ended: exit status, wall time, peak RSS (MB, its process tree) and its output."""

    returncode: int | None
    wall_s: float
    peak_rss_mb: float | None
    timed_out: bool
    output: str
    timeout_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.output[-chars:]

    def error(self) -> str | None:
        """None for a clean exit, else one line: timed out / killed by a signal / exit code and last line."""
        if self.timed_out:
            return f"timed out after {self.timeout_s:.0f} s"
        if self.returncode is not None and self.returncode < 0:
            sig = signal.Signals(-self.returncode).name
            return f"died with {sig}" + (" (killed: out of memory?)" if sig == "SIGKILL" else "")
        if self.returncode:
            last = self.output.strip().splitlines()[-1:] or ["no output"]
            return f"exited with {self.returncode}: {last[0][:500]}"
        return None


def _tree_peak_mb(pid: int) -> float | None:
    """The largest ``VmHWM`` among ``pid`` and its descendants (a wrapper like ``flock`` runs the real job)."""
    pids = [pid]
    try:
        import psutil

        pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - the process is gone, or psutil is missing
        pass
    peaks = [p for p in (_vm_hwm_mb(q) for q in pids) if p is not None]
    return max(peaks) if peaks else None


def child_env(threads: int | None = None, **extra: str) -> dict[str, str]:
    """The environment for a child: ours, this checkout first on PYTHONPATH, thread pools sized, ``extra`` set.

    Args:
        threads: sets OMP/MKL/OpenBLAS thread counts (read by those libraries at import) when given.
        extra: more variables (e.g. ``CUDA_VISIBLE_DEVICES=""``).
    """
    env = dict(os.environ)
    if threads:
        for var in THREAD_VARS:
            env[var] = str(threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def run_child(argv: Sequence[str], *, timeout_s: float | None = None, env: dict[str, str] | None = None,
              cwd: str | Path | None = None, poll_s: float = 0.05) -> ChildResult:
    """Run ``argv`` in a new session; return its exit, wall time, peak RSS and combined stdout/stderr.

    Args:
        argv: the command (e.g. ``[sys.executable, "-m", "bksdm_edge.bench.worker", ...]`` or a ``flock`` line).
        timeout_s: kill the child's whole process group after this many seconds (None: no limit).
        env: the child's environment (default: ours; see ``child_env``).
        cwd: its working directory.
        poll_s: how often the exit and the memory of its process tree are checked.
    Stopping the parent (Ctrl-C, SIGTERM turned into KeyboardInterrupt) kills the child's group and re-raises.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    # Drain output on a thread so a chatty child never blocks on a full pipe.
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read(65536), b"")), daemon=True)
    reader.start()
    status, rusage, timed_out, sampled = None, None, False, None
    try:
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = _tree_peak_mb(proc.pid)
            if peak is not None:
                sampled = max(sampled or 0.0, peak)
            if timeout_s is not None and time.perf_counter() - start > timeout_s:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(poll_s)
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=5)
    # A child that exits between two samples may have grown after the last one; ru_maxrss is the bound
    # from above (see the module docstring), used only when nothing was sampled.
    peak = sampled if sampled is not None else (_maxrss_mb(rusage.ru_maxrss) if rusage else None)
    return ChildResult(returncode=proc.returncode, wall_s=time.perf_counter() - start, peak_rss_mb=peak,
                       timed_out=timed_out, output=b"".join(chunks).decode(errors="replace"), timeout_s=timeout_s)


# ---------------------------------------------------------------------------------------------------------------
# The task protocol: JSON in, JSON out.


def run_task(argv: Sequence[str], task: dict[str, Any], *, timeout_s: float | None = None,
             env: dict[str, str] | None = None, cwd: str | Path | None = None) -> tuple[dict[str, Any], ChildResult]:
    """Run ``argv + [TASK.json, RESULT.json]`` (a child that calls ``task_main``) and read its result.

    Returns the child's result dict (``ok``, its fields, ``peak_rss_mb``, ``log_tail``) and the ``ChildResult``.
    When the child wrote nothing (killed, timed out, crashed before ``task_main``), the dict is
    ``{"ok": False, "error": <how it ended>}``. ``peak_rss_mb`` is the larger of the child's own reading and
    the peak sampled from outside.
    """
    with tempfile.TemporaryDirectory(prefix="bksdm-task-") as tmp:
        task_file, result_file = Path(tmp) / "task.json", Path(tmp) / "result.json"
        task_file.write_text(json.dumps(task, default=str))
        child = run_child([*argv, str(task_file), str(result_file)], timeout_s=timeout_s, env=env, cwd=cwd)
        if result_file.exists():
            result = json.loads(result_file.read_text())
        else:
            result = {"ok": False, "error": child.error() or "the child wrote no result"}
    result["log_tail"] = child.tail()
    # The larger of the child's own reading (exact at its end) and the sampled one: code that restarts the
    # kernel's high-water mark per stage (bksdm_edge.export.stages) leaves the child only its last stage's peak.
    readings = [p for p in (result.get("peak_rss_mb"), child.peak_rss_mb) if p is not None]
    result["peak_rss_mb"] = max(readings) if readings else None
    return result, child


def task_main(fn: Callable[[dict[str, Any]], dict[str, Any]], argv: Sequence[str]) -> int:
    """The child side of ``run_task``: ``argv`` is ``[TASK.json, RESULT.json]``; run ``fn(task)`` and write
    ``{"ok": True, **result}`` or ``{"ok": False, "error", "traceback"}``, plus ``peak_rss_mb``. Exit 0 or 1."""
    task = json.loads(Path(argv[0]).read_text())
    try:
        result = {"ok": True, **fn(task)}
    except BaseException as err:  # noqa: BLE001 - every failure becomes the result's error
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        result = {"ok": False, "error": last[:2000], "traceback": traceback.format_exc()[-8000:]}
    result["peak_rss_mb"] = own_peak_rss_mb()
    Path(argv[1]).write_text(json.dumps(result, default=str))
    return 0 if result["ok"] else 1
