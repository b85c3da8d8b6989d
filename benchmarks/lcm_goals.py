"""Issue 13's whole-image goals, read from one run of the ``lcm`` bench config (``benchmarks/configs/lcm.yaml``):
per-image seconds, peak RSS and where the time goes for every generate row, each row's speed-up over the
reference (SD-v1.4, 25 steps with CFG, PyTorch eager fp32, the same run), and whether the few-step goals are met
(LCM 4 steps < 10 s end to end and >= 25x faster than the reference). The goals are read for the fastest LCM 4-step
row with each VAE decoder of the run (the SD decoder and, where the run has it, the tiny decoder of issue 14).

    python benchmarks/lcm_goals.py benchmarks/results/lcm     # writes benchmarks/results/lcm/goals.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MAX_SECONDS = 10.0  # LCM 4-step image, end to end
MIN_SPEEDUP = 25.0  # over SD-v1.4 25-step CFG in PyTorch fp32
PARTS = ("text_encoder", "unet", "vae_decoder", "other")


def reference(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The SD-v1.4 25-step CFG PyTorch fp32 image of the run."""
    return next((r for r in rows if r["model"] == "teacher" and r["component"] == "generate" and not r["error"]
                 and r["backend"] == "pytorch" and r["precision"] == "fp32" and r.get("steps") == 25
                 and r["batch"] == 2), None)


def summarise(doc: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """(one summary per generate row, the goals, Markdown)."""
    rows = [r for r in doc["rows"] if r["component"] == "generate"]
    ref = reference(rows)
    out = []
    for r in rows:
        s = {"model": r["model"], "backend": r["backend"], "precision": r["precision"], "vae": r.get("vae") or "teacher",
             "steps": r.get("steps"),
             "cfg": r["batch"] == 2, "seconds": r["median_s"], "peak_rss_mb": r["peak_rss_mb"], "error": r["error"]}
        if r["median_s"] and r.get("component_s"):
            s["split_s"] = {k: r["component_s"].get(k, 0.0) for k in PARTS}
        if r["median_s"] and ref is not None:
            s["speedup_vs_reference"] = ref["median_s"] / r["median_s"]
        out.append(s)
    goals = {}
    for vae in dict.fromkeys(s["vae"] for s in out):
        lcm4 = min((s for s in out if s["model"].endswith("+lcm") and s["steps"] == 4 and s["seconds"]
                    and s["vae"] == vae), key=lambda s: s["seconds"], default=None)
        if lcm4 is None:
            continue
        tag = "" if vae == "teacher" else f"_{vae}_vae"
        goals[f"lcm4{tag}_seconds"] = {"value": lcm4["seconds"], "goal": f"< {MAX_SECONDS}",
                                       "met": lcm4["seconds"] < MAX_SECONDS}
        if "speedup_vs_reference" in lcm4:
            goals[f"lcm4{tag}_speedup"] = {"value": lcm4["speedup_vs_reference"], "goal": f">= {MIN_SPEEDUP}",
                                           "met": lcm4["speedup_vs_reference"] >= MIN_SPEEDUP}
    md = [f"# Whole-image goals of run `{doc.get('name', '?')}` (issue 13)", "",
          f"Machine: {doc.get('machine', {}).get('cpu', '?')}; load average {doc.get('machine', {}).get('load_average')} "
          f"at start, {doc.get('load_average_end')} at end. Command: `{doc.get('command', '')}`.", "",
          "| model | backend | prec | VAE decoder | steps | CFG | s / image | speed-up vs SD-v1.4 25-step CFG fp32 | peak RSS MB "
          "| text encoder s | U-Net s | VAE decoder s | other s |", "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in out:
        if s["error"]:
            md.append(f"| {s['model']} | {s['backend']} | {s['precision']} | {s['vae']} | {s['steps']} | {'yes' if s['cfg'] else 'no'} "
                      f"| error: {s['error'][:80]} | | | | | | |")
            continue
        sp = s.get("speedup_vs_reference")
        split = s.get("split_s") or {}
        cells = " | ".join(f"{split[k]:.2f} ({split[k] / s['seconds']:.0%})" if k in split else "" for k in PARTS)
        md.append(f"| {s['model']} | {s['backend']} | {s['precision']} | {s['vae']} | {s['steps']} | {'yes' if s['cfg'] else 'no'} "
                  f"| {s['seconds']:.2f} | {f'{sp:.1f}x' if sp else ''} | {s['peak_rss_mb']:.0f} | {cells} |")
    md += ["", "Goals: " + ("; ".join(f"{k} {v['value']:.2f} (goal {v['goal']}): {'met' if v['met'] else 'NOT met'}"
                                     for k, v in goals.items()) or "no LCM 4-step row"), ""]
    return out, goals, "\n".join(md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run folder of the lcm config (holds results.json)")
    args = p.parse_args(argv)
    doc = json.loads((args.run / "results.json").read_text())
    rows, goals, md = summarise(doc)
    (args.run / "goals.json").write_text(json.dumps({"rows": rows, "goals": goals}, indent=2) + "\n")
    (args.run / "goals.md").write_text(md)
    print(md)
    return 0 if goals and all(g["met"] for g in goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
