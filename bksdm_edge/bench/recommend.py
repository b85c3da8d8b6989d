"""The fastest export for the CPU at hand, read from benchmark results (``bksdm-edge export --format auto``).

A benchmark run's ``results.json`` names its machine's CPU flags. The extensions that decide which kernels the CPU
runtimes pick (``DECISIVE``: AVX2, AVX-512, VNNI, BF16, AMX; Arm dot product, i8mm, bf16, SVE) key it. For this
machine the recommendation ranks the U-Net rows of our export formats (not PyTorch, not peers) from the runs with
the same key, fastest first; without such a run, the runs of the closest measured CPU (most decisive flags in
common), said so. A row counts when its target is registered here and its runtime runs here, and when its
variant changed only run-time options (OpenVINO's bf16 inference precision), not the export recipe (probes such as
``attention-int8``). The export itself is then validated as always: ``export --format auto`` takes the next
candidate when a validation fails.

No torch: reads JSON files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# Kernel-deciding extensions (``machine.KERNEL_ISA`` spelling) that split CPUs into classes whose fastest path may
# differ: int8 dot products (VNNI / dotprod / i8mm), bf16 (AVX512-BF16, AMX-BF16, Arm bf16), AMX int8 tiles.
DECISIVE = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16",
            "asimddp", "i8mm", "bf16", "sve")
# When no benchmark run exists at all: formats/precisions in the order that won on the measured CPUs.
FALLBACK = (("openvino", "int8"), ("onnx", "int8"), ("tflite", "int8"), ("onnx", "fp32"))
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@dataclass(frozen=True)
class Candidate:
    """One measured path: export ``format``/``precision`` (and its run-time setting), its median U-Net step."""

    format: str
    precision: str
    inference_precision: str | None
    model: str
    median_s: float
    cpu: str
    run: str
    exact_isa: bool

    def describe(self) -> str:
        hint = f", {self.inference_precision} inference" if self.inference_precision else ""
        return (f"{self.format} {self.precision}{hint}: {self.model} U-Net step {self.median_s:.2f} s on {self.cpu} "
                f"({self.run})")


def isa_key(flags: Iterable[str]) -> frozenset[str]:
    return frozenset(f for f in flags if f in DECISIVE)


def this_cpu_key() -> frozenset[str]:
    from .machine import cpu_flags

    return isa_key(cpu_flags())


def _export_formats() -> dict[str, str]:
    """Benchmark back-end name -> export format, for our formats (PyTorch and peers are not exports)."""
    from .backends import ExportBackend, backend_names, get_backend

    return {n: get_backend(n).FORMAT for n in backend_names()
            if isinstance(get_backend(n), ExportBackend) and not get_backend(n).PEER}


def _runtime_only_variants(doc: dict) -> set[str]:
    """Variants of a run whose options change only how the artifact runs (``runner``), not how it is exported."""
    out = set()
    for entry in (doc.get("config") or {}).get("matrix") or []:
        options = entry.get("options") or {}
        variants = entry.get("variant")
        for v in variants if isinstance(variants, list) else [variants]:
            if v and set(options) <= {"runner"}:
                out.add(v)
    return out


def load_runs(dirs: Iterable[str | Path] = ()) -> list[tuple[Path, dict]]:
    """Every ``results.json`` under the given folders (default: the repository's benchmarks/results)."""
    runs = []
    for d in list(dirs) or [RESULTS_DIR]:
        d = Path(d)
        files = [d] if d.is_file() else sorted(d.rglob("results.json"))
        for f in files:
            try:
                runs.append((f, json.loads(f.read_text())))
            except (OSError, json.JSONDecodeError):
                continue
    return runs


def candidates(runs: list[tuple[Path, dict]], key: frozenset[str], model: str = "bk-tiny") -> list[Candidate]:
    """Measured export paths for a CPU with decisive flags ``key``, fastest first (see the module docstring)."""
    formats = _export_formats()
    scored = []
    for path, doc in runs:
        machine = doc.get("machine") or {}
        flags = machine.get("cpu_flags") or [f for f, v in (machine.get("isa") or {}).items() if v]
        run_key = isa_key(flags)
        if not run_key:
            continue
        runtime_variants = _runtime_only_variants(doc)
        for r in doc.get("rows") or []:
            if (r.get("component") != "unet" or r.get("error") or not r.get("median_s") or r.get("peer")
                    or r.get("backend") not in formats or r.get("device", "cpu") != "cpu"):
                continue
            if r.get("variant") and r["variant"] not in runtime_variants:
                continue
            hint = (r.get("backend_info") or {}).get("inference_precision")
            scored.append((run_key, path, doc, r, hint))
    if not scored:
        return []
    exact = [x for x in scored if x[0] == key]
    if exact:
        pool = exact
    else:  # the closest measured CPU: most decisive flags in common, then fewest extra
        best = max({x[0] for x in scored}, key=lambda k: (len(k & key), -len(k - key)))
        pool = [x for x in scored if x[0] == best]
    models = {x[3]["model"] for x in pool}
    chosen = model if model in models else max(models, key=lambda m: sum(x[3]["model"] == m for x in pool))
    out: dict[tuple, Candidate] = {}
    for run_key, path, doc, r, hint in pool:
        if r["model"] != chosen:
            continue
        c = Candidate(formats[r["backend"]], r["precision"], hint, r["model"], float(r["median_s"]),
                      (doc.get("machine") or {}).get("cpu", "?"), _relative(path), run_key == key)
        k = (c.format, c.precision, c.inference_precision)
        if k not in out or c.median_s < out[k].median_s:
            out[k] = c
    return sorted(out.values(), key=lambda c: c.median_s)


def _relative(path: Path) -> str:
    try:
        return str(path.parent.relative_to(RESULTS_DIR.parent.parent))
    except ValueError:
        return str(path.parent)


def exportable(c: Candidate) -> bool:
    """Whether this machine can export and run the candidate's target (its back-end and runtime are installed)."""
    from ..export import registry

    try:
        target = registry.get_target(c.format, c.precision)
    except Exception:  # noqa: BLE001 - ExportError: format/precision not available here
        return False
    return target.runtime_unavailable() is None


def plan(results: Iterable[str | Path] = (), model: str = "bk-tiny", key: frozenset[str] | None = None
         ) -> tuple[list[Candidate | tuple[str, str]], str]:
    """Export paths to try, fastest first, and a sentence saying where the ranking comes from.

    Candidates from benchmark results when any run is on record (exportable here ones only), else ``FALLBACK``
    (format, precision) pairs that are available here.
    """
    key = this_cpu_key() if key is None else key
    found = [c for c in candidates(load_runs(results), key, model) if exportable(c)]
    if found:
        where = ("benchmark runs on a CPU with this ISA" if found[0].exact_isa else
                 f"no benchmark run matches this CPU's ISA ({' '.join(sorted(key)) or 'unknown'}); ranking from the "
                 f"closest measured CPU, {found[0].cpu}: measure here with `bksdm-edge bench --config cpu-full`")
        return list(found), where
    from ..export import registry

    fallback = []
    for fmt, precision in FALLBACK:
        try:
            if registry.get_target(fmt, precision).runtime_unavailable() is None:
                fallback.append((fmt, precision))
        except Exception:  # noqa: BLE001 - not available here
            continue
    return fallback, ("no benchmark results found; using the order that won on the measured CPUs "
                      "(measure here with `bksdm-edge bench --config cpu-full`)")
