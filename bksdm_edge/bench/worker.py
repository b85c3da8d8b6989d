"""Worker process: ``python -m bksdm_edge.bench.worker TASK.json RESULT.json``.

Each scenario's preparation (export) and measurement run in their own process, so the
parent can read that process's own peak resident memory (``os.wait4``) and a crash or
an out-of-memory kill costs one row, not the run.

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
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def _rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:
        return None


def peak_rss_mb() -> float | None:
    """This process's own peak RSS.

    Linux: ``VmHWM`` of /proc/self/status, which starts afresh at exec; ``ru_maxrss`` would not
    (the kernel carries the forking parent's RSS across exec into the child's maximum).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


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

    def timed() -> float:
        start = time.perf_counter()
        loaded.run(native)
        loaded.sync()
        return time.perf_counter() - start

    first = timed()
    warm = [timed() for _ in range(s.warmup)]
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
    }
    if cuda:
        import torch

        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    task = json.loads(Path(argv[0]).read_text())
    result_path = Path(argv[1])
    for module in task.get("plugins", []):
        importlib.import_module(module)
    from .scenario import Scenario

    s = Scenario(**task["scenario"])
    cache = Path(task["cache"])
    threads = str(s.threads)
    # Thread pools of numpy/MKL/OpenMP read these at import; set before the runtime loads.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, threads)
    try:
        if task["kind"] == "prepare":
            from .backends import prepare_artifact

            result = {"ok": True, **prepare_artifact(s, cache)}
        else:
            result = {"ok": True, **measure(s, cache)}
    except BaseException as err:  # noqa: BLE001 - every failure becomes a row's error
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        result = {"ok": False, "error": last[:2000], "traceback": traceback.format_exc()[-8000:]}
    result["peak_rss_mb"] = peak_rss_mb()
    result_path.write_text(json.dumps(result, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
