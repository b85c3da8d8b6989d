"""Sensitivity: what removing each unit alone costs and saves.

Every option of ``space.options`` (one pair fewer in a level, a stage's attentions, the mid block, the innermost
stage) is applied alone to the teacher and measured: parameters and paper-convention MACs (exact, from the
cost model), optionally the latency of one U-Net step on a backend (through the benchmark runner, one process
per plan, teacher in the same run), and the output error of the teacher-initialised student against the
teacher on U-Net inputs recorded from real denoising trajectories (normalised MSE, PSNR and cosine of the
noise prediction, the metrics the export validation uses). Results: ``sensitivity.json``, ``sensitivity.md``,
``sensitivity.png`` and one plan file per option under ``units/``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import BksdmError
from .cost import Cost, CostModel
from .plan import Plan
from .space import Option, options

SENSITIVITY_JSON = "sensitivity.json"


@dataclass(frozen=True)
class ErrorProtocol:
    """How the output error is measured: U-Net inputs recorded from the teacher's own pipeline runs.

    Attributes:
        prompts: one pipeline run per prompt (seeded ``seed + i``), classifier-free guidance ``guidance_scale``.
        steps: denoising steps per run (PNDM calls the U-Net steps + 1 times, each with the uncond/cond pair).
        max_inputs: recorded U-Net inputs kept, evenly spaced over all runs and steps.
        batch: inputs per forward pass.
    """

    prompts: tuple[str, ...]
    steps: int = 10
    guidance_scale: float = 7.5
    seed: int = 0
    max_inputs: int = 32
    batch: int = 8


@dataclass(frozen=True)
class LatencyProtocol:
    """Latency of one U-Net step (batch 1).

    By default on a benchmark backend, every plan in its own process (``bench``: any backend, isolated memory).
    ``interleaved`` (PyTorch fp32 only) times the teacher and one plan at a time in this process, alternating
    steps, so slow changes of the machine's load hit both alike: robust ratios on a shared machine.
    """

    backend: str = "pytorch"
    precision: str = "fp32"
    threads: int = 2
    repeats: int = 5
    warmup: int = 1
    interleaved: bool = False


@dataclass(frozen=True)
class SensitivityConfig:
    """One sensitivity run.

    Attributes:
        teacher: model source (``builtin:...``, a diffusers folder, a hub id).
        resolution: image size in pixels (default: the model's native size).
        maps: ``all`` measures every weight map of a removed level, ``paper`` only the paper's.
        error: the output-error protocol, or None to skip it (costs only: full-size random weights).
        latency: the latency protocol, or None to skip it.
    """

    teacher: str
    resolution: int | None = None
    maps: str = "all"
    error: ErrorProtocol | None = None
    latency: LatencyProtocol | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SensitivityConfig:
        error = d.get("error")
        latency = d.get("latency")
        return cls(teacher=d["teacher"], resolution=d.get("resolution"), maps=d.get("maps", "all"),
                   error=ErrorProtocol(**{**error, "prompts": tuple(error["prompts"])}) if error else None,
                   latency=LatencyProtocol(**latency) if latency else None)


def _nmse(actual: np.ndarray, reference: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    return float(np.sum((actual.astype(np.float64) - ref) ** 2) / np.sum(ref**2))


class ErrorProbe:
    """The teacher's noise predictions on recorded inputs, and the error of any plan's student on them.

    Two errors, because they fail differently. ``nmse``: of the noise prediction itself, over every recorded
    row. ``guidance_nmse``: of the guidance direction ``ε(cond) - ε(uncond)`` of each recorded classifier-free
    guidance pair, the only part of the prediction that carries the prompt. It is small next to the noise
    prediction, so a student that ignores the prompt (say, without cross-attention) has a small ``nmse`` but a
    ``guidance_nmse`` near 1; the first digits evidence run, ranked by ``nmse`` alone, picked exactly such plans
    (docs/plans.md). ``damage`` = ``nmse + guidance_nmse`` is what the search minimises.

    Args:
        model: the teacher ``SDModel`` with weights (U-Net, VAE, text encoder, tokenizer, scheduler).
        protocol: how inputs are recorded (guidance > 1 records uncond/cond pairs).
        resolution: image size in pixels.
    """

    def __init__(self, model, protocol: ErrorProtocol, resolution: int):
        import torch

        from ..export.inputs import PipelineRun, record_pipeline

        self.model, self.protocol = model, protocol
        runs = [PipelineRun(prompt=p, seed=protocol.seed + i, steps=protocol.steps, components=("unet",))
                for i, p in enumerate(protocol.prompts)]
        recordings = record_pipeline(model, resolution, resolution, runs, guidance_scale=protocol.guidance_scale)
        calls = [call for rec in recordings for call in rec["unet"]]
        self.paired = all(len(call) == 2 for call in calls)  # CFG: [uncond, cond] per call
        per_call = 2 if self.paired else 1
        keep = np.unique(np.linspace(0, len(calls) - 1, min(max(protocol.max_inputs // per_call, 1), len(calls)))
                         .round().astype(int))
        rows = [row for i in keep for row in calls[i]]
        batch = max(protocol.batch - protocol.batch % per_call, per_call)  # pairs stay in one batch
        self.inputs = [
            tuple(torch.from_numpy(np.stack([r[k] for r in rows[i:i + batch]]))
                  for k in ("sample", "timestep", "encoder_hidden_states"))
            for i in range(0, len(rows), batch)
        ]
        self.count = len(rows)
        self.reference = self._run(model.unet)

    def _run(self, unet) -> np.ndarray:
        import torch

        with torch.no_grad():
            return np.concatenate([unet(x, t, e, return_dict=False)[0].float().numpy() for x, t, e in self.inputs])

    def compare(self, out: np.ndarray) -> dict[str, float]:
        """The errors of predictions ``out`` (on this probe's inputs) against the teacher's."""
        from ..metrics import cosine, psnr

        result = {"nmse": _nmse(out, self.reference), "psnr_db": psnr(self.reference, out),
                  "cosine": cosine(self.reference, out)}
        if self.paired:
            guide, guide_ref = out[1::2] - out[0::2], self.reference[1::2] - self.reference[0::2]
            result["guidance_nmse"] = _nmse(guide, guide_ref)
            result["guidance_cosine"] = cosine(guide_ref, guide)
        result["damage"] = result["nmse"] + result.get("guidance_nmse", 0.0)
        return result

    def measure(self, plan: Plan) -> dict[str, float]:
        """The errors of the teacher-initialised student of ``plan`` against the teacher (see the class doc)."""
        from ..student import build_student

        student, _ = build_student(self.model.unet, plan)
        return self.compare(self._run(student))


def measure_latency(source: str, plans: dict[str, Plan], protocol: LatencyProtocol, resolution: int,
                    out_dir: Path, *, cache: Path | None = None, log: Callable[[str], None] = print
                    ) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Median U-Net step latency of the teacher and every plan, in one benchmark run under ``out_dir`` (or
    interleaved in this process, see ``LatencyProtocol``).

    Returns ({name: seconds or None when the scenario failed, "teacher" included}, the benchmark document).
    """
    from ..bench.runner import run_benchmark
    from ..bench.scenario import expand

    if protocol.interleaved:
        return interleaved_latency(source, plans, protocol, resolution, out_dir, log=log)

    files = {name: str(plan.save(out_dir / "plans" / f"{name}.yaml").resolve()) for name, plan in plans.items()}
    raw = {"name": out_dir.name, "source": source,
           "defaults": {"resolution": resolution, "batch": 1, "threads": protocol.threads,
                        "repeats": protocol.repeats, "warmup": protocol.warmup},
           "matrix": [{"model": ["teacher", *files.values()], "component": "unet", "backend": protocol.backend,
                       "precision": protocol.precision}]}
    doc = run_benchmark(expand(raw), out_dir, cache=cache, log=log)
    by_model = {r["model"]: r.get("median_s") for r in doc["rows"]}
    latency = {name: by_model.get(path) for name, path in files.items()}
    latency["teacher"] = by_model.get("teacher")
    return latency, doc


def interleaved_latency(source: str, plans: dict[str, Plan], protocol: LatencyProtocol, resolution: int,
                        out_dir: Path, *, log: Callable[[str], None] = print) -> tuple[dict[str, float], dict[str, Any]]:
    """Teacher and each plan timed alternately in this process (seeded random weights: latency does not depend on
    them); a plan's latency is its median / the teacher's median over the same window, times the teacher's
    overall median. Writes ``out_dir/interleaved.json``."""
    import torch
    from diffusers import UNet2DConditionModel

    from ..bench.machine import machine_info
    from ..loading import load_model

    if protocol.backend != "pytorch" or protocol.precision != "fp32":
        raise BksdmError(f"interleaved latency runs PyTorch fp32 in this process, not {protocol.backend} "
                         f"{protocol.precision}; drop --latency-interleaved to use the benchmark backends")
    model = load_model(source, components=("unet", "vae"), weights=False)
    config = {k: v for k, v in dict(model.unet.config).items() if not k.startswith("_")}
    side = resolution // model.vae_scale_factor
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(1, config["in_channels"], side, side, generator=g), torch.tensor([500]),
              torch.randn(1, 77, config["cross_attention_dim"], generator=g))
    threads = torch.get_num_threads()
    torch.set_num_threads(protocol.threads)

    def step(unet) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            unet(*inputs)
        return time.perf_counter() - start

    record: dict[str, Any] = {}
    machine_start = machine_info()
    try:
        torch.manual_seed(0)
        teacher = UNet2DConditionModel.from_config(config).eval()
        for name, plan in plans.items():
            torch.manual_seed(0)
            student = UNet2DConditionModel.from_config(plan.student_config(config)).eval()
            for _ in range(protocol.warmup):
                step(teacher), step(student)
            times: dict[str, list[float]] = {"teacher": [], "student": []}
            for r in range(protocol.repeats):  # alternate which goes first
                for who, unet in (("teacher", teacher), ("student", student))[:: 1 if r % 2 == 0 else -1]:
                    times[who].append(step(unet))
            ratio = float(np.median(times["student"]) / np.median(times["teacher"]))
            record[name] = {"ratio": ratio, "teacher_s": times["teacher"], "student_s": times["student"]}
            log(f"  {name}: {ratio:.3f} of the teacher's step")
            del student
    finally:
        torch.set_num_threads(threads)
    teacher_s = float(np.median([t for r in record.values() for t in r["teacher_s"]])) if record else None
    latency: dict[str, float | None] = {name: r["ratio"] * teacher_s for name, r in record.items()}
    latency["teacher"] = teacher_s
    doc = {"mode": "interleaved", "protocol": asdict(protocol), "resolution": resolution, "plans": record,
           "machine": {"start": machine_start, "end": machine_info()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "interleaved.json").write_text(json.dumps(doc, indent=2))
    return latency, doc


def load_teacher(source: str, *, weights: bool):
    from ..loading import load_model

    return load_model(source, weights=weights)


def _native_resolution(model) -> int:
    return int(model.unet.config.sample_size) * model.vae_scale_factor


def feasible_options(cost_model: CostModel, teacher_config, maps: str) -> tuple[list[Option], list[dict]]:
    """The options whose student fits the teacher, and the rest with the reason."""
    from ..student import validate_plan

    ok, skipped = [], []
    for option in options(maps):
        try:
            validate_plan(option.genome.plan(option.name), teacher_config)
            ok.append(option)
        except BksdmError as err:
            skipped.append({"group": option.group, "key": option.key, "reason": str(err)})
    return ok, skipped


def cost_row(cost: Cost, teacher: Cost) -> dict[str, Any]:
    return {"params": cost.params, "macs_paper": cost.macs_paper, "macs_full": cost.macs_full,
            **{f"{k}_ratio": v for k, v in cost.ratios(teacher).items()}}


def run_sensitivity(config: SensitivityConfig, out_dir: str | Path, *, log: Callable[[str], None] = print,
                    progress: bool = True, bench_cache: Path | None = None) -> dict[str, Any]:
    """Measure every option alone (see the module docstring) and write the results under ``out_dir``.

    Returns the results document (also ``sensitivity.json``).
    """
    from tqdm.auto import tqdm

    from ..bench.machine import machine_info

    out = Path(out_dir)
    started = time.time()
    # 1. The teacher: configs only unless the error is measured.
    model = load_teacher(config.teacher, weights=config.error is not None)
    resolution = config.resolution or _native_resolution(model)
    cost_model = CostModel(model.unet.config, resolution, model.vae_scale_factor)
    feasible, skipped = feasible_options(cost_model, model.unet.config, config.maps)
    out.mkdir(parents=True, exist_ok=True)
    machine_start = machine_info()
    rows = []
    for option in feasible:
        plan = option.genome.plan(option.name, option.label)
        plan.save(out / "units" / f"{option.name}.yaml")
        rows.append({"group": option.group, "key": option.key, "label": option.label, "plan_file":
                     f"units/{option.name}.yaml", **cost_row(cost_model.cost(plan), cost_model.teacher)})
    # 2. Output error of each option's teacher-initialised student.
    if config.error is not None:
        log(f"recording U-Net inputs: {len(config.error.prompts)} prompt(s) x {config.error.steps} steps ...")
        probe = ErrorProbe(model, config.error, resolution)
        for row, option in tqdm(list(zip(rows, feasible)), desc="output error", disable=not progress):
            row.update(probe.measure(option.genome.plan(option.name)))
    # 3. Latency, one benchmark run with the teacher.
    teacher_latency = None
    if config.latency is not None:
        plans = {o.name: o.genome.plan(o.name, o.label) for o in feasible}
        latency, _ = measure_latency(config.teacher, plans, config.latency, resolution, out / "latency",
                                     cache=bench_cache, log=log)
        teacher_latency = latency["teacher"]
        for row, option in zip(rows, feasible):
            row["latency_s"] = latency.get(option.name)
            if teacher_latency and row["latency_s"]:
                row["latency_ratio"] = row["latency_s"] / teacher_latency
    doc = {
        "kind": "plan-sensitivity",
        "config": config.to_json(),
        "resolution": resolution,
        "teacher": {"source": config.teacher, **cost_row(cost_model.teacher, cost_model.teacher),
                    "latency_s": teacher_latency},
        "error_inputs": probe.count if config.error is not None else 0,
        "options": rows,
        "skipped": skipped,
        "machine": {"start": machine_start, "end": machine_info()},
        "wall_s": round(time.time() - started, 1),
        "versions": _versions(),
    }
    write_sensitivity(doc, out)
    return doc


def _versions() -> dict[str, str]:
    import diffusers
    import torch

    from .. import __version__

    return {"bksdm_edge": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}


def load_sensitivity(path: str | Path) -> dict[str, Any]:
    """Read ``sensitivity.json`` (a file, or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / SENSITIVITY_JSON
    if not path.is_file():
        raise BksdmError(f"{path} does not exist; run `bksdm-edge plan sensitivity` first")
    doc = json.loads(path.read_text())
    if doc.get("kind") != "plan-sensitivity":
        raise BksdmError(f"{path} is not a plan-sensitivity result")
    return doc


# ---------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * (1 - x):.1f}%"


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def sensitivity_markdown(doc: dict[str, Any]) -> str:
    cfg, t = doc["config"], doc["teacher"]
    err, lat = cfg.get("error"), cfg.get("latency")
    lines = [
        f"# Plan sensitivity: {cfg['teacher']}",
        "",
        f"Each option applied alone to the teacher at {doc['resolution']} px (one U-Net step, batch 1). Teacher: "
        f"{t['params']:,} params, {t['macs_paper'] / 1e9:.3f} GMACs (paper convention)"
        + (f", {t['latency_s']:.4g} s per step" if t.get("latency_s") else "") + ". Saved = 1 - student/teacher.",
        "",
    ]
    if err:
        lines += [f"Output error of the teacher-initialised student on {doc['error_inputs']} U-Net inputs recorded "
                  f"from {len(err['prompts'])} pipeline run(s) ({err['steps']} steps, guidance "
                  f"{err['guidance_scale']}): NMSE = |student - teacher|² / |teacher|² of the noise prediction "
                  "(lower is better), PSNR and cosine of it as in the export validation; guidance NMSE and cosine "
                  "of the guidance direction ε(cond) - ε(uncond) of each recorded pair (what carries the prompt); "
                  "damage = NMSE + guidance NMSE (what the search minimises).", ""]
    if lat:
        how = ("the teacher and each plan timed alternately in one process, ratio of medians "
               "(`latency/interleaved.json`)" if lat.get("interleaved") else
               "each plan in its own process (benchmark report in `latency/`)")
        lines += [f"Latency: median of {lat['repeats']} after {lat['warmup']} warm-up, {lat['backend']} "
                  f"{lat['precision']}, {lat['threads']} thread(s), {how}.", ""]
    columns = ["group", "option", "params saved", "MACs saved"] + (["latency saved"] if lat else []) + (
        ["NMSE", "PSNR dB", "cosine", "guidance NMSE", "guidance cosine", "damage"] if err else [])
    lines += ["| " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (len(columns) - 2)]
    for r in sorted(doc["options"], key=lambda r: (r["group"], r.get("damage", r.get("nmse", 0)))):
        cells = [r["group"], r["key"], _pct(r["params_ratio"]), _pct(r["macs_ratio"])]
        if lat:
            cells.append(_pct(r.get("latency_ratio")))
        if err:
            cells += [_num(r.get("nmse"), ".4f"), _num(r.get("psnr_db"), ".1f"), _num(r.get("cosine"), ".4f"),
                      _num(r.get("guidance_nmse"), ".4f"), _num(r.get("guidance_cosine"), ".4f"),
                      _num(r.get("damage"), ".4f")]
        lines.append("| " + " | ".join(cells) + " |")
    if doc["skipped"]:
        lines += ["", "Not measured, their weight maps do not fit this teacher's shapes (reasons in sensitivity.json): "
                  + ", ".join(f"{s['group']}={s['key']}" for s in doc["skipped"]) + "."]
    lines += ["", machine_line(doc["machine"]) + f" Wall time {doc['wall_s']} s.", ""]
    return "\n".join(lines)


def machine_line(machine: dict[str, Any]) -> str:
    """One line naming the CPU, its ISA flags and the load at start and end (start/end machine_info)."""
    m, end = machine["start"], machine["end"]
    return (f"Machine: {m.get('cpu')}, {m.get('usable_cpus')} usable CPUs, flags {', '.join(m.get('cpu_flags') or [])}; "
            f"load average {m.get('load_average')} at start, {end.get('load_average')} at end.")


def _group_kind(group: str) -> str:
    return group.split(".")[0]


def plot_sensitivity(doc: dict[str, Any], path: Path) -> Path:
    """Left: what each option saves (params, MACs, latency). Right (with the error): MACs saved vs output error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(doc["options"], key=lambda r: (r["group"], r["key"]))
    with_error = [r for r in rows if "nmse" in r]
    metric = "damage" if all("damage" in r for r in with_error) else "nmse"
    fig, axes = plt.subplots(1, 2 if with_error else 1, figsize=(15 if with_error else 8, max(5, 0.28 * len(rows))),
                             squeeze=False)
    ax = axes[0][0]
    names = [f"{r['group']}={r['key']}" for r in rows]
    y = np.arange(len(rows))
    bars = [("params_ratio", "params"), ("macs_ratio", "MACs (paper)"), ("latency_ratio", "latency")]
    bars = [(k, label) for k, label in bars if any(r.get(k) for r in rows)]
    height = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        ax.barh(y + i * height, [100 * (1 - r[key]) if r.get(key) else 0 for r in rows], height, label=label)
    ax.set_yticks(y + height * (len(bars) - 1) / 2, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("saved vs the teacher (%)")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    if with_error:
        ax = axes[0][1]
        colors = {"depth": "tab:blue", "attn": "tab:orange", "stages+mid": "tab:green"}
        for kind, color in colors.items():
            pts = [r for r in with_error if _group_kind(r["group"]) == kind]
            ax.scatter([1 - r["macs_ratio"] for r in pts], [r[metric] for r in pts], c=color, label=kind, s=28)
            for r in pts:
                ax.annotate(f"{r['group']}={r['key']}".replace("+mid-", " mid-"), (1 - r["macs_ratio"], r[metric]),
                            fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_xlabel("MACs saved (paper convention)")
        ax.set_ylabel(f"{'damage (NMSE + guidance NMSE)' if metric == 'damage' else 'output NMSE'} of the "
                      "teacher-initialised student")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Removing one unit of {doc['config']['teacher']} at {doc['resolution']} px", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_sensitivity(doc: dict[str, Any], out: Path) -> None:
    (out / SENSITIVITY_JSON).write_text(json.dumps(doc, indent=2))
    (out / "sensitivity.md").write_text(sensitivity_markdown(doc))
    plot_sensitivity(doc, out / "sensitivity.png")


def default_prompts() -> tuple[str, ...]:
    from ..export.inputs import read_prompts

    return tuple(read_prompts()[:4])


__all__ = ["ErrorProtocol", "LatencyProtocol", "SensitivityConfig", "ErrorProbe", "run_sensitivity",
           "load_sensitivity", "measure_latency", "sensitivity_markdown"]
