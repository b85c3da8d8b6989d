"""Few-step generation at small scale (issue 13 part 4), on the digits teacher: the jobs and the table behind
``benchmarks/mini_sd/few_step.py`` (an experiment built from library calls: ``bksdm_edge.distill`` with
``objective="lcm"``, ``bksdm_edge.export``, ``bksdm_edge.generate``, ``bksdm_edge.quality.digits``).

A KD-distilled BK-SDM-Tiny (the ablation's setup (c): teacher init, task + output KD + feature KD;
``ablation_jobs.run_cell``) is made few-step with latent consistency distillation against the teacher's CFG
trajectories, then scored with the digit scorer (prompt accuracy, Fréchet distance) at 1, 2, 4 and 8 LCM steps,
in PyTorch and from an exported bundle (ONNX int8 by default), next to:

- the teacher at 25 PNDM steps with CFG (the reference), and at 1, 2, 4, 8 PNDM steps with CFG;
- the KD student (before LCM) at 25 and at 1, 2, 4, 8 PNDM steps with CFG (what cutting steps alone gives).

Every image of digit d and seed s starts from the latents ``torch.Generator().manual_seed(s)`` draws (as
diffusers does; the same latents in every row); an LCM run's re-noising noise between steps comes from
``NoiseStream(s)`` in PyTorch too (``portable_lcm_noise``), so the PyTorch and bundle images of one (d, s) are
the same computation and their PSNR says what the export changed. Every job writes one JSON record (and its
images) under the work folder, so a stopped run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ablation_jobs import AblationConfig, cell_name, ensure_data, run_cell

VARIANT = "bk-tiny"
GOALS = {4: 0.90, 2: 0.80}  # minimum prompt accuracy at 4 and at 2 LCM steps (issue 13)


@dataclass(frozen=True)
class FewStepConfig:
    """The recipe and the evaluation protocol.

    Attributes:
        teacher / resolution: the digits teacher and its image size.
        kd_steps / kd_batch / kd_lr: the KD student (ablation setup (c), seed ``seed``).
        lcm_steps / lcm_batch / lcm_lr: latent consistency distillation of that student.
        w_min / w_max: CFG scales the LCM teacher samples (diffusers' convention); the student embeds them.
        num_ddim_timesteps: DDIM solver steps of the distillation (also the LCMScheduler's original steps).
        loss: "huber" or "l2". target: the LCM output scored ("unet" online student, "unet_target" EMA).
        guidance: CFG scale of every guided sampler here, and the scale the LCM student is asked for.
        step_counts: the few-step settings scored. teacher_steps: the reference's PNDM steps.
        eval_seeds: images per digit prompt (10 prompts x eval_seeds images per row).
        bundle_format / bundle_precision: the exported LCM bundle that is scored too.
        seed: seed of both distillations.
    """

    teacher: str = "builtin:mini-sd-digits"
    resolution: int = 32
    kd_steps: int = 50
    kd_batch: int = 32
    kd_lr: float = 5e-4
    lcm_steps: int = 300
    lcm_batch: int = 32
    lcm_lr: float = 5e-4
    w_min: float = 2.0
    w_max: float = 8.0
    num_ddim_timesteps: int = 50
    loss: str = "huber"
    target: str = "unet"
    guidance: float = 4.0
    step_counts: tuple[int, ...] = (1, 2, 4, 8)
    teacher_steps: int = 25
    eval_seeds: int = 10
    bundle_format: str = "onnx"
    bundle_precision: str = "int8"
    seed: int = 0


def _jobs(cfg: FewStepConfig) -> list[tuple[int, int]]:
    """(digit, seed) of every image, digit-major (image i of digit d uses seed i)."""
    return [(d, s) for d in range(10) for s in range(cfg.eval_seeds)]


def _latents(cfg: FewStepConfig, channels: int, side: int):
    from bksdm_edge.quality.digits import initial_latents

    return initial_latents([s for _, s in _jobs(cfg)], channels, side)


def unet_calls(sampler: str, steps: int) -> int:
    """U-Net calls of one image: PNDM + CFG makes steps + 1 calls (steps > 1) of two rows each; LCM one per step."""
    if sampler == "lcm":
        return steps
    return 2 * (steps + (1 if steps > 1 else 0))


def torch_images(cfg: FewStepConfig, unet: Path | None, steps: int, batch: int = 50) -> np.ndarray:
    """uint8 HWC images of every (digit, seed) from the PyTorch pipeline (an LCM U-Net: diffusers'
    LatentConsistencyModelPipeline with its LCMScheduler, re-noising from the portable noise stream)."""
    import torch

    from bksdm_edge.distill.lcm import portable_lcm_noise
    from bksdm_edge.loading import load_model
    from bksdm_edge.quality.digits import caption

    model = load_model(cfg.teacher, unet=unet)
    pipe = model.to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    jobs = _jobs(cfg)
    latents = _latents(cfg, pipe.unet.config.in_channels, cfg.resolution // pipe.vae_scale_factor)
    out = []
    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        noise = portable_lcm_noise([s for _, s in chunk]) if model.is_lcm else contextlib.nullcontext()
        with noise, torch.no_grad():
            res = pipe(prompt=[caption(d) for d, _ in chunk], latents=latents[i : i + len(chunk)],
                       num_inference_steps=steps, guidance_scale=cfg.guidance, height=cfg.resolution,
                       width=cfg.resolution, output_type="np")
        out.append((res.images * 255).round().astype(np.uint8))
    return np.concatenate(out)


def bundle_images(cfg: FewStepConfig, bundle: Path, steps: int) -> np.ndarray:
    """The same images from an exported bundle (``BundlePipeline``: no PyTorch in the loop)."""
    from bksdm_edge.generate import BundlePipeline
    from bksdm_edge.quality.digits import caption

    pipe = BundlePipeline(bundle, threads=1)
    c, h = pipe.latent_shape()[1:3]
    latents = _latents(cfg, c, h).numpy()
    return np.stack([pipe(caption(d), steps=steps, guidance=cfg.guidance, seed=s, latents=latents[i : i + 1])[0]
                     for i, (d, s) in enumerate(_jobs(cfg))])


def _record(work: Path, name: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A job's record: read when stored, else made, timed and stored."""
    path = work / "records" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    started = time.perf_counter()
    rec = {"name": name, **make()}
    rec["job_s"] = round(time.perf_counter() - started, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=2))
    return rec


def _row(cfg: FewStepConfig, work: Path, name: str, model: str, sampler: str, steps: int,
         images_fn: Callable[[], np.ndarray]) -> dict[str, Any]:
    import torch

    from bksdm_edge.quality.digits import score_digits

    def make():
        t = time.perf_counter()
        images = images_fn()
        gen_s = time.perf_counter() - t
        (work / "images").mkdir(parents=True, exist_ok=True)
        np.save(work / "images" / f"{name}.npy", images)
        s = score_digits(torch.from_numpy(images).permute(0, 3, 1, 2), [d for d, _ in _jobs(cfg)],
                         resolution=cfg.resolution)
        return {"kind": "row", "model": model, "sampler": sampler, "steps": steps,
                "unet_calls": unet_calls("lcm" if sampler.startswith("LCM") else "pndm", steps),
                "generation_s": round(gen_s, 1), **{k: s[k] for k in ("prompt_accuracy", "frechet_distance",
                                                                       "per_digit_accuracy", "n_images")}}

    return _record(work, name, make)


def kd_student(cfg: FewStepConfig, work: Path) -> Path:
    """The KD-distilled BK-SDM-Tiny (the ablation's setup (c)); its cell record holds its 25-step PNDM score."""
    acfg = AblationConfig(teacher=cfg.teacher, resolution=cfg.resolution, steps=cfg.kd_steps,
                          batch_size=cfg.kd_batch, lr=cfg.kd_lr, seeds=(cfg.seed,), eval_seeds=cfg.eval_seeds,
                          eval_steps=cfg.teacher_steps, guidance_scale=cfg.guidance)
    ensure_data(work, acfg)
    run_cell(VARIANT, "c", cfg.seed, acfg, work)
    return work / "runs" / cell_name(VARIANT, "c", cfg.seed) / "unet"


def lcm_student(cfg: FewStepConfig, work: Path, kd_unet: Path) -> Path:
    """``distill(objective="lcm")`` of the KD student against the teacher; returns the scored U-Net folder."""
    from bksdm_edge.distill import distill
    from bksdm_edge.distill.config import CheckpointConfig, DataConfig, DistillConfig, LcmConfig, OptimConfig

    run = work / "runs" / "lcm"

    def make():
        config = DistillConfig(
            teacher=cfg.teacher, variant=None, student=str(kd_unet), objective="lcm", out=str(run),
            max_steps=cfg.lcm_steps, batch_size=cfg.lcm_batch, seed=cfg.seed, report_to="none", progress=False,
            data=DataConfig(source=str(work / "data"), resolution=cfg.resolution, random_flip=False, num_workers=0),
            optim=OptimConfig(lr=cfg.lcm_lr),
            checkpoint=CheckpointConfig(every=50, keep=1, resume="latest"),
            lcm=LcmConfig(w_min=cfg.w_min, w_max=cfg.w_max, num_ddim_timesteps=cfg.num_ddim_timesteps, loss=cfg.loss),
        )
        result = distill(config, command=["benchmarks/mini_sd/few_step.py", "lcm"])
        return {"kind": "train", "last_losses": result.last_losses, "steps": result.steps}

    _record(work, "train_lcm", make)
    return run / cfg.target


def export_lcm_bundle(cfg: FewStepConfig, work: Path, unet: Path) -> Path:
    """Export the LCM student's pipeline (validated like every export), once."""
    from bksdm_edge.export.pipeline import export_bundle
    from bksdm_edge.export.request import ExportRequest

    out = work / "bundles" / f"lcm_{cfg.bundle_format}-{cfg.bundle_precision}"

    def make():
        export_bundle(ExportRequest(out=out, model=cfg.teacher, unet=unet, format=cfg.bundle_format,
                                    precision=cfg.bundle_precision, overwrite=True, progress=False))
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        return {"kind": "export", "bundle": str(out), "bundle_mb": round(size / 2**20, 2)}

    _record(work, f"export_lcm_{cfg.bundle_format}-{cfg.bundle_precision}", make)
    return out


def run(cfg: FewStepConfig, work: Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every job in order; returns the table's rows (a job whose record exists is read, not rerun)."""
    import torch

    from bksdm_edge.quality.digits import image_psnr

    torch.set_num_threads(1)
    work.mkdir(parents=True, exist_ok=True)
    rows = []

    def row(name, model, sampler, steps, images_fn):
        rec = _row(cfg, work, name, model, sampler, steps, images_fn)
        log(f"{name}: prompt accuracy {rec['prompt_accuracy']:.3f}, Fréchet distance {rec['frechet_distance']:.1f}")
        rows.append(rec)
        return rec

    # 1. The teacher: the reference, and with fewer PNDM steps.
    for k in (cfg.teacher_steps, *cfg.step_counts):
        row(f"teacher_pndm{k}", "teacher", "PNDM + CFG", k, lambda k=k: torch_images(cfg, None, k))
    # 2. The KD student, with fewer PNDM steps.
    kd = kd_student(cfg, work)
    for k in (cfg.teacher_steps, *cfg.step_counts):
        row(f"kd_pndm{k}", f"{VARIANT} KD", "PNDM + CFG", k, lambda k=k: torch_images(cfg, kd, k))
    # 3. The LCM student in PyTorch, then from its bundle (PSNR against the PyTorch images of the same noise).
    lcm = lcm_student(cfg, work, kd)
    for k in cfg.step_counts:
        row(f"lcm_torch{k}", f"{VARIANT} KD + LCM", "LCM, PyTorch", k, lambda k=k: torch_images(cfg, lcm, k))
    bundle = export_lcm_bundle(cfg, work, lcm)
    for k in cfg.step_counts:
        rec = row(f"lcm_bundle{k}", f"{VARIANT} KD + LCM", f"LCM, {cfg.bundle_format} {cfg.bundle_precision} bundle",
                  k, lambda k=k: bundle_images(cfg, bundle, k))
        images = [np.load(work / "images" / f"{n}.npy") for n in (f"lcm_torch{k}", rec["name"])]
        rec["psnr_vs_pytorch"] = image_psnr(*images)
    return rows


def job_seconds(work: Path) -> dict[str, float]:
    """Seconds each stored job took (a resumed run adds up its pieces)."""
    out = {}
    for path in sorted((work / "records").glob("*.json")):
        rec = json.loads(path.read_text())
        out[path.stem] = rec.get("job_s") or (rec.get("train_s", 0) + rec.get("generation_s", 0))
    return out


def goal_check(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the LCM rows meet ``GOALS`` (minimum prompt accuracy per step count), in PyTorch and the bundle."""
    out = {}
    for kind in ("lcm_torch", "lcm_bundle"):
        for steps, minimum in GOALS.items():
            r = next((r for r in rows if r["name"] == f"{kind}{steps}"), None)
            if r is not None:
                out[f"{kind}{steps}"] = {"accuracy": r["prompt_accuracy"], "goal": minimum,
                                         "met": r["prompt_accuracy"] >= minimum}
    return out


def _psnr_cell(r: dict[str, Any]) -> str:
    p = r.get("psnr_vs_pytorch")
    if p is None:
        return "–"
    if p["identical_images"] == p["psnr_images"]:
        return "identical"
    return f"{p['psnr_db_pooled']:.1f} dB (min {p['psnr_db_min']:.1f})"


def summarise(rows: list[dict[str, Any]], cfg: FewStepConfig, meta: dict[str, Any], work: Path) -> tuple[dict, str]:
    """(results json, Markdown)."""
    jobs = job_seconds(work)
    meta = {**meta, "wall_s": round(sum(jobs.values())), "job_s": jobs}
    goals = goal_check(rows)
    doc = {"config": asdict(cfg), **meta, "reference": f"teacher_pndm{cfg.teacher_steps}", "goals": goals,
           "rows": rows}
    n_img = 10 * cfg.eval_seeds
    md = [
        "# Few-step BK-SDM-Tiny: latent consistency distillation at small scale (digits teacher)",
        "",
        f"Teacher `{cfg.teacher}` ({cfg.resolution} px). Student: BK-SDM-Tiny distilled with the ablation's setup (c) "
        f"({cfg.kd_steps} steps, batch {cfg.kd_batch}, lr {cfg.kd_lr}), then `distill --objective lcm` against the "
        f"teacher ({cfg.lcm_steps} steps, batch {cfg.lcm_batch}, lr {cfg.lcm_lr}, w in [{cfg.w_min}, {cfg.w_max}], "
        f"{cfg.num_ddim_timesteps} DDIM solver steps, {cfg.loss} loss; the `{cfg.target}` output is scored). "
        f"Every row: {n_img} images (10 digit prompts x seeds 0-{cfg.eval_seeds - 1}, the same initial latents "
        f"in every row), guidance {cfg.guidance} (CFG in the PNDM rows, the embedded scale in the LCM rows). Prompt "
        "accuracy: higher is better; Fréchet distance of the digit scorer's features vs the held-out real digits: "
        f"lower is better (compare only numbers on {n_img} images). U-Net calls per image count CFG's two rows. "
        "PSNR: the bundle's images against the PyTorch images of the same latents and re-noising noise (0-255 "
        "pixels, pooled MSE; min = the worst image).",
        "",
        "| model | sampler | steps | U-Net calls / image | prompt accuracy | Fréchet distance | PSNR vs PyTorch |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        md.append(f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['unet_calls']} | "
                  f"{r['prompt_accuracy']:.3f} | {r['frechet_distance']:.1f} | {_psnr_cell(r)} |")
    met = "; ".join(f"{k}: {v['accuracy']:.3f} {'>=' if v['met'] else '<'} {v['goal']}" for k, v in goals.items())
    md += ["", f"Goals (issue 13: prompt accuracy >= 0.90 at 4 LCM steps, >= 0.80 at 2): {met}.", "",
           f"Wall time: {meta['wall_s']} s in all, the sum of the stored jobs (KD student "
           f"{jobs.get(cell_name(VARIANT, 'c', cfg.seed), 0):.0f} s with its 25-step score, LCM distillation "
           f"{jobs.get('train_lcm', 0):.0f} s, export {sum(v for k, v in jobs.items() if k.startswith('export')):.0f} s, "
           "the rest generating and scoring images), 1 torch thread, on a shared 2-core CPU "
           f"({meta.get('machine', '')}; load average {meta.get('load_start', '?')} when the last invocation started). "
           "Reproduce:", "", "```", meta.get("command", ""), "```", ""]
    return doc, "\n".join(md)
