"""Tiny-VAE distillation (``bksdm-edge distill-vae``): an ``AutoencoderTiny`` learns the teacher's VAE.

An objective of the shared distillation loop (``train.distill``: data and latent cache, accelerate, checkpoints,
exact resume, logging, validation images). One micro-batch:

1. decoder inputs: the teacher's latents of the training images (posterior samples x scaling_factor, from the
   images or the latent cache, as for ``kd``) plus ``round(batch x trajectory_fraction)`` latents that the teacher's
   own denoising trajectories ended in (``record_trajectories``: generated once per run from the data's captions,
   saved under ``RUN/trajectories/``), so the decoder also sees what a U-Net produces, not only what an encoder
   does; trajectory rows are drawn with the micro-batch's seeded generator (exact resume);
2. targets: the teacher decoder's images of the same latents (``vae.decode(latents / scaling_factor)``);
3. the student decodes the latents as they are (TAESD convention, ``bksdm_edge.tiny_vae``) and is trained with
   ``vae_loss`` (L1 + L2 + Sobel edges [+ multi-scale FFT] [+ adversarial]);
4. with ``encoder``: the student's encoder learns the teacher encoder's (scaled) latents of the teacher's images.

The outputs are ``RUN/vae`` (and ``RUN/vae_ema``): ``AutoencoderTiny`` folders with ``bksdm_edge.json``, usable
as ``--vae RUN`` by export, eval, profile and bench, or in diffusers as ``StableDiffusionPipeline(vae=...)``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..student import StudentReport
from ..tiny_vae import build_tiny_vae, encode_latents, load_vae, save_tiny_vae, teacher_vae_facts
from .objective import DistillError, Objective, TrainContext, register
from .vae_loss import VAE_LOSS_NAMES, PatchDiscriminator, TinyVaeStudent, loss_weights

TRAJECTORY_DIR = "trajectories"
TRAJECTORY_META = "trajectories.json"


def trajectory_key(config, teacher_vae_config) -> dict[str, Any]:
    """What fixes a run's trajectory latents (a saved set is reused only when all of it matches)."""
    c = config.vae
    return {"teacher": config.teacher, "count": c.trajectories, "steps": c.trajectory_steps,
            "guidance_scale": c.trajectory_guidance, "resolution": config.data.resolution, "seed": config.seed,
            "prompts": c.trajectory_prompts or "data captions", "latent_space": teacher_vae_facts(teacher_vae_config)}


def _trajectory_conditions(ctx: TrainContext, count: int) -> torch.Tensor:
    """Text embeddings (count, L, D) to generate from: the prompt file's lines, else captions of the data spread
    over the whole set (from the rows, or the latent cache's embeddings when training from a cache only)."""
    from .cache import encode_text, open_cache
    from .data import load_rows, tokenize

    config = ctx.config
    model = ctx.model
    if config.vae.trajectory_prompts:
        from ..export.inputs import read_prompts

        captions = read_prompts(config.vae.trajectory_prompts)
    elif config.data.source:
        rows = load_rows(config.data).rows
        captions = [r.caption for r in rows]
    else:
        cache = open_cache(config.data.cache_dir)
        pick = np.linspace(0, len(cache) - 1, count).round().astype(int)
        return torch.from_numpy(np.asarray(cache.text[pick], dtype=np.float32))
    pick = np.linspace(0, len(captions) - 1, count).round().astype(int) if len(captions) >= count else \
        np.arange(count) % len(captions)
    with torch.no_grad():
        ids = tokenize(model.tokenizer, [captions[i] for i in pick])
        return encode_text(model.text_encoder, ids.to(ctx.device)).float().cpu()


@torch.no_grad()
def record_trajectories(ctx: TrainContext, out: Path, *, batch: int = 8, progress: bool = True) -> torch.Tensor:
    """Run the teacher pipeline (its scheduler, classifier-free guidance) to the end and save the final latents.

    Trajectory i uses seed (run seed, i); written to a temp folder and renamed, so a saved set is complete.
    Returns the latents (N, C, h, w) in U-Net space (what ``output_type="latent"`` gives, before the decoder).
    """
    from tqdm.auto import tqdm

    from .cache import encode_text
    from .data import tokenize

    config, model = ctx.config, ctx.model
    c = config.vae
    cond = _trajectory_conditions(ctx, c.trajectories).to(ctx.device, ctx.weight_dtype)
    uncond = encode_text(model.text_encoder, tokenize(model.tokenizer, [""]).to(ctx.device)).to(ctx.weight_dtype)
    pipe = model.to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    res = config.data.resolution
    started = time.perf_counter()
    parts = []
    bar = tqdm(total=c.trajectories, desc="teacher trajectories", unit="image", disable=not progress)
    for start in range(0, c.trajectories, batch):
        n = min(batch, c.trajectories - start)
        gens = [torch.Generator(device=ctx.device).manual_seed(int(np.random.SeedSequence([config.seed, start + i])
                                                                       .generate_state(1)[0])) for i in range(n)]
        with ctx.accelerator.autocast():
            out_latents = pipe(prompt_embeds=cond[start : start + n], negative_prompt_embeds=uncond.expand(n, -1, -1),
                               num_inference_steps=c.trajectory_steps, guidance_scale=c.trajectory_guidance,
                               height=res, width=res, generator=gens, output_type="latent").images
        parts.append(out_latents.float().cpu())
        bar.update(n)
    bar.close()
    latents = torch.cat(parts)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "latents.npy", latents.numpy())
    meta = {**trajectory_key(config, model.vae.config), "seconds": round(time.perf_counter() - started, 1),
            "shape": list(latents.shape), "std": float(latents.std())}
    (tmp / TRAJECTORY_META).write_text(json.dumps(meta, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)
    return latents


def load_trajectories(ctx: TrainContext, out: Path) -> torch.Tensor | None:
    """A saved trajectory set of this run, or None when there is none yet; refuses one made with other settings."""
    meta_path = out / TRAJECTORY_META
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    want = trajectory_key(ctx.config, ctx.model.vae.config)
    changed = [f"{k}: {meta.get(k)!r} -> {v!r}" for k, v in want.items() if meta.get(k) != v]
    if changed:
        raise DistillError(f"{out} holds trajectories made with other settings ({'; '.join(changed)}); remove it "
                           "or keep the settings of the run")
    return torch.from_numpy(np.load(out / "latents.npy"))


@register
class VaeObjective(Objective):
    """A tiny VAE (TAESD architecture) learns to decode (and with ``encoder`` to encode) like the teacher's VAE."""

    name = "vae"
    loss_names = VAE_LOSS_NAMES
    always_needs = ("vae", "text_encoder", "tokenizer")
    output_dirs = ("vae", "vae_ema")

    def check(self) -> None:
        c = self.config.vae
        if self.config.variant is not None:
            raise DistillError("distill-vae trains a VAE; it takes no --variant")
        problems = [f"--{k.replace('_', '-')} must be >= 0" for k, v in loss_weights(c).items() if v < 0]
        if not 0.0 <= c.trajectory_fraction <= 1.0:
            problems.append("--trajectory-fraction must be between 0 and 1")
        if c.trajectory_fraction > 0 and c.trajectories < 1:
            problems.append("--trajectory-fraction > 0 needs --trajectories >= 1")
        if c.trajectory_steps < 1:
            problems.append("--trajectory-steps must be >= 1")
        if c.channels is not None and c.channels < 1:
            problems.append("--channels must be >= 1")
        if c.encoder and c.lambda_enc == 0:
            problems.append("--encoder with --lambda-enc 0 would not train the encoder")
        if problems:
            raise DistillError("; ".join(problems))

    def n_trajectory_rows(self) -> int:
        return round(self.config.batch_size * self.config.vae.trajectory_fraction)

    def build_student(self, ctx: TrainContext):
        c = self.config.vae
        teacher = ctx.model.vae
        if self.config.student:  # fine-tune an existing tiny VAE (e.g. madebyollin/taesd) for this teacher
            vae, _ = load_vae(self.config.student, teacher.config)
        else:
            vae = build_tiny_vae(teacher.config, c.channels, seed=self.config.seed)
        vae.train()
        discriminator = None
        if c.lambda_adv > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed + 1)
                discriminator = PatchDiscriminator(c.disc_channels)
        student = TinyVaeStudent(vae, loss_weights(c), c.encoder, discriminator)
        self._teacher_config, self._student_config = teacher.config, dict(vae.config)
        report = StudentReport(
            variant="tiny-vae",
            teacher_params=sum(p.numel() for p in teacher.decoder.parameters()),
            student_params=sum(p.numel() for p in vae.decoder.parameters()),
        )
        return student, report

    def setup(self, ctx: TrainContext, student) -> None:
        self.trajectories = None
        if self.n_trajectory_rows() == 0:
            return
        out = self.config.run_dir / TRAJECTORY_DIR
        acc = ctx.accelerator
        if acc.is_main_process and load_trajectories(ctx, out) is None:
            record_trajectories(ctx, out, progress=self.config.progress)
        acc.wait_for_everyone()
        self.trajectories = load_trajectories(ctx, out).to(ctx.device)

    def ema_model(self, student):
        return student.vae  # the discriminator is not averaged, nor saved

    def losses(self, ctx: TrainContext, student, latents, text, generator):
        teacher = ctx.model.vae
        scale = teacher.config.scaling_factor
        n = self.n_trajectory_rows()
        if n:
            idx = torch.randint(0, len(self.trajectories), (n,), generator=generator, device=latents.device)
            latents = torch.cat([latents, self.trajectories[idx].to(latents.dtype)])
        enc_image = enc_target = None
        with torch.no_grad(), ctx.accelerator.autocast():
            target = teacher.decode((latents / scale).to(ctx.weight_dtype), return_dict=False)[0].float()
            if self.config.vae.encoder:
                enc_image = target.clamp(-1, 1)
                enc_target = encode_latents(teacher, enc_image.to(ctx.weight_dtype)).float() * scale
        return student(latents, target, enc_image, enc_target)

    def save_student(self, inner, out: Path, *, report: StudentReport, extra: dict[str, Any]) -> Path:
        trained = ["decoder", "encoder"] if self.config.vae.encoder else ["decoder"]
        return save_tiny_vae(inner.vae, out, teacher=self.config.teacher, teacher_vae_config=self._teacher_config,
                             extra={"trained": trained, "init": self.config.student or "fresh", **extra})

    def info(self) -> dict[str, Any]:
        return {"vae": {"kind": "autoencoder-tiny", "config": self._student_config,
                        "teacher_vae": teacher_vae_facts(self._teacher_config),
                        "trajectory_rows_per_batch": self.n_trajectory_rows()}}

    def validation_pipeline(self, model, student):
        """The teacher's own generations, decoded by the student."""
        pipe = model.to_pipeline()
        pipe.vae = student.vae
        return pipe
