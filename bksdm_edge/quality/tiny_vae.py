"""Tiny-VAE evidence at small scale (issue 14 part 5): a TAESD-architecture decoder distilled from the digits
teacher's VAE, against the teacher's own decoder.

1. ``distill-vae`` on ``builtin:mini-sd-digits`` (the digits training split, its latent cache, teacher trajectories);
2. decoder PSNR against the teacher's decoder (uint8 images, peak 255) on two latent sets the decoder never saw:
   the teacher encoder's latents of the held-out digits, and the final latents of new teacher trajectories
   (the 10 evaluation prompts x ``eval_seeds`` seeds, 25 PNDM steps, the seeds of ``generate_digits``);
3. prompt accuracy and Fréchet distance (digit scorer) of those trajectories decoded by each decoder, in PyTorch;
4. the same from ONNX int8 bundles (text encoder + U-Net + each decoder), run by the torch-free bundle pipeline from
   the same initial latents.

Every stage writes one JSON record under the work folder, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import psnr

TEACHER = "builtin:mini-sd-digits"
RESOLUTION = 32
DECODERS = ("teacher", "tiny")


@dataclass(frozen=True)
class TinyVaeEvalConfig:
    """The distillation run and the evaluation protocol."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    trajectories: int = 256
    trajectory_fraction: float = 0.5
    lambda_edge: float = 1.0
    lambda_fft: float = 0.0
    lambda_adv: float = 0.0
    eval_seeds: int = 20  # images per digit prompt
    eval_steps: int = 25
    guidance_scale: float = 4.0
    export: tuple[str, str] = ("onnx", "int8")


def _digit_cfg(cfg: TinyVaeEvalConfig):
    from .digits import DigitEvalConfig

    return DigitEvalConfig(seeds=cfg.eval_seeds, steps=cfg.eval_steps, guidance_scale=cfg.guidance_scale)


def _record(work: Path, name: str, make) -> dict[str, Any]:
    path = work / "records" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    t = time.perf_counter()
    rec = make()
    rec["seconds"] = round(time.perf_counter() - t, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=2) + "\n")
    return rec


def distill_tiny_vae(cfg: TinyVaeEvalConfig, work: Path, progress: bool = True) -> Path:
    """Run (or resume) the digits distill-vae run; returns its run folder."""
    from ..distill import CheckpointConfig, DataConfig, DistillConfig, OptimConfig, VaeConfig, distill
    from .digits import write_digits_imagefolder

    run = work / "run"
    data = work / "data"
    if not (data / "metadata.jsonl").exists():
        write_digits_imagefolder(data, RESOLUTION)
    if (run / "vae" / "config.json").exists():
        return run
    config = DistillConfig(
        teacher=TEACHER, variant=None, out=str(run), objective="vae", max_steps=cfg.steps, batch_size=cfg.batch_size,
        progress=progress, report_to="none", log_every=50,
        data=DataConfig(source=str(data), resolution=RESOLUTION, num_workers=0,
                        cache_dir=str(work / "cache")),
        optim=OptimConfig(lr=cfg.lr, weight_decay=0.0),
        checkpoint=CheckpointConfig(every=500, keep=1, resume="latest"),
        vae=VaeConfig(trajectories=cfg.trajectories, trajectory_steps=cfg.eval_steps,
                      trajectory_guidance=cfg.guidance_scale, trajectory_fraction=cfg.trajectory_fraction,
                      lambda_edge=cfg.lambda_edge, lambda_fft=cfg.lambda_fft, lambda_adv=cfg.lambda_adv),
    )
    distill(config)
    return run


def _to_uint8(decoded) -> np.ndarray:
    """Decoder output in [-1, 1] -> uint8 NCHW, as diffusers' postprocess (x / 2 + 0.5, clamp, round)."""
    return (decoded.float().div(2).add(0.5).clamp(0, 1) * 255).round().byte().numpy()


def decode_all(vae, latents, batch: int = 100) -> np.ndarray:
    """uint8 images (N, 3, H, W) of U-Net-space latents through ``vae`` (dividing by its scaling factor)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(latents), batch):
            out.append(_to_uint8(vae.decode(latents[i : i + batch] / vae.config.scaling_factor).sample))
    return np.concatenate(out)


def psnr_stats(reference: np.ndarray, images: np.ndarray) -> dict[str, Any]:
    """``digits.image_psnr`` (pooled and worst image, peak 255) plus the mean over images, rounded for tables."""
    from .digits import image_psnr

    stats = image_psnr(reference, images)
    per = [psnr(r, x, peak=255.0) for r, x in zip(reference, images) if not np.array_equal(r, x)]
    return {"mean_db": round(float(np.mean(per)), 2) if per else None,
            "min_db": round(stats["psnr_db_min"], 2), "pooled_db": round(stats["psnr_db_pooled"], 2),
            "identical_images": stats["identical_images"], "images": stats["psnr_images"]}


def heldout_latents(model):
    """The teacher encoder's latents (posterior mean x scaling factor) of the 360 held-out digits."""
    import torch

    from ..tiny_vae import encode_latents
    from .digits import heldout_reference

    with torch.no_grad():
        x = heldout_reference(RESOLUTION) * 2 - 1
        return encode_latents(model.vae, x) * model.vae.config.scaling_factor


def eval_jobs(cfg: TinyVaeEvalConfig, model):
    """The (digit, seed) of every evaluation image, digit-major, and the initial noise diffusers draws for each."""
    from .digits import initial_latents

    jobs = [(d, s) for d in range(10) for s in range(cfg.eval_seeds)]
    side = RESOLUTION // model.vae_scale_factor
    return jobs, initial_latents([s for _, s in jobs], model.unet.config.in_channels, side)


def trajectory_latents(cfg: TinyVaeEvalConfig, model, work: Path):
    """Final latents of the teacher's runs for the 10 prompts x ``eval_seeds`` seeds (cached in the work folder)."""
    import torch

    from .digits import caption

    path = work / "eval_trajectories.npy"
    if path.exists():
        return torch.from_numpy(np.load(path))
    jobs, lat = eval_jobs(cfg, model)
    pipe = model.to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    out = []
    for i in range(0, len(jobs), 50):
        out.append(pipe(prompt=[caption(d) for d, _ in jobs[i : i + 50]], latents=lat[i : i + 50],
                        num_inference_steps=cfg.eval_steps, guidance_scale=cfg.guidance_scale, height=RESOLUTION,
                        width=RESOLUTION, output_type="latent").images)
    z = torch.cat(out)
    np.save(path, z.numpy())
    return z


def evaluate_pytorch(cfg: TinyVaeEvalConfig, work: Path, run: Path) -> dict[str, Any]:
    """PSNR of the tiny decoder against the teacher's on both latent sets, and digit scores of each decoder."""
    import torch

    from ..loading import load_model
    from ..profiler import profile_teacher_and_students
    from .digits import image_grid, score_digits

    model = load_model(TEACHER)
    tiny = load_model(TEACHER, vae=str(run), components=("vae",)).vae
    held = heldout_latents(model)
    traj = trajectory_latents(cfg, model, work)
    jobs, _ = eval_jobs(cfg, model)
    digits = [d for d, _ in jobs]
    rec: dict[str, Any] = {"psnr_vs_teacher_decoder": {}, "scores": {}}
    images = {}
    for name, z in (("heldout_image_latents", held), ("trajectory_latents", traj)):
        ref, got = decode_all(model.vae, z), decode_all(tiny, z)
        rec["psnr_vs_teacher_decoder"][name] = psnr_stats(ref, got)
        images[name] = (ref, got)
    for dec, idx in zip(DECODERS, (0, 1)):
        imgs = torch.from_numpy(images["trajectory_latents"][idx])
        rec["scores"][dec] = {k: v for k, v in score_digits(imgs, digits, resolution=RESOLUTION).items()}
    # A grid: per digit, seeds 0-4 decoded by the teacher (left) and by the tiny decoder (right).
    ref, got = images["trajectory_latents"]
    pick = [d * cfg.eval_seeds + s for d in range(10) for s in range(min(5, cfg.eval_seeds))]
    both = np.concatenate([ref[pick].reshape(10, -1, 3, RESOLUTION, RESOLUTION),
                           got[pick].reshape(10, -1, 3, RESOLUTION, RESOLUTION)], axis=1)
    image_grid(torch.from_numpy(both.reshape(-1, 3, RESOLUTION, RESOLUTION)), rows=10, scale=3).save(
        work / "tiny_vae_grid.png")
    profiles = profile_teacher_and_students(TEACHER, resolution=RESOLUTION, components=("vae_decoder",), vae=str(run))
    rec["decoders"] = {p.name: {"params": p.params, "macs_paper": p.macs_paper} for p in profiles}
    return rec


def evaluate_bundle(cfg: TinyVaeEvalConfig, work: Path, run: Path, decoder: str) -> dict[str, Any]:
    """Export text encoder + U-Net + ``decoder`` (teacher / tiny) to ``cfg.export`` and score the bundle's images
    (same initial latents as the PyTorch runs); PSNR against the PyTorch teacher-decoded images."""
    from ..export.pipeline import export_bundle
    from ..export.request import ExportRequest
    from ..generate import BundlePipeline
    from ..loading import load_model
    from .digits import generate_bundle_digits, score_digits

    fmt, precision = cfg.export
    model = load_model(TEACHER)
    vae = str(run) if decoder == "tiny" else None
    t = time.perf_counter()
    bundle = export_bundle(ExportRequest(out=work / "bundles" / f"{decoder}_{fmt}-{precision}", model=TEACHER, vae=vae,
                                         format=fmt, precision=precision, height=RESOLUTION, width=RESOLUTION,
                                         overwrite=True, progress=False))
    export_s = time.perf_counter() - t
    _, lat = eval_jobs(cfg, model)
    t = time.perf_counter()
    images, digits = generate_bundle_digits(BundlePipeline(bundle), _digit_cfg(cfg), lat)
    gen_s = time.perf_counter() - t
    ref = decode_all(model.vae, trajectory_latents(cfg, model, work))
    imgs = images.numpy()
    scores = score_digits(images, digits, resolution=RESOLUTION)
    manifest = json.loads((bundle / "manifest.json").read_text())
    dec_bytes = sum(f.stat().st_size for f in (bundle / "vae_decoder").rglob("*") if f.is_file())
    return {"decoder": decoder, "format": fmt, "precision": precision, "vae_kind": manifest["vae"]["kind"],
            "latent_scaling_factor": manifest["latent_scaling_factor"], "export_s": round(export_s, 1),
            "generation_s": round(gen_s, 1), "decoder_file_kb": round(dec_bytes / 1024, 1),
            "psnr_vs_pytorch_teacher": psnr_stats(ref, imgs), **scores}


def run_all(cfg: TinyVaeEvalConfig, work: Path, progress: bool = True, log=print) -> dict[str, Any]:
    """Every stage (each resumable); returns {"distill", "pytorch", "bundles": {decoder: record}}."""
    work.mkdir(parents=True, exist_ok=True)
    log("distilling the tiny decoder ...")
    t = time.perf_counter()
    run = distill_tiny_vae(cfg, work, progress)
    distill_s = round(time.perf_counter() - t, 1)
    log("PyTorch: PSNR on held-out latents and trajectories, digit scores ...")
    pytorch = _record(work, "pytorch", lambda: evaluate_pytorch(cfg, work, run))
    bundles = {}
    for dec in DECODERS:
        log(f"{cfg.export[0]} {cfg.export[1]} bundle with the {dec} decoder ...")
        bundles[dec] = _record(work, f"bundle_{dec}", lambda dec=dec: evaluate_bundle(cfg, work, run, dec))
    run_config = json.loads((run / "run_config.json").read_text())
    return {"config": asdict(cfg), "distill": {"run": str(run), "steps": run_config.get("steps"),
                                               "last_losses": run_config.get("last_losses"),
                                               "seconds_this_call": distill_s},
            "pytorch": pytorch, "bundles": bundles}


def summarise(result: dict[str, Any], meta: dict[str, Any]) -> str:
    """The Markdown table of a ``run_all`` result."""
    p, b, cfg = result["pytorch"], result["bundles"], result["config"]
    dec = p["decoders"]
    t, tiny = dec["teacher"], next(v for k, v in dec.items() if k != "teacher")
    fmt = f"{cfg['export'][0].upper() if cfg['export'][0] == 'onnx' else cfg['export'][0]} {cfg['export'][1]}"
    lines = [
        "# Tiny VAE decoder on the digits teacher (builtin:mini-sd-digits)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; wall time {meta['wall_s'] / 60:.1f} min (load average {meta['load']}).",
        "",
        f"A TAESD-architecture decoder (`AutoencoderTiny`, {tiny['params']:,} parameters, {tiny['macs_paper'] / 1e6:.1f}M "
        f"MACs at 32 px) distilled for {result['distill']['steps']} steps (batch {cfg['batch_size']}, lr {cfg['lr']}, "
        f"{cfg['trajectories']} teacher trajectories, {cfg['trajectory_fraction']:.0%} of each batch) from the "
        f"teacher's AutoencoderKL decoder ({t['params']:,} parameters, {t['macs_paper'] / 1e6:.1f}M MACs).",
        "",
        "## Decoder PSNR against the teacher's decoder (uint8 images, peak 255; latents never trained on)",
        "",
        "| latents | images | mean PSNR | min PSNR | pooled PSNR |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {"heldout_image_latents": "teacher encoder, held-out real digits",
             "trajectory_latents": f"teacher trajectories (10 prompts x {cfg['eval_seeds']} seeds, "
                                   f"{cfg['eval_steps']} PNDM steps, CFG {cfg['guidance_scale']})"}
    for key, label in names.items():
        s = p["psnr_vs_teacher_decoder"][key]
        lines.append(f"| {label} | {s['images']} | {s['mean_db']:.1f} dB | {s['min_db']:.1f} dB | {s['pooled_db']:.1f} dB |")
    lines += [
        "",
        f"## Digit scores of the teacher's images, decoded by each decoder ({len(p['scores']['teacher']['per_digit_accuracy']) * cfg['eval_seeds']} images)",
        "",
        "| decoder | runtime | prompt accuracy | vs teacher decoder | Fréchet distance | PSNR vs PyTorch teacher decoder |",
        "|---|---|---:|---:|---:|---:|",
    ]
    base = p["scores"]["teacher"]["prompt_accuracy"]
    for d in DECODERS:
        s = p["scores"][d]
        lines.append(f"| {d} | PyTorch fp32 | {s['prompt_accuracy']:.3f} | {s['prompt_accuracy'] - base:+.3f} | "
                     f"{s['frechet_distance']:.2f} | {'reference' if d == 'teacher' else ''} |")
    for d in DECODERS:
        s = b[d]
        lines.append(f"| {d} | {fmt} bundle | {s['prompt_accuracy']:.3f} | {s['prompt_accuracy'] - base:+.3f} | "
                     f"{s['frechet_distance']:.2f} | {s['psnr_vs_pytorch_teacher']['pooled_db']:.1f} dB |")
    lines += [
        "",
        "PSNR is per image (mean and worst) and pooled over the set (from the mean squared error of all pixels). "
        "The bundle rows run the whole pipeline (text encoder and U-Net int8 too) from the same initial latents; "
        "their PSNR includes the U-Net's int8 error, which moves the final latents.",
        "",
        "Grid (`tiny_vae_grid.png`): one row per digit; seeds 0-4 decoded by the teacher's decoder, then the same "
        "latents decoded by the tiny decoder.",
    ]
    return "\n".join(lines) + "\n"
