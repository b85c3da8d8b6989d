"""Run a benchmark config: every scenario in its own worker process, then ratios and the report."""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..outputs import user_cache_dir
from .backends import BackendUnavailable, artifact_dir, get_backend, read_meta
from .child import child_env, run_task
from .rows import MEASURED_COLUMNS, scenario_row
from .scenario import BenchConfig, Scenario, split_lcm

DEFAULT_CACHE = user_cache_dir() / "bench"
WORKER = (sys.executable, "-m", "bksdm_edge.bench.worker")


def run_worker(kind: str, s: Scenario, cache: Path, plugins: list[str]) -> dict[str, Any]:
    """One worker task (``prepare`` or ``measure``) for ``s`` in a fresh process; its result with ``peak_rss_mb``."""
    result, _ = run_task(WORKER, {"kind": kind, "scenario": s.to_json(), "cache": str(cache), "plugins": plugins},
                         timeout_s=s.timeout_s, env=child_env(s.threads))
    return result


@dataclass
class Runner:
    """Runs scenarios one after another; rows are appended as they finish (``on_row`` sees each)."""

    cache: Path = DEFAULT_CACHE
    plugins: list[str] = field(default_factory=list)
    android: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print

    def prepare(self, s: Scenario, row: dict) -> bool:
        backend = get_backend(s.backend)
        adir = artifact_dir(self.cache, s, backend)
        meta = read_meta(adir)
        if meta is None:
            self.log(f"  preparing {adir.relative_to(self.cache)}")
            result = run_worker("prepare", s, self.cache, self.plugins)
            if not result.get("ok"):
                row["error"] = "export failed: " + result.get("error", "unknown")
                return False
            meta = read_meta(adir)
            meta["export_peak_rss_mb"] = result["peak_rss_mb"]
            (adir / "artifact.json").write_text(json.dumps(meta, indent=2, default=str))
        row["export_s"] = meta.get("export_s")
        row["export_peak_rss_mb"] = meta.get("export_peak_rss_mb")
        row["size_mb"] = meta["size_bytes"] / 2**20
        row["artifact"] = meta.get("extra", {})
        return True

    def run_scenario(self, s: Scenario) -> dict[str, Any]:
        row = scenario_row(s)
        try:
            row["peer"] = get_backend(s.backend).PEER
            get_backend(s.backend).check(s)
        except BackendUnavailable as err:
            row["error"] = str(err)
            return row
        if not self.prepare(s, row):
            return row
        if s.device.startswith("android:"):
            from .android import measure_on_android

            try:
                row.update(measure_on_android(s, artifact_dir(self.cache, s, get_backend(s.backend)), self.android))
            except Exception as err:  # noqa: BLE001 - recorded in the row
                row["error"] = f"{type(err).__name__}: {err}"
            return row
        res = run_worker("measure", s, self.cache, self.plugins)
        if not res.get("ok"):
            row["error"] = res.get("error", "unknown")
            return row
        row.update({k: res.get(k) for k in MEASURED_COLUMNS})
        row["peak_rss_mb"] = res["peak_rss_mb"]
        row["backend_info"] = res.get("backend_info") or {}
        row["run_wall_s"] = res.get("run_wall_s")
        return row


def add_ratios(rows: list[dict[str, Any]], macs: dict[tuple, int] | None = None) -> None:
    """Per row: ratios to the teacher row with the same component/backend/precision/shape/threads/device."""
    def key(r, **over):
        d = {**r, **over}
        return (d["source"], d["component"], d["backend"], d["precision"], d["resolution"], d["batch"],
                d["threads"], d["device"], d.get("steps"))

    # The reference: the teacher model with its own VAE (rows of a tiny VAE compare with the SD decoder's).
    teachers = {key(r): r for r in rows if r["model"] == "teacher" and (r.get("vae") or "teacher") == "teacher"
                and not r["error"] and not r.get("variant")}
    for r in rows:
        t = teachers.get(key(r))
        if t is not None and not r["error"]:
            if r["median_s"] and t["median_s"]:
                r["speedup_vs_teacher"] = t["median_s"] / r["median_s"]
            if r["peak_rss_mb"] and t["peak_rss_mb"]:
                r["mem_ratio_vs_teacher"] = r["peak_rss_mb"] / t["peak_rss_mb"]
            if r["size_mb"] and t["size_mb"]:
                r["size_ratio_vs_teacher"] = r["size_mb"] / t["size_mb"]
        ref = teachers.get(key(r, backend="pytorch", precision="fp32"))
        if ref is not None and not r["error"] and r["median_s"]:
            r["speedup_vs_teacher_pytorch_fp32"] = ref["median_s"] / r["median_s"]
        if macs:
            mine = _row_macs(macs, r, r["model"], r.get("vae") or "teacher")
            teacher = _row_macs(macs, r, "teacher", "teacher")
            if mine:
                r["macs_g"] = mine / 1e9
            if mine and teacher:
                r["macs_ratio_vs_teacher"] = mine / teacher


def _row_macs(macs: dict[tuple, int], r: dict[str, Any], model: str, vae: str = "teacher") -> int | None:
    """Paper-convention MACs of one call of the row's component at its batch, with ``vae`` for the VAE parts.

    ``generate``: the text encoder and ``steps`` U-Net calls at the row's batch (2 = CFG), one VAE decode.
    """
    def one(component):
        return macs.get((r["source"], model, component, r["resolution"],
                         vae if component in ("vae_decoder", "vae_encoder") else "teacher"))

    if r["component"] != "generate":
        m = one(r["component"])
        return m * r["batch"] if m else None
    parts = one("text_encoder"), one("unet"), one("vae_decoder")
    if not all(parts):
        return None
    te, unet, dec = parts
    return (te + unet * (r.get("steps") or 0)) * r["batch"] + dec


def paper_macs(scenarios: list[Scenario], log: Callable[[str], None] = print) -> dict[tuple, int]:
    """Paper-convention MACs per (source, model, component, resolution, vae), batch 1, from the profiler
    (``vae`` is "teacher" except for the VAE components of scenarios with another VAE)."""
    from ..profiler import profile_teacher_and_students

    out: dict[tuple, int] = {}
    groups: dict[tuple, set] = {}
    vaes: dict[tuple, set] = {}
    for s in scenarios:
        if s.is_bundle:
            continue  # an exported bundle has no PyTorch model to profile
        for c in (("text_encoder", "unet", "vae_decoder") if s.component == "generate" else (s.component,)):
            groups.setdefault((s.source, s.resolution), set()).add((s.model, c))
            if s.vae != "teacher" and c in ("vae_decoder", "vae_encoder"):
                vaes.setdefault((s.source, s.resolution), set()).add((s.vae, c))
    for (source, res), pairs in groups.items():
        components = sorted({c for _, c in pairs})
        # ``+lcm`` models count as their base model: the guidance projection adds dim x 320 MACs (< 1e-5).
        # Built-in plan names and plan files are built from the teacher's config; folders are profiled as they are.
        bases = {(split_lcm(m)[0], c) for m, c in pairs}
        variants = sorted({m for m, c in bases if m != "teacher" and not Path(m).is_dir() and c == "unet"})
        folders = sorted({m for m, c in bases if m != "teacher" and Path(m).is_dir() and c == "unet"})
        try:
            rows = profile_teacher_and_students(source, variants, resolution=res, components=components)
            for folder in folders:
                rows += profile_teacher_and_students(source, (), unet=folder, resolution=res)[1:]
        except Exception as err:  # noqa: BLE001 - MACs are informative; a failure leaves the column empty
            log(f"  MACs not available for {source} at {res}px: {err}")
            continue
        for p in rows:
            out[(source, p.name, p.component, res, "teacher")] = p.macs_paper
        for vae, c in vaes.get((source, res), ()):
            try:
                tiny = profile_teacher_and_students(source, (), resolution=res, components=(c,), vae=vae)[-1]
            except Exception as err:  # noqa: BLE001 - as above
                log(f"  MACs not available for --vae {vae} at {res}px: {err}")
                continue
            out[(source, "teacher", c, res, vae)] = tiny.macs_paper
        for m, c in pairs:
            base = split_lcm(m)[0]
            for key in [k for k in out if k[0] == source and k[1] == base and k[2] == c and k[3] == res]:
                out.setdefault((source, m, c, res, key[4]), out[key])
            # Students share the teacher's text encoder and VAE (whichever VAE the scenario names).
            if c != "unet":
                for key in [k for k in out if k[0] == source and k[1] == "teacher" and k[2] == c and k[3] == res]:
                    out.setdefault((source, m, c, res, key[4]), out[key])
    return out


def plan_labels(scenarios: list[Scenario]) -> dict[tuple, str | None]:
    """The removal plan of every student model (variant, plan file, or a folder's recognised plan), by (source, model)."""
    from ..loading import teacher_unet_config
    from ..plans.resolve import plan_label

    out: dict[tuple, str | None] = {}
    for s in scenarios:
        key = (s.source, s.model)
        if key not in out and not s.is_teacher:
            config = teacher_unet_config(s.source)
            base = split_lcm(s.model)[0]
            out[key] = plan_label(base, config) if config is not None else None
    return out


STOPPED = "not measured: the run was stopped before this scenario"


def _row_key(r: dict[str, Any]) -> tuple:
    """What identifies a row's scenario (for resuming a stopped run)."""
    return tuple(r.get(k) for k in ("source", "model", "component", "backend", "precision", "resolution", "batch",
                                    "threads", "device")) + (r.get("variant") or "", r.get("steps"),
                                                             r.get("vae") or "teacher")


def run_benchmark(config: BenchConfig, out_dir: str | Path, *, cache: str | Path | None = None,
                  log: Callable[[str], None] = print, imported: list[dict] | None = None,
                  resume: bool = False, finalize: bool = False) -> dict[str, Any]:
    """Run every scenario of ``config`` and write ``results.json``, ``results.csv``, ``report.md`` and plots.

    Args:
        config: the expanded config (see ``scenario.load_config``).
        out_dir: the run's folder (``benchmarks/results/<run>``).
        cache: where exported artifacts are kept between runs (default ``~/.cache/bksdm-edge/bench``).
        log: progress messages.
        imported: rows measured elsewhere (``importing.load_rows``), added to the report as they are.
        resume: keep the rows of an earlier (stopped) run in ``out_dir/results.json`` and run only the rest.
        finalize: like ``resume`` but run nothing: the missing scenarios become rows whose error says they
            were not measured, and the full report (with plots) is written.

    Stopping a run (Ctrl-C / SIGTERM) also records the scenarios not reached as such rows.

    Returns the results document (also written to ``results.json``).
    """
    from .machine import machine_info
    from .report import write_report

    for module in config.plugins:
        importlib.import_module(module)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = Runner(cache=Path(cache) if cache else DEFAULT_CACHE, plugins=config.plugins, android=config.android,
                    log=log)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    machine_start = machine_info()
    previous: dict[tuple, dict] = {}
    if (resume or finalize) and (out_dir / "results.json").exists():
        old = json.loads((out_dir / "results.json").read_text())
        started, machine_start = old["started"], old["machine"]
        previous = {_row_key(r): r for r in old["rows"] if r.get("error") != STOPPED and "imported_from" not in r}
    # MACs first (meta device, seconds): the report is rewritten after every row, so a run that is
    # stopped early still leaves a complete report of what it measured.
    macs = paper_macs(config.scenarios, log)
    plans = plan_labels(config.scenarios)
    rows: list[dict[str, Any]] = []

    def document(final: bool) -> dict[str, Any]:
        all_rows = rows + list(imported or [])
        add_ratios(all_rows, macs)
        for r in rows:
            r["plan"] = plans.get((r["source"], r["model"]))
        return {
            "name": config.name,
            "started": started,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds") if final else None,
            "complete": final,
            "command": " ".join(sys.argv),
            "machine": machine_start,
            "load_average_end": machine_info()["load_average"],
            "config": config.raw,
            "rows": all_rows,
        }

    # Config order: the config decides what runs first (put the cheap, important rows early).
    order = list(config.scenarios)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old_handler = signal.signal(signal.SIGTERM, on_term)
    try:
        for i, s in enumerate(order, 1):
            if _row_key(scenario_row(s)) in previous:
                rows.append(previous[_row_key(scenario_row(s))])
                continue
            if finalize:
                rows.append(scenario_row(s) | {"error": STOPPED})
                continue
            log(f"[{i}/{len(order)}] {s.label}")
            t0 = time.perf_counter()
            row = runner.run_scenario(s)
            row["load_average_1m"] = (os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
            rows.append(row)
            status = f"error: {row['error']}" if row["error"] else f"median {row['median_s']:.4f} s"
            log(f"    {status} ({time.perf_counter() - t0:.1f} s)")
            if i < len(order):
                write_report(document(final=False), out_dir, plots=False)
    except KeyboardInterrupt:
        done = {_row_key(r) for r in rows}
        rows.extend(scenario_row(s) | {"error": STOPPED} for s in order if _row_key(scenario_row(s)) not in done)
        log("stopped: the scenarios not reached are recorded as not measured")
    finally:
        signal.signal(signal.SIGTERM, old_handler)
    doc = document(final=True)
    write_report(doc, out_dir)
    return doc


CONFIG_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "configs"
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def resolve_config(name_or_path: str | Path) -> Path:
    """A config file path, or a ready config's name (``quick``, ``cpu-full``, ``gpu``) in benchmarks/configs."""
    p = Path(name_or_path)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return p
    return CONFIG_DIR / f"{name_or_path}.yaml"


def bench(config: str | Path = "quick", *, out_dir: str | Path | None = None, cache: str | Path | None = None,
          device: str | None = None, imports: tuple[str | Path, ...] = (), overrides: dict[str, Any] | None = None,
          android: dict[str, Any] | None = None, resume: bool = False, finalize: bool = False,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load a config, run it and write the report: what ``benchmarks/run.py`` and ``bksdm-edge bench`` call.

    Args:
        config: a YAML path or a ready config name.
        out_dir: the run's folder (default ``benchmarks/results/<config name>``).
        cache: exported artifacts cache (default ``~/.cache/bksdm-edge/bench``).
        device: force every scenario onto this device (``cpu``, ``cuda``, ``android:SERIAL``).
        imports: JSON/CSV files of results measured elsewhere (format in benchmarks/README.md).
        overrides: other scenario fields forced on every scenario (e.g. ``{"repeats": 3}``).
        android: adb / tool paths for ``android:SERIAL`` (merged over the config's ``android`` section).
        resume, finalize: see ``run_benchmark``.
    """
    from .importing import load_rows
    from .scenario import load_config

    forced = dict(overrides or {})
    if device:
        forced["device"] = device
    cfg = load_config(resolve_config(config), forced)
    cfg.android.update(android or {})
    imported = [row for f in imports for row in load_rows(f)]
    out = Path(out_dir) if out_dir else RESULTS_DIR / cfg.name
    log(f"benchmark {cfg.name}: {len(cfg.scenarios)} scenarios -> {out}")
    doc = run_benchmark(cfg, out, cache=cache, log=log, imported=imported, resume=resume, finalize=finalize)
    log(f"wrote {out}/report.md, results.csv, results.json")
    return doc
