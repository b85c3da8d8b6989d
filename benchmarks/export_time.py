"""Where an export's time and memory go: run real ``bksdm-edge export`` commands and break them into stages.

Each scenario is the exact command a user runs, in its own process under ``flock /tmp/bksdm-heavy.lock``
(full-size exports take GBs and minutes; two at once would exhaust a 24 GB machine). Its peak RSS comes
from the process tree (``bench.child``), its stage breakdown (wall and CPU seconds, peak RSS per stage)
from the bundle's ``export_log.json`` (``bksdm_edge/export/stages.py``); a failed export's log is read
from ``OUT.failed/``. CPU seconds are what to compare on a busy machine: wall time there includes waiting
for the cores.

    python benchmarks/export_time.py --scenarios sd-v1.4/bk-tiny:onnx:int8:b2 [--out DIR] [--work DIR]
    python benchmarks/export_time.py --import-log NAME=LOG.json   # a log written by another harness
                                                                  # (with the validation.json beside it, if any)

A scenario is ``[source/]unet:format:precision[:bN]``: ``unet`` is ``teacher`` or a BK-SDM variant
(built once into ``--work`` from the source with ``bksdm-edge build``), ``bN`` the U-Net batch.
Results: ``benchmarks/results/export_time/`` (results.json, results.csv, report.md, stages.png).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bksdm_edge.bench.child import child_env, run_child  # noqa: E402
from bksdm_edge.bench.machine import machine_info, machine_markdown  # noqa: E402

LOCK = "/tmp/bksdm-heavy.lock"
GIB = 2**30
# Stage names (export/stages.py records) grouped into the columns of the report.
GROUPS = {
    "load": ("load model",),
    "record": ("record inputs", "record validation trajectory", "record calibration inputs"),
    "trace": ("export fp32 (torch.onnx)", "export fp32", "convert fp32", "trace"),
    "calibrate": ("calibrate", "calibrate (ORT MinMax)"),
    "quantize": ("quantize", "quantize (quantize_static)", "quantize (quantize_dynamic)"),
    "validate": ("validate", "references"),
}


@dataclass(frozen=True)
class Scenario:
    source: str  # builtin:NAME
    unet: str  # teacher | bk-base | bk-small | bk-tiny
    format: str
    precision: str
    batch: int = 1

    @property
    def name(self) -> str:
        return f"{self.source.split(':', 1)[1]}/{self.unet}:{self.format}:{self.precision}:b{self.batch}"

    @classmethod
    def parse(cls, text: str) -> "Scenario":
        source, _, rest = text.rpartition("/")
        unet, fmt, precision, *more = rest.split(":")
        batch = int(more[0][1:]) if more else 1
        return cls("builtin:" + (source or "sd-v1.4"), unet, fmt, precision, batch)


def _locked(argv: list[str], lock: str) -> list[str]:
    """``argv`` under ``flock LOCK nice -n 5`` (full-size jobs), or as it is when ``lock`` is empty (toy models)."""
    return ["flock", lock, "nice", "-n", "5", *argv] if lock else argv


def _student(s: Scenario, work: Path, lock: str = LOCK) -> Path | None:
    """The scenario's student U-Net folder (built once, under the lock), or None for the teacher."""
    if s.unet == "teacher":
        return None
    folder = work / "students" / f"{s.source.split(':', 1)[1]}-{s.unet}"
    if not (folder / "config.json").exists():
        result = run_child(_locked([sys.executable, "-m", "bksdm_edge", "build", "--teacher", s.source,
                                    "--variant", s.unet, "--out", str(folder)], lock), env=child_env())
        if not result.ok:
            raise RuntimeError(f"building {s.unet} failed: {result.error()}")
    return folder


def stage_groups(log: dict) -> dict[str, dict[str, float]]:
    """Top-level stages summed into the report's groups (sub-stages of "convert" split it further)."""
    out: dict[str, dict[str, float]] = {}
    for st in log.get("stages", []):
        name = st["stage"]
        group = next((g for g, names in GROUPS.items() if name in names), None)
        if group is None or (st.get("depth", 0) and group in ("load", "record", "validate")):
            continue
        cell = out.setdefault(group, {"seconds": 0.0, "cpu_seconds": 0.0, "peak_rss_gib": 0.0})
        cell["seconds"] += st["seconds"]
        cell["cpu_seconds"] += st.get("cpu_seconds", 0.0)
        cell["peak_rss_gib"] = max(cell["peak_rss_gib"], st["peak_rss_bytes"] / GIB)
    total = log.get("total_seconds", 0.0)
    out["other"] = {"seconds": max(0.0, total - sum(c["seconds"] for c in out.values())),
                    "cpu_seconds": max(0.0, log.get("total_cpu_seconds", 0.0) - sum(c["cpu_seconds"] for c in out.values()))}
    return {g: {k: round(v, 1 if k != "peak_rss_gib" else 2) for k, v in c.items()} for g, c in out.items()}


def run_scenario(s: Scenario, work: Path, lock: str = LOCK) -> dict:
    """Run one export as a user would and return its row."""
    out = work / "bundles" / s.name.replace("/", "_").replace(":", "_")
    argv = [sys.executable, "-m", "bksdm_edge", "export", "--model", s.source, "--format", s.format,
            "--precision", s.precision, "--batch", str(s.batch), "--out", str(out), "--overwrite"]
    student = _student(s, work, lock)
    if student:
        argv += ["--unet", str(student)]
    load_before = os.getloadavg()
    result = run_child(_locked(argv, lock), env=child_env())
    row = {"scenario": s.name, **asdict(s), "command": " ".join(argv[1:]), "exit_code": result.returncode,
           "wall_seconds": round(result.wall_s, 1),
           "peak_rss_gib": round(result.peak_rss_mb / 1024, 2) if result.peak_rss_mb else None,
           # The machine is shared: 1/5/15-minute load averages when the export started and ended.
           "load_avg": {"start": [round(x, 1) for x in load_before], "end": [round(x, 1) for x in os.getloadavg()]}}
    for folder in (out, out.with_name(out.name + ".failed")):
        if (folder / "export_log.json").exists():
            log = json.loads((folder / "export_log.json").read_text())
            row.update(status="ok" if folder == out else "validation failed", log=log, groups=stage_groups(log))
            row.update(_validation(folder))
            break
    else:
        row.update(status="failed", error=result.error(), log_tail=result.tail(2000))
    return row


def _validation(folder: Path) -> dict:
    """``{"validation": {component: lowest cosine/PSNR and every set's}}`` from a bundle's validation.json, if any."""
    if not (folder / "validation.json").exists():
        return {}
    report = json.loads((folder / "validation.json").read_text())
    return {"validation": {c: {"passed": r["passed"],
                               "min_cosine": min((x["cosine"] for x in r["sets"] if "cosine" in x), default=None),
                               "min_psnr_db": min((x["psnr_db"] for x in r["sets"] if "psnr_db" in x), default=None),
                               "sets": {x["name"]: {"cosine": x.get("cosine"), "psnr_db": x.get("psnr_db")}
                                        for x in r["sets"]}}
                           for c, r in report["components"].items()}}


def write_report(rows: list[dict], info: dict, out: Path) -> None:
    groups = list(GROUPS) + ["other"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scenario", "status", "wall_s", "cpu_s", "peak_rss_gib",
                    *(f"{g}_{k}" for g in groups for k in ("s", "cpu_s"))])
        for r in rows:
            gr = r.get("groups", {})
            w.writerow([r["scenario"], r.get("status"), r.get("wall_seconds"), r.get("log", {}).get("total_cpu_seconds"),
                        r.get("peak_rss_gib"),
                        *(gr.get(g, {}).get(k) for g in groups for k in ("seconds", "cpu_seconds"))])
    lines = ["# Export time and memory by stage", "", machine_markdown(info), "",
             "Wall seconds / CPU seconds per stage group (CPU time is comparable across load; wall time is what "
             "a user waits). Peak RSS: the export process tree.", "",
             "| scenario | status | wall s | CPU s | peak RSS GiB | load (start/end, 5 min) | " + " | ".join(groups) + " |",
             "|---|---|---:|---:|---:|---|" + "---:|" * len(groups)]
    for r in rows:
        gr = r.get("groups", {})
        cells = [f"{gr[g]['seconds']:.0f} / {gr[g]['cpu_seconds']:.0f}" if g in gr else "-" for g in groups]
        lines.append(f"| {r['scenario']} | {r.get('status')} | {r.get('wall_seconds', '-')} | "
                     f"{r.get('log', {}).get('total_cpu_seconds', '-')} | {r.get('peak_rss_gib', '-')} | "
                     f"{_load(r)} | " + " | ".join(cells) + " |")
    lines += ["", "Validation (the export's own gate; lowest cosine / PSNR over its input sets, seeded and trajectory):", "",
              "| scenario | component | passed | min cosine | min PSNR dB |", "|---|---|---|---:|---:|"]
    for r in rows:
        for c, v in r.get("validation", {}).items():
            cos, db = v.get("min_cosine"), v.get("min_psnr_db")
            lines.append(f"| {r['scenario']} | {c} | {v['passed']} | {'-' if cos is None else f'{cos:.4f}'} | "
                         f"{'-' if db is None else f'{db:.1f}'} |")
    lines += ["", "Stages with their peak RSS (GiB):", ""]
    for r in rows:
        stages = r.get("log", {}).get("stages", [])
        if stages:
            lines.append(f"- {r['scenario']}: " + "; ".join(
                f"{'  ' * s.get('depth', 0)}{s.get('component', '') + ' ' if s.get('component') else ''}{s['stage']} "
                f"{s['seconds']:.0f} s / {s.get('cpu_seconds', 0):.0f} cpu-s, {s['peak_rss_bytes'] / GIB:.1f} GiB"
                for s in stages))
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plot(rows, groups, out / "stages.png")


def _load(row: dict) -> str:
    load = row.get("load_avg")
    return f"{load['start'][1]} / {load['end'][1]}" if load else "-"


def _plot(rows: list[dict], groups: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("groups")]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 1.5))
    left = [0.0] * len(rows)
    for g in groups:
        vals = [r["groups"].get(g, {}).get("cpu_seconds", 0.0) / 60 for r in rows]
        ax.barh([r["scenario"] for r in rows], vals, left=left, label=g)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("CPU minutes (all threads)")
    ax.legend(ncol=len(groups), fontsize=8, loc="lower right")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="", help="comma-separated [source/]unet:format:precision[:bN]")
    parser.add_argument("--import-log", action="append", default=[], metavar="NAME=LOG.json",
                        help="add a row from an export log written elsewhere (e.g. the code before a change)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/export_time")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bksdm-export-time"))
    parser.add_argument("--lock", default=LOCK, help=f"flock file around each export ('' for none: toy models; "
                                                      f"default {LOCK})")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.json"
    rows = {r["scenario"]: r for r in (json.loads(results.read_text())["rows"] if results.exists() else [])}
    info = machine_info()
    for item in args.import_log:
        name, _, path = item.partition("=")
        log = json.loads(Path(path).read_text())
        rows[name] = {"scenario": name, "status": "imported", "source_log": path, "log": log,
                      "wall_seconds": log.get("total_seconds"), "peak_rss_gib": round(log["peak_rss_bytes"] / GIB, 2),
                      "groups": stage_groups(log), **_validation(Path(path).parent)}
    for text in filter(None, args.scenarios.split(",")):
        s = Scenario.parse(text)
        print(f"[export-time] {s.name} ...", flush=True)
        rows[s.name] = run_scenario(s, args.work, args.lock)
        print(f"[export-time] {s.name}: {rows[s.name].get('status')}, {rows[s.name].get('wall_seconds')} s, "
              f"peak {rows[s.name].get('peak_rss_gib')} GiB", flush=True)
        results.write_text(json.dumps({"machine": info, "rows": list(rows.values())}, indent=1))
    for row in rows.values():  # the stage grouping may have changed since a row was recorded
        if row.get("log"):
            row["groups"] = stage_groups(row["log"])
    results.write_text(json.dumps({"machine": info, "rows": list(rows.values())}, indent=1))
    write_report(list(rows.values()), info, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
