"""The BK-SDM distillation ablation (paper Table 5 / issue 7 part 3) at small scale, on the digits teacher:
the jobs and tables behind ``benchmarks/mini_sd/ablation.py`` (an experiment, not library code; it is built
from library calls: ``bksdm_edge.distill``, ``bksdm_edge.export``, ``bksdm_edge.quality.digits``).

Setups, as data (``SETUPS``):

    (a) teacher init, task loss only            λ_task=1, λ_out=0, λ_feat=0
    (b) teacher init, + output KD               λ_task=1, λ_out=1, λ_feat=0
    (c) teacher init, + output KD + feature KD  λ_task=1, λ_out=1, λ_feat=1
    (d) random init, all three losses           λ_task=1, λ_out=1, λ_feat=1

Every (variant, setup, seed) cell distils for the same number of steps and is scored in PyTorch with the digit
prompt accuracy and Fréchet distance (``quality.digits``). Each variant's (c) seed-0 student is then exported
(ONNX fp32/fp16/int8, TFLite fp32) and its bundle images are scored the same way, plus PSNR against the PyTorch
images generated from the same initial latents.

Every job writes one JSON record under the work folder, so an interrupted run resumes where it stopped and the
tables can be rebuilt from whatever finished (``summarise``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

@dataclass(frozen=True)
class Setup:
    key: str
    label: str
    init: str  # "teacher" or "random"
    lambda_task: float
    lambda_out: float
    lambda_feat: float


SETUPS: tuple[Setup, ...] = (
    Setup("a", "teacher init, task loss only", "teacher", 1.0, 0.0, 0.0),
    Setup("b", "teacher init, + output KD", "teacher", 1.0, 1.0, 0.0),
    Setup("c", "teacher init, + output KD + feature KD", "teacher", 1.0, 1.0, 1.0),
    Setup("d", "random init, task + output KD + feature KD", "random", 1.0, 1.0, 1.0),
)
SETUP_BY_KEY = {s.key: s for s in SETUPS}
VARIANTS = ("bk-base", "bk-small", "bk-tiny")
EXPORT_TARGETS = (("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "fp16"),
                  ("tflite", "int8"))


@dataclass(frozen=True)
class AblationConfig:
    teacher: str = "builtin:mini-sd-digits"
    resolution: int = 32
    steps: int = 40
    batch_size: int = 32
    lr: float = 5e-4
    seeds: tuple[int, ...] = (0, 1)
    eval_seeds: int = 3  # images per digit prompt (10 prompts x eval_seeds)
    eval_steps: int = 25
    guidance_scale: float = 4.0
    psnr_prompts: int = 10  # PSNR over the first N digit prompts x eval_seeds latents


def _threads(n: int = 1) -> None:
    import torch

    torch.set_num_threads(n)


def cell_name(variant: str, setup: str, seed: int) -> str:
    return f"{variant}_{setup}_s{seed}"


def _eval_cfg(cfg: AblationConfig):
    from bksdm_edge.quality.digits import DigitEvalConfig

    return DigitEvalConfig(seeds=cfg.eval_seeds, steps=cfg.eval_steps, guidance_scale=cfg.guidance_scale,
                           batch=10 * cfg.eval_seeds)


def ensure_data(work: Path, cfg: AblationConfig) -> Path:
    from bksdm_edge.quality.digits import write_digits_imagefolder

    data = work / "data"
    if not (data / "metadata.jsonl").exists():
        write_digits_imagefolder(data, cfg.resolution)
    return data


def random_init_student(teacher: str, variant: str, out: Path, seed: int) -> Path:
    """The variant's architecture with fresh (seeded) diffusers init instead of the teacher's weights."""
    import torch
    from diffusers import UNet2DConditionModel

    from bksdm_edge.loading import load_model
    from bksdm_edge.student import build_student, save_student

    model = load_model(teacher)
    student, report = build_student(model.unet, variant)
    torch.manual_seed(seed)
    fresh = UNet2DConditionModel.from_config(student.config)
    save_student(fresh, out, teacher=teacher, report=report, extra={"init": f"random (torch seed {seed})"})
    return out


def _pytorch_pipe(teacher: str, unet_dir: Path | None):
    from bksdm_edge.loading import load_model, load_unet

    model = load_model(teacher)
    if unet_dir is not None:
        model.unet = load_unet(unet_dir)
    pipe = model.to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def score_pytorch(unet_dir: Path | None, cfg: AblationConfig) -> dict[str, Any]:
    from bksdm_edge.quality.digits import generate_digits, score_digits

    t = time.perf_counter()
    images, digits = generate_digits(_pytorch_pipe(cfg.teacher, unet_dir), _eval_cfg(cfg), cfg.resolution)
    s = score_digits(images, digits, resolution=cfg.resolution)
    s["generation_s"] = round(time.perf_counter() - t, 1)
    return s


def run_cell(variant: str, setup_key: str, seed: int, cfg: AblationConfig, work: Path, *,
             label: str | None = None) -> dict[str, Any]:
    """Distil one student and score it; returns (and stores) its record.

    ``variant`` is a built-in plan name or a plan file (docs/plans.md); ``label`` names the cell (default:
    ``variant``).
    """
    from bksdm_edge.distill import distill
    from bksdm_edge.distill.config import CheckpointConfig, DataConfig, DistillConfig, LossConfig, OptimConfig

    setup = SETUP_BY_KEY[setup_key]
    label = label or variant
    name = cell_name(label, setup_key, seed)
    rec_path = work / "records" / f"{name}.json"
    if rec_path.exists():
        return json.loads(rec_path.read_text())
    run = work / "runs" / name
    student = None
    if setup.init == "random":
        student = str(random_init_student(cfg.teacher, variant, work / "init" / f"{label}_s{seed}", seed))
    t = time.perf_counter()
    dc = DistillConfig(
        teacher=cfg.teacher, variant=variant, out=str(run), student=student, max_steps=cfg.steps,
        batch_size=cfg.batch_size, seed=seed, report_to="none", progress=False,
        data=DataConfig(source=str(work / "data"), resolution=cfg.resolution, random_flip=False, num_workers=0),
        loss=LossConfig(setup.lambda_task, setup.lambda_out, setup.lambda_feat),
        optim=OptimConfig(lr=cfg.lr),
        checkpoint=CheckpointConfig(every=0),
    )
    result = distill(dc, command=["benchmarks/mini_sd/ablation.py", name])
    train_s = time.perf_counter() - t
    scores = score_pytorch(Path(result.unet_dir), cfg)
    rec = {"kind": "cell", "variant": label, "setup": setup_key, "seed": seed, "unet": str(result.unet_dir),
           "train_s": round(train_s, 1), "last_losses": result.last_losses, **scores}
    rec_path.parent.mkdir(parents=True, exist_ok=True)
    rec_path.write_text(json.dumps(rec, indent=2))
    return rec


def run_teacher(cfg: AblationConfig, work: Path) -> dict[str, Any]:
    rec_path = work / "records" / "teacher.json"
    if rec_path.exists():
        return json.loads(rec_path.read_text())
    rec = {"kind": "teacher", **score_pytorch(None, cfg)}
    rec_path.parent.mkdir(parents=True, exist_ok=True)
    rec_path.write_text(json.dumps(rec, indent=2))
    return rec


def _num(x: float):
    return "inf" if x == math.inf else round(x, 2)


def _db(x) -> str:
    return "∞ (identical)" if x == "inf" else f"{x:.1f}"


def run_export(variant: str, fmt: str, precision: str, cfg: AblationConfig, work: Path) -> dict[str, Any]:
    """Export the variant's (c) seed-0 student, score the bundle's images, PSNR vs PyTorch on the same latents."""
    from bksdm_edge.export.pipeline import ExportRequest, export_bundle
    from bksdm_edge.generate import BundlePipeline
    from bksdm_edge.quality.digits import caption, generate_bundle_digits, image_psnr, initial_latents, score_digits

    rec_path = work / "records" / f"export_{variant}_{fmt}-{precision}.json"
    if rec_path.exists():
        return json.loads(rec_path.read_text())
    unet = work / "runs" / cell_name(variant, "c", 0) / "unet"
    if not unet.exists():
        raise FileNotFoundError(f"{unet}: run the ablation cell {cell_name(variant, 'c', 0)} first")
    eval_cfg = _eval_cfg(cfg)
    pipe = _pytorch_pipe(cfg.teacher, unet)
    seeds = [s for _ in range(10) for s in range(cfg.eval_seeds)]
    lat = initial_latents(seeds, pipe.unet.config.in_channels, cfg.resolution // pipe.vae_scale_factor)
    # PyTorch reference: cached per variant, same latents as the bundle.
    ref_path = work / "records" / f"ref_{variant}.npy"
    if ref_path.exists():
        ref = np.load(ref_path)
    else:
        out = pipe(prompt=[caption(d) for d in range(10) for _ in range(cfg.eval_seeds)], latents=lat,
                   num_inference_steps=cfg.eval_steps, guidance_scale=cfg.guidance_scale, height=cfg.resolution,
                   width=cfg.resolution, output_type="np")
        ref = (out.images * 255).round().astype(np.uint8)
        np.save(ref_path, ref)
    t = time.perf_counter()
    bundle = export_bundle(ExportRequest(
        out=work / "bundles" / f"{variant}_{fmt}-{precision}", model=cfg.teacher, unet=unet, format=fmt,
        precision=precision, components=("text_encoder", "unet", "vae_decoder"), height=cfg.resolution,
        width=cfg.resolution, overwrite=True, progress=False))
    export_s = time.perf_counter() - t
    t = time.perf_counter()
    images, digits = generate_bundle_digits(BundlePipeline(bundle, threads=1), eval_cfg, latents=lat)
    gen_s = time.perf_counter() - t
    imgs = images.permute(0, 2, 3, 1).numpy()
    scores = score_digits(images, digits, resolution=cfg.resolution)
    torch_scores = score_digits(torch_images(ref), digits, resolution=cfg.resolution)
    n_psnr = min(len(digits), cfg.psnr_prompts * cfg.eval_seeds)
    compared = image_psnr(ref[:n_psnr], imgs[:n_psnr])
    size = sum(f.stat().st_size for f in Path(bundle).rglob("*") if f.is_file())
    rec = {"kind": "export", "variant": variant, "format": fmt, "precision": precision, "export_s": round(export_s, 1),
           "generation_s": round(gen_s, 1), "bundle_mb": round(size / 2**20, 2), **scores,
           "pytorch_same_latents": {k: torch_scores[k] for k in ("prompt_accuracy", "frechet_distance")},
           "psnr_db_pooled": _num(compared["psnr_db_pooled"]), "psnr_db_min": _num(compared["psnr_db_min"]),
           "identical_images": compared["identical_images"], "psnr_images": compared["psnr_images"]}
    rec_path.write_text(json.dumps(rec, indent=2))
    return rec


def torch_images(images: np.ndarray):
    """(N, H, W, 3) uint8 numpy -> (N, 3, H, W) torch, the layout the scorer takes."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2)


# ---------------------------------------------------------------- jobs and tables


def jobs(cfg: AblationConfig, variants: Sequence[str] = VARIANTS, setups: Sequence[str] = ("a", "b", "c", "d"),
         export: bool = True) -> list[tuple]:
    """Every job: the teacher, the ablation cells, then the exports."""
    cells = [("cell", v, s, seed) for seed in cfg.seeds for s in setups for v in variants]
    # First seed: (c) first (the export jobs need it), variant-major within a setup. Later seeds: fastest variant
    # first, all setups of a variant together, so a run cut short still has the seed spread for whole variants.
    speed = {v: i for i, v in enumerate(reversed(VARIANTS))}
    cells.sort(key=lambda j: (j[3], j[2] != "c") if j[3] == cfg.seeds[0] else (j[3], speed.get(j[1], 9), j[2]))
    out: list[tuple] = [("teacher",)] + cells
    if export:
        out += [("export", v, f, p) for v in variants for f, p in EXPORT_TARGETS]
    return out


def run_job(job: tuple, cfg: AblationConfig, work: Path) -> dict[str, Any]:
    _threads(1)
    if job[0] == "teacher":
        return run_teacher(cfg, work)
    if job[0] == "cell":
        return run_cell(job[1], job[2], job[3], cfg, work)
    return run_export(job[1], job[2], job[3], cfg, work)


def _ms(xs: list[float]) -> str:
    if not xs:
        return "–"
    m = float(np.mean(xs))
    if len(xs) == 1:
        return f"{m:.3f}" if m < 10 else f"{m:.1f}"
    h = (max(xs) - min(xs)) / 2
    return f"{m:.3f} ± {h:.3f}" if m < 10 else f"{m:.1f} ± {h:.1f}"


def load_records(work: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((work / "records").glob("*.json"))]


def summarise(records: list[dict[str, Any]], cfg: AblationConfig, meta: dict[str, Any]) -> tuple[dict, str, dict, str]:
    """(ablation json, ablation md, export json, export md)."""
    cells = [r for r in records if r["kind"] == "cell"]
    teacher = next((r for r in records if r["kind"] == "teacher"), None)
    rows = []
    for v in VARIANTS:
        for s in SETUPS:
            rs = [r for r in cells if r["variant"] == v and r["setup"] == s.key]
            if not rs:
                continue
            acc = [r["prompt_accuracy"] for r in rs]
            fd = [r["frechet_distance"] for r in rs]
            rows.append({"variant": v, "setup": s.key, "label": s.label, "seeds": [r["seed"] for r in rs],
                         "prompt_accuracy": acc, "frechet_distance": fd,
                         "prompt_accuracy_mean": float(np.mean(acc)), "frechet_distance_mean": float(np.mean(fd)),
                         "train_s": [r["train_s"] for r in rs]})
    abl = {"config": asdict(cfg), "setups": [asdict(s) for s in SETUPS], **meta,
           "teacher": teacher and {k: teacher[k] for k in ("prompt_accuracy", "frechet_distance", "per_digit_accuracy")},
           "rows": rows, "cells": cells}
    n_img = 10 * cfg.eval_seeds
    md = [
        "# BK-SDM ablation at small scale (digits teacher)",
        "",
        f"Teacher `{cfg.teacher}` ({cfg.resolution} px). Every student distilled for **{cfg.steps} steps**, batch "
        f"{cfg.batch_size}, lr {cfg.lr}, constant schedule, no flips, on the digits training split; seeds "
        f"{', '.join(map(str, cfg.seeds))} (distillation seed and, for (d), init seed). Scores in PyTorch on "
        f"{n_img} images (10 digit prompts x {cfg.eval_seeds} seeds, {cfg.eval_steps} PNDM steps, guidance "
        f"{cfg.guidance_scale}): prompt accuracy (higher is better) and Fréchet distance of the digit scorer's "
        "features vs held-out real digits (lower is better). Cells: mean ± half-range over the seeds.",
        "",
        "| variant | setup | seeds | prompt accuracy | Fréchet distance |",
        "|---|---|---|---:|---:|",
    ]
    if teacher:
        md.append(f"| teacher (SD-v1 topology) | – | – | {teacher['prompt_accuracy']:.3f} | "
                  f"{teacher['frechet_distance']:.1f} |")
    for r in rows:
        md.append(f"| {r['variant']} | ({r['setup']}) {r['label']} | {','.join(map(str, r['seeds']))} | {_ms(r['prompt_accuracy'])} | "
                  f"{_ms(r['frechet_distance'])} |")
    md += ["", f"Wall time: {meta.get('wall_s', '?')} s with {meta.get('workers', '?')} worker process(es), 1 torch "
           "thread each, on a shared 2-core CPU. Reproduce:", "", "```", meta.get("command", ""), "```", ""]
    if meta.get("notes"):
        md += [meta["notes"], ""]

    exps = [r for r in records if r["kind"] == "export"]
    ex_md = [
        "# Exported student quality (digits, ablation setup (c), seed 0)",
        "",
        f"Each variant's (c) seed-0 student ({cfg.steps} distillation steps), exported with text_encoder, unet, "
        f"vae_decoder at {cfg.resolution}x{cfg.resolution}, run by the bundle runtime on {n_img} images (10 digit prompts x {cfg.eval_seeds} "
        f"seeds, {cfg.eval_steps} PNDM steps, guidance {cfg.guidance_scale}). The bundle gets the same initial "
        "latents as the PyTorch pipeline (diffusers' draw for `torch.Generator().manual_seed(seed)`), so PSNR is "
        "image-for-image against the PyTorch student.",
        "",
        "| variant | bundle | prompt accuracy | Fréchet distance | PSNR vs PyTorch, pooled / worst image (dB) | bundle MB | export s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for v in VARIANTS:
        order = {f"{f}-{p}": i for i, (f, p) in enumerate(EXPORT_TARGETS)}
        rs = sorted((r for r in exps if r["variant"] == v), key=lambda r: order.get(f"{r['format']}-{r['precision']}", 9))
        if not rs:
            continue
        pt = rs[0]["pytorch_same_latents"]
        ex_md.append(f"| {v} | PyTorch fp32 | {pt['prompt_accuracy']:.3f} | {pt['frechet_distance']:.1f} | – | – | – |")
        for r in rs:
            ex_md.append(f"| {v} | {r['format']} {r['precision']} | {r['prompt_accuracy']:.3f} | "
                         f"{r['frechet_distance']:.1f} | {_db(r['psnr_db_pooled'])} / {_db(r['psnr_db_min'])} | "
                         f"{r['bundle_mb']} | {r['export_s']} |")
    ex_md += ["", "Reproduce:", "", "```", meta.get("command", ""), "```", ""]
    ex = {"config": asdict(cfg), **meta, "rows": exps}
    return abl, "\n".join(md), ex, "\n".join(ex_md)
