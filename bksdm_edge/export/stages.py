"""Export stages: the console says which one is running, the bundle records what each one cost.

An export of a full-size pipeline runs for minutes in stages of very different cost (recording
PyTorch trajectories, tracing, calibrating, quantizing, validating). ``export_bundle`` opens a
``StageLog``; code anywhere below it (the format back-ends included) marks its work with::

    with stage("calibrate", component="unet", total=len(samples)) as s:
        for sample in samples:
            ...
            s.update()

which prints the stage on stderr as it starts (a progress bar when ``total`` is given) and records
its wall time and the peak RSS while it ran (Linux: the kernel's high-water mark, restarted at every
stage boundary, so each stage gets its own exact peak). Stages nest: a back-end's "calibrate" inside
the pipeline's "convert" is recorded with ``depth`` 1. Outside a ``StageLog`` (a back-end called
directly, as unit tests do) ``stage`` does nothing. The log is a context variable, not an argument,
so the back-end ``convert`` contract (base.py) stays the same for every format.
"""

from __future__ import annotations

import contextlib
import contextvars
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Iterator

_CURRENT: contextvars.ContextVar["StageLog | None"] = contextvars.ContextVar("bksdm_export_stage_log", default=None)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since it began or since the last ``reset_peak_rss`` (Linux VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # never reset; Linux KiB, macOS bytes
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_peak_rss() -> None:
    """Restart the peak-RSS count from the current RSS (Linux: 5 to /proc/self/clear_refs; else a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


@dataclass
class StageRecord:
    """One finished stage: what ran, for how long, and the process's peak RSS while it ran.

    Where the kernel's peak cannot be restarted (not Linux) ``peak_rss_bytes`` is the process's
    peak since it began.
    """

    stage: str
    component: str | None
    seconds: float
    cpu_seconds: float  # user + system time of all this process's threads (comparable on a busy machine)
    peak_rss_bytes: int
    detail: str = ""
    depth: int = 0  # 1 = a sub-stage of the enclosing stage (e.g. "calibrate" inside "convert")

    def to_json(self) -> dict:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()
                if v not in ("", None) and not (k == "depth" and v == 0)}


class _Progress:
    """What ``stage`` yields: ``update(n)`` advances its bar (a no-op without one)."""

    def __init__(self, bar=None):
        self._bar = bar

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)


class StageLog:
    """Records the stages run inside ``with StageLog(...)``; shows them on stderr when ``show``."""

    def __init__(self, show: bool = True):
        self.show = show
        self.records: list[StageRecord] = []
        self._open: list[list[int]] = []  # one [peak] cell per open stage, innermost last
        self._peak = 0
        self._token = None
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()

    def __enter__(self) -> "StageLog":
        self._token = _CURRENT.set(self)
        self._peak = peak_rss_bytes()
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self._fold()
        _CURRENT.reset(self._token)

    @property
    def total_seconds(self) -> float:
        return time.perf_counter() - self._t0

    @property
    def peak_rss_bytes(self) -> int:
        """The peak RSS of the whole export so far."""
        return max(self._peak, peak_rss_bytes())

    def to_json(self) -> dict:
        return {"total_seconds": round(self.total_seconds, 1),
                "total_cpu_seconds": round(time.process_time() - self._cpu0, 1), "peak_rss_bytes": self.peak_rss_bytes,
                "stages": [r.to_json() for r in self.records]}

    def _fold(self) -> None:
        """Credit the peak since the last boundary to every open stage and the export, then restart it."""
        peak = peak_rss_bytes()
        self._peak = max(self._peak, peak)
        for cell in self._open:
            cell[0] = max(cell[0], peak)
        reset_peak_rss()

    @contextlib.contextmanager
    def stage(self, name: str, component: str | None = None, *, total: int | None = None,
              detail: str = "", show: bool = True) -> Iterator[_Progress]:
        depth = len(self._open)
        label = "  " * depth + (f"{component}: {name}" if component else name) + (f" ({detail})" if detail else "")
        bar = None
        show = self.show and show
        if show:
            from tqdm.auto import tqdm

            if total:
                bar = tqdm(total=total, desc=label, leave=False, file=sys.stderr, dynamic_ncols=True)
            else:
                print(f"{label} ...", file=sys.stderr, flush=True)
        self._fold()
        cell = [0]
        self._open.append(cell)
        t0, cpu0 = time.perf_counter(), time.process_time()
        failed = True
        try:
            yield _Progress(bar)
            failed = False
        finally:
            seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            self._fold()
            self._open.pop()
            if bar is not None:
                bar.close()
            self.records.append(StageRecord(name, component, seconds, cpu, cell[0], detail, depth))
            if show and not failed:  # a failed stage leaves the console to the error message
                print(f"{label}: {seconds:.1f} s (cpu {cpu:.1f} s), peak {cell[0] / 2**30:.1f} GiB", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stage(name: str, component: str | None = None, *, total: int | None = None,
          detail: str = "", show: bool = True) -> Iterator[_Progress]:
    """Mark a stage of the current export (no-op outside a ``StageLog``); ``show=False`` records it without
    a console line (loading, whose failures must reach the console as one error line)."""
    log = _CURRENT.get()
    if log is None:
        yield _Progress()
        return
    with log.stage(name, component, total=total, detail=detail, show=show) as progress:
        yield progress
