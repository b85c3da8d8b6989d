"""Generating and scoring digit images: the evaluation protocol of the digits teacher and its students.

Images come from a diffusers pipeline (``generate_digits``) or an exported bundle run by the torch-free
runtime (``generate_bundle_digits``); ``initial_latents`` are the latents diffusers draws for a seed, so a
bundle can be given exactly the PyTorch pipeline's starting point and ``image_psnr`` compares the two
image for image. ``evaluate_model`` writes a model's scores, a Markdown summary and an image grid.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...metrics import psnr
from ...versions import package_versions
from .data import caption, eval_prompts
from .scorer import DigitScorer, load_scorer, score_digits


@dataclass(frozen=True)
class DigitEvalConfig:
    """How images are generated for the digit scores."""

    seeds: int = 20
    steps: int = 25
    guidance_scale: float = 4.0
    batch: int = 50


def generate_digits(pipe, cfg: DigitEvalConfig, resolution: int) -> tuple[torch.Tensor, list[int]]:
    """Generate ``cfg.seeds`` images for each of the 10 eval prompts; image i of digit d uses seed i.

    Returns uint8 images (10 * seeds, 3, H, W) ordered digit-major, and the requested digits.
    """
    jobs = [(d, s) for d in range(10) for s in range(cfg.seeds)]
    out = []
    for i in range(0, len(jobs), cfg.batch):
        chunk = jobs[i : i + cfg.batch]
        res = pipe(
            prompt=[caption(d) for d, _ in chunk],
            generator=[torch.Generator().manual_seed(s) for _, s in chunk],
            num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale, height=resolution, width=resolution,
            output_type="np",
        )
        out.append(torch.from_numpy((res.images * 255).round().astype(np.uint8)).permute(0, 3, 1, 2))
    return torch.cat(out), [d for d, _ in jobs]


def initial_latents(seeds: list[int], channels: int, side: int) -> torch.Tensor:
    """The initial latents diffusers draws for one image from ``torch.Generator().manual_seed(seed)``, per seed."""
    return torch.cat([torch.randn((1, channels, side, side), generator=torch.Generator().manual_seed(s))
                      for s in seeds])


def generate_bundle_digits(pipe, cfg: DigitEvalConfig, latents: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, list[int]]:
    """``generate_digits`` for an exported bundle (``bksdm_edge.generate.BundlePipeline``), one image per call.

    Image i of digit d uses seed i, or ``latents[d * cfg.seeds + i]`` when given (``initial_latents`` makes the
    PyTorch pipeline's starting points). Returns uint8 images (10 * seeds, 3, H, W), digit-major, and the digits.
    """
    jobs = [(d, s) for d in range(10) for s in range(cfg.seeds)]
    images = []
    for i, (d, s) in enumerate(jobs):
        start = {"seed": s} if latents is None else {"latents": latents[i : i + 1].numpy()}
        images.append(pipe(caption(d), steps=cfg.steps, guidance=cfg.guidance_scale, **start)[0])
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), [d for d, _ in jobs]


def image_psnr(reference: np.ndarray, images: np.ndarray) -> dict[str, Any]:
    """PSNR on 0-255 pixels of ``images`` against ``reference`` (same shape, image for image).

    Returns ``psnr_db_pooled`` (from the MSE over all images), ``psnr_db_min`` (the worst image),
    ``identical_images`` (pixel-identical pairs, which get no PSNR) and ``psnr_images``; a PSNR is ``inf`` when
    every compared image is identical.
    """
    identical = [bool(np.array_equal(r, i)) for r, i in zip(reference, images)]
    per = [psnr(r, i, peak=255.0) for r, i, same in zip(reference, images, identical) if not same]
    pooled = math.inf if all(identical) else psnr(reference, images, peak=255.0)
    return {"psnr_db_pooled": pooled, "psnr_db_min": min(per, default=math.inf),
            "identical_images": sum(identical), "psnr_images": len(identical)}


def image_grid(images: torch.Tensor, rows: int, scale: int = 2):
    """A PIL grid of uint8 images (N, 3, H, W), ``rows`` rows filled row-major, each image enlarged ``scale``x."""
    from PIL import Image

    n, _, h, w = images.shape
    cols = math.ceil(n / rows)
    canvas = np.zeros((rows * (h + 2), cols * (w + 2), 3), np.uint8) + 64
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = (
            images[i].permute(1, 2, 0).numpy()
        )
    img = Image.fromarray(canvas)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def load_trained(spec, weights_dir: str | Path):
    """Build ``spec`` and load ``unet/vae/text_encoder.safetensors`` from ``weights_dir`` (any folder)."""
    from safetensors.torch import load_file

    from ...loading import build_builtin

    model = build_builtin(dataclasses.replace(spec, weights=None))
    for name in ("unet", "vae", "text_encoder"):
        getattr(model, name).load_state_dict(load_file(str(Path(weights_dir) / f"{name}.safetensors")))
    model.info["weights"] = str(weights_dir)
    return model


def evaluate_model(model, out_dir: str | Path, cfg: DigitEvalConfig = DigitEvalConfig(), *, name: str = "teacher",
                   scorer: DigitScorer | None = None, resolution: int | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate 10 prompts x ``cfg.seeds`` digits with ``model``, score them, write ``NAME.json``, ``NAME.md``
    and ``NAME_grid.png`` (one row per prompt) under ``out_dir``; returns the JSON record."""
    resolution = resolution or model.native_resolution
    scorer = scorer or load_scorer()
    pipe = model.to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    t0 = time.time()
    images, digits = generate_digits(pipe, cfg, resolution)
    gen_s = time.time() - t0
    scores = score_digits(images, digits, scorer, resolution)
    record = {
        "model": model.source, "unet": model.unet_source, "vae": model.vae_source, "weights": model.info.get("weights"),
        "name": name,
        "protocol": {"prompts": eval_prompts(), "seeds": list(range(cfg.seeds)), "steps": cfg.steps,
                     "scheduler": type(pipe.scheduler).__name__, "guidance_scale": cfg.guidance_scale,
                     "resolution": resolution, "reference": "held-out real digits (20% split, upscaled)",
                     "scorer": "bksdm_edge/weights/digit-scorer"},
        **scores, "generation_s": round(gen_s, 1), "versions": versions(), **(extra or {}),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    image_grid(images, rows=10).save(out_dir / f"{name}_grid.png")
    per = " | ".join(f"{record['per_digit_accuracy'][d]:.2f}" for d in range(10))
    (out_dir / f"{name}.md").write_text(
        f"# {name}: digit scores\n\n"
        f"{len(digits)} images: prompts \"{caption(0)}\" ... \"{caption(9)}\" x seeds 0-{cfg.seeds - 1}, "
        f"{cfg.steps} {record['protocol']['scheduler']} steps, guidance {cfg.guidance_scale}, {resolution} px.\n\n"
        f"| prompt accuracy | Fréchet distance (scorer features, vs held-out real) | generation time |\n"
        f"|---|---|---|\n| {record['prompt_accuracy']:.3f} | {record['frechet_distance']:.3f} | {gen_s:.0f} s |\n\n"
        f"Per digit (0-9): {per}\n\nGrid: `{name}_grid.png` (row = digit 0-9, column = seed).\n"
    )
    return record


def versions() -> dict[str, str]:
    """The versions recorded with every digits result."""
    return package_versions(("torch", "diffusers", "transformers", "scikit-learn", "numpy"))
