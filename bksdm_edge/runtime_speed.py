"""``generate --inference-precision auto``: measure the eligible run-time settings, keep the fastest, remember it.

A format with several run-time settings (OpenVINO: ``f32`` and the ``bf16`` hint) may have more than one that
passed the bundle's validation and runs on this CPU. Which one is faster depends on the CPU and the bundle, not on
the CPU's flags alone: on an AMD EPYC with AVX512-BF16 but no AMX the bf16 hint makes BK-SDM-Tiny's fp32 IR 1.77x
faster and leaves its int8 IR level (0.536 vs 0.525 s; benchmarks/results/cpu-engines), on a Xeon with AMX it made
the fp32 IR 3.7x faster (issue 19). So ``fastest`` times each setting on
the bundle's own U-Net (the dominant per-image cost) and keeps the fastest median, then records the decision in
a JSON cache so the next run on the same bundle, CPU and thread count does not measure again.

The small details, decided:
- Per setting: the U-Net is compiled with it, called once to warm up (first-call allocations, kernel set-up),
  then ``TIMED_CALLS`` (3) times; the median counts. With compiling that is about five U-Net calls per setting,
  paid once per bundle, CPU and thread count. Calls of a few milliseconds (small bundles) are repeated until
  ``MIN_TIMED_S`` (0.2 s) have been timed, at most ``MAX_TIMED_CALLS``, so that a small bundle's decision is
  not timer noise. Each runner is released before the next one is compiled (never
  two full-size U-Nets in memory at once); the pipeline then loads the winner.
- A setting other than the default wins only when its median is at least ``MIN_GAIN`` (5%) below the default's:
  the default (OpenVINO f32) is what the export gate checks most strictly, and a difference within measurement
  noise is no reason to give up accuracy or to flip the choice from one measurement to the next.
- The cache key is the bundle's identity (sha256 of its manifest, which lists every file's sha256), the CPU
  model, its kernel-deciding ISA flags (``bench.machine.KERNEL_ISA``), the threads asked for and the CPUs usable,
  and the versions of the run-time libraries (an upgrade may change kernels). The file is
  ``$XDG_CACHE_HOME/bksdm-edge/inference-precision.json`` (``~/.cache/...``), rewritten atomically; an unreadable,
  corrupt or foreign file or entry is ignored (measured again and rewritten), and a cache that cannot be written
  only costs the next run a measurement.

Torch-free: ``generate`` imports it.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .errors import first_line

TIMED_CALLS = 3
MIN_TIMED_S = 0.2
MAX_TIMED_CALLS = 50
MIN_GAIN = 0.05
CACHE_FILE = "inference-precision.json"
CACHE_VERSION = 1
# Run-time libraries whose version is part of the key: a new release may pick other kernels.
RUNTIME_PACKAGES = ("openvino", "onnxruntime", "ai-edge-litert")


def cache_path() -> Path:
    from .outputs import user_cache_dir

    return user_cache_dir() / CACHE_FILE


def identity(manifest_file: Path, threads: int | None) -> dict[str, Any]:
    """What a measurement holds for: the bundle (its manifest's sha256), the CPU and its kernel-deciding flags,
    the threads asked for (None: the runtime's default) and usable, and the run-time library versions."""
    from .bench.machine import cpu_flags, cpu_model, usable_cpus
    from .versions import package_versions

    versions = package_versions(RUNTIME_PACKAGES)
    return {
        "manifest_sha256": hashlib.sha256(Path(manifest_file).read_bytes()).hexdigest(),
        "cpu": cpu_model(),
        "isa": cpu_flags(),
        "threads": threads,
        "usable_cpus": usable_cpus(),
        "versions": {k: versions[k] for k in RUNTIME_PACKAGES if k in versions},
    }


def _key(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries by key; empty when the file is missing, unreadable or not ours."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("version") != CACHE_VERSION or not isinstance(doc.get("entries"), dict):
        return {}
    return doc["entries"]


def _cached_choice(entry: Any, ident: dict[str, Any], settings: list[str]) -> tuple[str, dict[str, float]] | None:
    """(setting, medians) of a well-formed entry for this identity and these settings, else None."""
    if not isinstance(entry, dict) or entry.get("identity") != ident:
        return None
    seconds = entry.get("seconds")
    if (entry.get("runtime") not in settings or not isinstance(seconds, dict) or sorted(seconds) != sorted(settings)
            or not all(isinstance(v, (int, float)) and v > 0 for v in seconds.values())):
        return None
    return entry["runtime"], seconds


def time_setting(load: Callable[[str], Callable[[], Any]], setting: str) -> float:
    """Median seconds of ``TIMED_CALLS`` calls of ``load(setting)()`` after one warm-up call (more calls, up to
    ``MAX_TIMED_CALLS``, until ``MIN_TIMED_S`` were timed).

    Args:
        load: compiles the U-Net with a run-time setting and returns a no-argument call of it on fixed inputs.
        setting: the run-time setting's name (``f32``, ``bf16``).
    """
    call = load(setting)
    call()
    times = []
    while len(times) < TIMED_CALLS or (sum(times) < MIN_TIMED_S and len(times) < MAX_TIMED_CALLS):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def pick(seconds: dict[str, float], default: str) -> str:
    """The fastest setting; another than ``default`` only when at least ``MIN_GAIN`` faster than it."""
    best = min(seconds, key=seconds.get)
    if default in seconds and seconds[best] > seconds[default] * (1 - MIN_GAIN):
        return default
    return best


def _medians(seconds: dict[str, float]) -> str:
    return " vs ".join(f"{name} {s:.3g} s" for name, s in sorted(seconds.items(), key=lambda kv: kv[1]))


def fastest(settings: list[str], default: str, load: Callable[[str], Callable[[], Any]], ident: dict[str, Any],
            cache: Path | None = None) -> tuple[str, str]:
    """The fastest of ``settings`` on this machine and a line saying why: from the cache when it holds a
    measurement for ``ident``, else measured (``time_setting`` per setting) and written to the cache.

    Args:
        settings: the eligible run-time settings (default first).
        default: the target's default setting (kept unless another is ``MIN_GAIN`` faster).
        load: see ``time_setting``.
        ident: what the measurement holds for (``identity``).
        cache: cache file (default ``cache_path()``).
    """
    path = Path(cache) if cache else cache_path()
    entries = read_cache(path)
    key = _key(ident)
    hit = _cached_choice(entries.get(key), ident, settings)
    if hit:
        return hit[0], f"auto: cached measurement, U-Net call {_medians(hit[1])} on this CPU ({path})"
    seconds = {}
    for setting in settings:
        seconds[setting] = time_setting(load, setting)
    choice = pick(seconds, default)
    entries[key] = {"identity": ident, "runtime": choice, "seconds": seconds,
                    "measured": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    try:
        from .outputs import write_text_atomic

        write_text_atomic(path, json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1))
        where = f"cached in {path}"
    except OSError as err:
        where = f"not cached: {first_line(err)}"
    return choice, f"auto: measured U-Net call {_medians(seconds)} on this CPU; {where}"
