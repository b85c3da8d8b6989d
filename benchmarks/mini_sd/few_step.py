"""Few-step BK-SDM-Tiny on the digits teacher (issue 13 part 4): KD student -> ``distill --objective lcm`` ->
prompt accuracy and Fréchet distance at 1, 2, 4, 8 LCM steps in PyTorch and from an ONNX int8 bundle, next to the
teacher at 25 PNDM steps with CFG. Jobs and table: ``few_step_jobs.py`` beside this script.

    nice -n 5 python benchmarks/mini_sd/few_step.py      # every job; a rerun resumes from --work and rewrites the tables

Writes few_step.{json,md}, few_step_plot.png and few_step_grid.png under --results
(default benchmarks/results/mini_sd).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import fields
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]  # this checkout's bksdm_edge, and the sibling modules


def _plot(rows, cfg, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    series = (("teacher, PNDM + CFG", "teacher_pndm", "s"), ("BK-SDM-Tiny KD, PNDM + CFG", "kd_pndm", "^"),
              ("BK-SDM-Tiny KD + LCM, PyTorch", "lcm_torch", "o"),
              (f"BK-SDM-Tiny KD + LCM, {cfg.bundle_format} {cfg.bundle_precision}", "lcm_bundle", "x"))
    for label, prefix, marker in series:
        rs = sorted((r for r in rows if r["name"].startswith(prefix)), key=lambda r: r["unet_calls"])
        if rs:
            calls = [r["unet_calls"] for r in rs]
            ax[0].plot(calls, [r["prompt_accuracy"] for r in rs], marker=marker, label=label)
            ax[1].plot(calls, [r["frechet_distance"] for r in rs], marker=marker, label=label)
    for a, title in zip(ax, ("prompt accuracy (higher is better)", "Fréchet distance (lower is better)")):
        a.set_xscale("log", base=2)
        a.set_xlabel("U-Net calls per image (CFG: 2 per step)")
        a.set_title(title, fontsize=10)
        a.grid(alpha=0.3)
    ax[1].set_yscale("log")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid(work: Path, rows, path: Path) -> None:
    """Seed 0 of every digit (rows of the grid) for every row of the table (columns), in table order."""
    import numpy as np
    import torch

    from bksdm_edge.quality.digits import image_grid

    cols = [np.load(work / "images" / f"{r['name']}.npy") for r in rows]
    per_digit = len(cols[0]) // 10
    images = np.stack([c[d * per_digit] for d in range(10) for c in cols])
    image_grid(torch.from_numpy(images).permute(0, 3, 1, 2), rows=10, scale=2).save(path)


def main(argv=None) -> int:
    from few_step_jobs import FewStepConfig, run, summarise

    from bksdm_edge.bench.machine import isa_text, machine_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = FewStepConfig()
    for f in fields(FewStepConfig):
        default = getattr(d, f.name)
        kind = {"nargs": "+", "type": int} if isinstance(default, tuple) else {"type": type(default)}
        p.add_argument("--" + f.name.replace("_", "-"), default=default, **kind)
    p.add_argument("--work", type=Path, default=Path("/tmp/bksdm-few-step"), help="records, runs, bundle, images")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/mini_sd")
    args = p.parse_args(argv)
    cfg = FewStepConfig(**{f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v
                           for f in fields(FewStepConfig)})
    cmd = " ".join(["nice -n 5 python benchmarks/mini_sd/few_step.py",
                    *(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))])
    machine = machine_info()
    t0 = time.perf_counter()
    rows = run(cfg, args.work, log=lambda m: print(f"[{time.perf_counter() - t0:7.1f} s] {m}", flush=True))
    meta = {"command": cmd, "machine": f"{machine['cpu']}, {machine['usable_cpus']} usable CPUs, {isa_text(machine)}",
            "load_start": machine["load_average"], "machine_info": machine}
    doc, md = summarise(rows, cfg, meta, args.work)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "few_step.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (args.results / "few_step.md").write_text(
        md + "\n![prompt accuracy and Fréchet distance vs U-Net calls per image](few_step_plot.png)\n\n"
        "![seed 0 of each digit (grid rows) for every table row (columns, in table order)](few_step_grid.png)\n")
    _plot(rows, cfg, args.results / "few_step_plot.png")
    _grid(args.work, rows, args.results / "few_step_grid.png")
    print(md)
    return 0 if all(g["met"] for g in doc["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
