"""Do searched removal plans beat the BK-SDM presets at equal cost? Evidence on the digits teacher (issue 16):
the jobs and tables behind ``benchmarks/mini_sd/plans.py`` (an experiment built from library calls:
``bksdm_edge.plans``, ``bksdm_edge.distill``, ``bksdm_edge.quality.digits``, and ``ablation_jobs``' cells).

1. ``plan sensitivity`` on ``builtin:mini-sd-digits`` (output error on inputs recorded from the ten digit
   prompts at the evaluation protocol's 25 PNDM steps and guidance 4; latency of one U-Net step in PyTorch);
2. ``plan search`` at budgets equal to BK-SDM-Base/Small/Tiny's MACs ratio on this teacher and at tighter ones;
3. every searched plan and every preset distilled with the ablation's recipe (setup (c): teacher init, task +
   output KD + feature KD; same steps, batch, lr, seeds: ``ablation_jobs.run_cell``) and scored on the
   digit prompts (prompt accuracy, Fréchet distance);
4. the latency of every plan in one benchmark run; a table and a Pareto plot (quality vs MACs and vs latency).

Each step writes its result and is skipped when the result exists, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import ablation_jobs as ablation

TEACHER = ablation.AblationConfig().teacher
RESOLUTION = ablation.AblationConfig().resolution


@dataclass(frozen=True)
class EvidenceConfig:
    """The evidence run. ``train`` is the ablation's recipe; only the number of scored images differs from it.

    Attributes:
        train: distillation recipe and scoring (steps, batch, lr, seeds, images per digit prompt).
        extra_budgets: MACs fractions searched besides the presets' own ratios.
        prompt_path: (MACs fraction, --min-attention) searches besides the default (one attention block kept).
        inputs / batch: recorded U-Net inputs for the output error, and the forward batch.
        latency_repeats / latency_warmup / latency_threads: the PyTorch U-Net step timing.
    """

    train: ablation.AblationConfig = field(default_factory=lambda: ablation.AblationConfig(steps=50, eval_seeds=10))
    extra_budgets: tuple[float, ...] = (0.5, 0.45)
    prompt_path: tuple[tuple[float, int], ...] = ((0.5, 3), (0.45, 3))
    inputs: int = 128
    batch: int = 64
    latency_repeats: int = 100
    latency_warmup: int = 10
    latency_threads: int = 1


def error_protocol(cfg: EvidenceConfig):
    from bksdm_edge.plans.sensitivity import ErrorProtocol
    from bksdm_edge.quality.digits import eval_prompts

    t = cfg.train
    return ErrorProtocol(prompts=tuple(eval_prompts()), steps=t.eval_steps, guidance_scale=t.guidance_scale,
                         max_inputs=cfg.inputs, batch=cfg.batch)


def latency_protocol(cfg: EvidenceConfig):
    from bksdm_edge.plans.sensitivity import LatencyProtocol

    # Interleaved: the shared machine's load changes over minutes; alternating teacher and plan steps in one
    # process keeps each ratio within one window (bench's one-process-per-plan runs drifted by 2x here).
    return LatencyProtocol(backend="pytorch", threads=cfg.latency_threads, repeats=cfg.latency_repeats,
                           warmup=cfg.latency_warmup, interleaved=True)


def preset_budgets(extra: tuple[float, ...]) -> dict[str, float]:
    """Budget label -> MACs fraction: each preset's own ratio on this teacher (rounded up, so it is inside) and
    the extra ones."""
    from bksdm_edge.loading import load_model
    from bksdm_edge.plans.builtin import BUILTIN_PLANS
    from bksdm_edge.plans.cost import CostModel

    model = load_model(TEACHER, components=("unet", "vae"), weights=False)
    costs = CostModel(model.unet.config, None, model.vae_scale_factor)
    out = {f"={name}": math.ceil(costs.cost(plan).macs_paper / costs.teacher.macs_paper * 1e4) / 1e4
           for name, plan in BUILTIN_PLANS.items()}
    out.update({f"{x:g}": x for x in extra})
    return out


def run(work: Path, results: Path, cfg: EvidenceConfig = EvidenceConfig(), *, log: Callable[[str], None] = print,
        command: str = "") -> dict[str, Any]:
    """Run (or resume) every step; returns the summary document (also ``results/plans.json``)."""
    import torch

    from bksdm_edge.plans.builtin import BUILTIN_PLANS
    from bksdm_edge.plans.plan import load_plan
    from bksdm_edge.plans.search import SearchConfig, run_search
    from bksdm_edge.plans.sensitivity import SensitivityConfig, load_sensitivity, measure_latency, run_sensitivity

    torch.set_num_threads(1)
    started = time.time()
    work.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    ablation.ensure_data(work, cfg.train)
    # 1. Sensitivity.
    sens_dir = results / "sensitivity"
    if not (sens_dir / "sensitivity.json").exists():
        log("sensitivity ...")
        run_sensitivity(SensitivityConfig(teacher=TEACHER, error=error_protocol(cfg), latency=latency_protocol(cfg)),
                        sens_dir, log=log, bench_cache=work / "bench-cache")
    sensitivity = load_sensitivity(sens_dir)
    # 2. One search per budget.
    budgets = preset_budgets(cfg.extra_budgets)
    plans: dict[str, dict[str, Any]] = {name: {"kind": "preset", "spec": name, "plan": plan}
                                        for name, plan in BUILTIN_PLANS.items()}
    searches = [(label, fraction, SearchConfig.min_attention, f"search-macs{label.replace('=', '')}")
                for label, fraction in budgets.items()]
    searches += [(f"{fraction:g}+attn{n}", fraction, n, f"search-macs{fraction:g}-attn{n}")
                 for fraction, n in cfg.prompt_path]
    for label, fraction, min_attention, folder in searches:
        out = results / folder
        if not (out / "search.json").exists():
            log(f"search macs={fraction} --min-attention {min_attention} ...")
            run_search(sensitivity, SearchConfig(budgets=(f"macs={fraction}",), top=1, min_attention=min_attention),
                       out, log=log)
        plan_file = out / "plan-1.yaml"
        plan = load_plan(plan_file)
        # a plan found before (a preset, or another budget's) is distilled once
        same = next((n for n, p in plans.items() if p["plan"].structure == plan.structure and not p.get("same_as")),
                    None)
        key = f"searched@macs{label}"
        plans[key] = {"kind": "searched", "spec": str(plan_file.resolve()), "plan": plan, "budget": fraction,
                      "budget_label": label, "min_attention": min_attention, "same_as": same}
    # 3. Distil and score every distinct plan (a searched plan equal to a preset is the preset's cells).
    teacher = ablation.run_teacher(cfg.train, work)
    for seed in cfg.train.seeds:
        for key, p in plans.items():
            if p.get("same_as"):
                continue
            t = time.perf_counter()
            rec = ablation.run_cell(p["spec"], "c", seed, cfg.train, work, label=_label(key))
            _check_cell_plan(rec, p["plan"])
            log(f"{key} seed {seed}: accuracy {rec['prompt_accuracy']:.3f}, FD {rec['frechet_distance']:.1f} "
                f"({time.perf_counter() - t:.0f} s)")
    # 4. Latency of every plan, one run.
    lat_dir = results / "latency"
    latency_file = lat_dir / "plans_latency.json"
    if not latency_file.exists():
        distinct = {_label(k): p["plan"] for k, p in plans.items() if not p.get("same_as")}
        latency, _ = measure_latency(TEACHER, distinct, latency_protocol(cfg), RESOLUTION, lat_dir,
                                     cache=work / "bench-cache", log=log)
        latency_file.write_text(json.dumps(latency, indent=2))
    latency = json.loads(latency_file.read_text())
    doc = summarise(plans, teacher, ablation.load_records(work), latency, sensitivity, cfg,
                    {"wall_s": round(time.time() - started), "command": command})
    (results / "plans.json").write_text(json.dumps(doc, indent=2))
    (results / "plans.md").write_text(markdown(doc))
    plot(doc, results / "plans_pareto.png")
    return doc


def _check_cell_plan(rec: dict[str, Any], plan) -> None:
    """A stored cell must hold the plan it is filed under (a re-run search may propose another plan)."""
    from bksdm_edge.plans.plan import Plan

    meta = json.loads((Path(rec["unet"]) / "bksdm_edge.json").read_text())
    if Plan.from_dict(meta["plan"]).structure != plan.structure:
        raise RuntimeError(f"{rec['unet']} was distilled with another plan than {plan.name}; delete its record "
                           "under WORK/records to distil the current one")


def _label(key: str) -> str:
    return key.replace("@", "_").replace("=", "")


def _stats(xs: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(xs)), "half_range": float((max(xs) - min(xs)) / 2), "values": xs}


def summarise(plans, teacher, records, latency, sensitivity, cfg: EvidenceConfig, meta) -> dict[str, Any]:
    from bksdm_edge.loading import load_model
    from bksdm_edge.plans.cost import CostModel
    from bksdm_edge.plans.search import Estimates
    from bksdm_edge.plans.space import genome_of

    model = load_model(TEACHER, components=("unet", "vae"), weights=False)
    costs = CostModel(model.unet.config, None, model.vae_scale_factor)
    est = Estimates(sensitivity)
    cells = [r for r in records if r.get("kind") == "cell" and r.get("setup") == "c"]
    rows = []
    for key, p in plans.items():
        source = p.get("same_as") or key
        label = _label(source)
        rs = [r for r in cells if r["variant"] == label and r["seed"] in cfg.train.seeds]
        cost = costs.cost(p["plan"])
        row = {
            "plan": key, "kind": p["kind"], "budget": p.get("budget"), "same_as": p.get("same_as"),
            "summary": p["plan"].summary(), "plan_dict": p["plan"].to_dict(),
            "params_ratio": cost.params / costs.teacher.params, "macs_ratio": cost.macs_paper / costs.teacher.macs_paper,
            "latency_s": latency.get(label), "latency_ratio": (latency.get(label) / latency["teacher"])
            if latency.get(label) and latency.get("teacher") else None,
            "damage_estimate": est.damage_of(genome_of(p["plan"])),
            "seeds": [r["seed"] for r in rs],
        }
        if rs:
            row["prompt_accuracy"] = _stats([r["prompt_accuracy"] for r in rs])
            row["frechet_distance"] = _stats([r["frechet_distance"] for r in rs])
            row["train_s"] = [r["train_s"] for r in rs]
        rows.append(row)
    sens_machine = sensitivity["machine"]
    return {
        "teacher": TEACHER,
        "config": asdict(cfg),
        "teacher_scores": teacher and {k: teacher[k] for k in ("prompt_accuracy", "frechet_distance")},
        "teacher_latency_s": latency.get("teacher"),
        "rows": rows,
        "sensitivity_machine": sens_machine,
        **meta,
    }


def _ms(s: dict[str, float] | None, digits: int) -> str:
    if not s:
        return "–"
    return f"{s['mean']:.{digits}f} ± {s['half_range']:.{digits}f}"


def markdown(doc: dict[str, Any], notes: str = "") -> str:
    c = doc["config"]["train"]
    n_img = 10 * c["eval_seeds"]
    t = doc["teacher_scores"] or {}
    lines = [
        "# Searched removal plans vs the BK-SDM presets (digits teacher)",
        "",
        f"Teacher `{doc['teacher']}`. Every student: teacher init + task + output KD + feature KD (the ablation's "
        f"setup (c), feature pairs from the plan), **{c['steps']} distillation steps**, batch {c['batch_size']}, "
        f"lr {c['lr']}, seeds {', '.join(map(str, c['seeds']))}: the recipe of `ablation.md`. Scored on {n_img} "
        f"images (10 digit prompts x {c['eval_seeds']} seeds, {c['eval_steps']} PNDM steps, guidance "
        f"{c['guidance_scale']}); mean ± half-range over the seeds. Searched plans: `bksdm-edge plan search "
        "--budget macs=X` on the sensitivity data in `sensitivity/` (exact search, best re-measured candidate); "
        "budgets = each preset's MACs ratio on this teacher, and tighter ones; `+attnN`: searched with "
        "`--min-attention N` (default 1). Latency: one U-Net step, PyTorch "
        "fp32, batch 1, 32 px, 1 thread, the teacher and each plan timed alternately in one process, ratio of the "
        "medians (`latency/interleaved.json`).",
        "",
        "| plan | pairs kept (teacher: down 2/2/2/2, mid full, up 3/3/3/3) | params | MACs | latency | init damage est. "
        "| prompt accuracy | Fréchet distance |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        f"| teacher | down 2/2/2/2 \\| mid full \\| up 3/3/3/3 | 1.000 | 1.000 | 1.000 | 0 | "
        f"{t.get('prompt_accuracy', float('nan')):.3f} | {t.get('frechet_distance', float('nan')):.1f} |",
    ]
    for r in sorted(doc["rows"], key=lambda r: -r["macs_ratio"]):
        name = r["plan"] + (f" (= {r['same_as']})" if r["same_as"] else "")
        lat = f"{r['latency_ratio']:.3f}" if r.get("latency_ratio") else "–"
        src = next((x for x in doc["rows"] if x["plan"] == r["same_as"]), r) if r["same_as"] else r
        summary = r["summary"].replace("|", "\\|")
        lines.append(f"| {name} | {summary} | {r['params_ratio']:.3f} | {r['macs_ratio']:.3f} | "
                     f"{lat} | {r['damage_estimate']:.3f} | {_ms(src.get('prompt_accuracy'), 3)} | "
                     f"{_ms(src.get('frechet_distance'), 1)} |")
    lines += ["", "Ratios are student / teacher (MACs: paper convention). Latency ratio: median step time / the "
              f"teacher's ({doc['teacher_latency_s'] and round(doc['teacher_latency_s'] * 1e3, 2)} ms) in the same run.",
              ""]
    if notes:
        lines += [notes, ""]
    m = doc["sensitivity_machine"]["start"]
    lines += [f"Machine: {m.get('cpu')}, flags {', '.join(m.get('cpu_flags') or [])}; shared 2-core machine, load "
              f"average {m.get('load_average')} when the sensitivity run started. Wall time of this run "
              f"{doc.get('wall_s')} s. Reproduce:", "", "```", doc.get("command") or
              "nice -n 5 python benchmarks/mini_sd/plans.py", "```", ""]
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Prompt accuracy and Fréchet distance vs MACs and vs latency, presets and searched plans."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if r.get("prompt_accuracy")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    t = doc["teacher_scores"] or {}
    for col, (xkey, xlabel) in enumerate((("macs_ratio", "MACs / teacher (paper convention)"),
                                          ("latency_ratio", "U-Net step latency / teacher (PyTorch, 1 thread)"))):
        for row, (ykey, ylabel) in enumerate((("prompt_accuracy", "prompt accuracy (higher is better)"),
                                              ("frechet_distance", "Fréchet distance (lower is better)"))):
            ax = axes[row][col]
            for r in rows:
                x = r.get(xkey)
                if x is None:
                    continue
                s = r[ykey]
                style = dict(marker="s", color="tab:blue") if r["kind"] == "preset" else dict(marker="*", color="tab:orange", markersize=12)
                ax.errorbar([x], [s["mean"]], yerr=[s["half_range"]], ls="none", capsize=3, **style)
                ax.annotate(r["plan"].replace("searched@", ""), (x, s["mean"]), fontsize=7, xytext=(4, 4),
                            textcoords="offset points")
            if ykey in t:
                ax.axhline(t[ykey], color="k", lw=0.8, ls=":", label="teacher")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    axes[0][0].plot([], [], "s", color="tab:blue", label="BK-SDM presets")
    axes[0][0].plot([], [], "*", color="tab:orange", markersize=10, label="searched plans (label: MACs budget)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Distilled students of {doc['teacher']} (mean ± half-range over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
