"""Worker process: ``python -m bksdm_edge.bench.worker TASK.json RESULT.json``.

Each scenario's preparation (export) and measurement run in their own process (``child.run_task``),
so the row's peak resident memory is that process's own and a crash or an out-of-memory kill costs
one row, not the run.

Measurement protocol (one process, nothing else loaded before):
1. import the back-end's runtime, note the baseline RSS;
2. load the artifact (``load_s``); convert the inputs once;
   (``generate``: the whole text-to-image pipeline; one run = one image of ``steps`` steps)
3. first run = cold run (``first_run_s``; ``cold_s = load_s + first_run_s``);
4. ``warmup`` further untimed runs (their times are kept apart in ``warmup_s``);
5. ``repeats`` timed runs, each ended by a device synchronisation on CUDA.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from .child import THREAD_VARS, task_main


def _rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:
        return None


def measure(s, cache: Path) -> dict:
    from .backends import INPUTS_FILE, artifact_dir, get_backend, read_meta

    backend = get_backend(s.backend)
    adir = artifact_dir(cache, s, backend)
    meta = read_meta(adir)
    if meta is None:
        raise RuntimeError(f"no artifact in {adir}; it was not prepared")
    feeds = dict(np.load(adir / INPUTS_FILE))
    for module in backend.RUNTIME_MODULES:
        importlib.import_module(module)
    baseline = _rss_mb()
    cuda = s.device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()

    t0 = time.perf_counter()
    loaded = (backend.load_pipeline if s.component == "generate" else backend.load)(s, adir, meta)
    loaded.sync()
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mb()
    native = loaded.feed(feeds)

    splits: list[dict[str, float]] = []
    walls: list[float] = []

    def timed() -> float:
        start = time.perf_counter()
        loaded.run(native)
        loaded.sync()
        seconds = time.perf_counter() - start
        walls.append(seconds)
        if loaded.split is not None:
            splits.append({**loaded.split(), "total": seconds})
        return loaded.reported_s() if loaded.reported_s else seconds

    first = timed()
    warm = [timed() for _ in range(s.warmup)]
    splits.clear()  # the split of the timed runs only
    times = [timed() for _ in range(s.repeats)]
    out = {
        "load_s": load_s,
        "first_run_s": first,
        "cold_s": load_s + first,
        "warmup_s": warm,
        "times_s": times,
        "median_s": float(np.median(times)),
        "p90_s": float(np.percentile(times, 90)),
        "min_s": float(np.min(times)),
        "mean_s": float(np.mean(times)),
        "baseline_rss_mb": baseline,
        "rss_after_load_mb": rss_loaded,
        "rss_end_mb": _rss_mb(),
        "backend_info": loaded.info or {},
        **_split_columns(splits),
    }
    if loaded.reported_s:
        out["run_wall_s"] = walls
    if cuda:
        import torch

        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _split_columns(splits: list[dict[str, float]]) -> dict:
    """Median seconds per component over the timed runs, ``other`` (the rest) and each component's share."""
    if not splits:
        return {}
    seconds = {c: float(np.median([sp[c] for sp in splits])) for c in splits[0] if c != "total"}
    total = float(np.median([sp["total"] for sp in splits]))
    seconds["other"] = max(0.0, total - sum(seconds.values()))
    return {"component_s": seconds, **{f"{c}_share": seconds[c] / total for c in seconds if c != "other"}}


def run(task: dict) -> dict:
    """One task of the runner: ``prepare`` (export the artifact) or ``measure`` (time it)."""
    for module in task.get("plugins", []):
        importlib.import_module(module)
    from .scenario import Scenario

    s = Scenario(**task["scenario"])
    # Thread pools of numpy/MKL/OpenMP read these at import; set before the runtime loads.
    for var in THREAD_VARS:
        os.environ.setdefault(var, str(s.threads))
    if task["kind"] == "prepare":
        from .backends import prepare_artifact

        return prepare_artifact(s, Path(task["cache"]))
    return measure(s, Path(task["cache"]))


if __name__ == "__main__":
    sys.exit(task_main(run, sys.argv[1:]))
