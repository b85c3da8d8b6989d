"""Training the digits teacher (``builtin:mini-sd-digits``) and the digit scorer: the one-off experiment behind
the shipped weights in ``bksdm_edge/weights/``. Run it with ``benchmarks/mini_sd/train_teacher.py``.

Training choices (see docs/quality.md): the CLIP text tower is trained for a few seconds to name the digit at
every token position from the number word on (a frozen random tower left the digit in 1 of 77 token states and
the U-Net learnt to ignore the prompt), then frozen and stored in fp16; the VAE is trained next (L1 + a small
KL term), then its latent space is rescaled exactly so latents have unit standard deviation under the spec's
``scaling_factor``; the U-Net is trained with the epsilon objective, Min-SNR-5 loss weighting, 10% caption
dropout (for classifier-free guidance) and an EMA copy (diffusers' ``EMAModel``), which is what ships.

The shipped weights were trained with the project's earlier EMA class, whose decay schedule ran one step
ahead of ``EMAModel``'s (which starts with decay 0: a plain copy); a re-run gives weights that differ by that
first step's averaging, not the shipped bytes.

The library keeps what every user of the teacher needs (``bksdm_edge.quality.digits``: data, scorer, scores).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bksdm_edge.quality.digits import (
    CAPTION_TEMPLATES,
    DIGIT_WORDS,
    HOLDOUT_FRACTION,
    SCORER_SIZE,
    SPLIT_SEED,
    DigitScorer,
    DigitsSplit,
    caption,
    load_digit_split,
    prompt_accuracy,
    to_scorer_input,
    upscale,
    versions,
)


@dataclass(frozen=True)
class TeacherTrainConfig:
    """Everything that determines the trained teacher (besides the architecture spec)."""

    seed: int = 0
    scorer_steps: int = 600
    text_steps: int = 150
    text_lr: float = 3e-3
    vae_steps: int = 200
    vae_batch: int = 32
    vae_lr: float = 3e-3
    kl_weight: float = 1e-4
    unet_steps: int = 280
    unet_batch: int = 64
    unet_lr: float = 2e-3
    warmup_steps: int = 20
    ema_decay: float = 0.99
    cond_dropout: float = 0.1
    snr_gamma: float = 5.0
    threads: int = 1  # on a loaded shared machine one thread beats two spinning ones
    log_every: int = 25


def _round_fp16_(module: nn.Module) -> None:
    """Round a module's weights to fp16 precision in place, so what ships in fp16 is exactly what was used."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())


def _log(log: Callable[[str], None] | None, msg: str) -> None:
    if log is not None:
        log(msg)


def _update(opt, loss: torch.Tensor, sched=None, clip=None) -> None:
    """One optimiser step: backward, grad-norm clip to 1 (when ``clip`` names the parameters), step, schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    opt.step()
    if sched is not None:
        sched.step()


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    # Linear warm-up, then cosine to 10%: short runs converge better than with a constant rate.
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(total - warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


def train_vae(vae, images: torch.Tensor, cfg: TeacherTrainConfig, log=None) -> dict[str, float]:
    """Train the AutoencoderKL on images in [0, 1] (L1 + KL), then rescale it to unit-variance latents.

    The rescale is exact: the mean channels of ``quant_conv`` are multiplied by ``a``, its log-variance channels
    shifted by ``2 log a`` and ``post_quant_conv``'s input weights divided by ``a``, so decode(encode(x)) is
    unchanged while ``latents * scaling_factor`` has standard deviation 1 on the training set.
    """
    gen = torch.Generator().manual_seed(cfg.seed + 10)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.vae_steps))
    x_all = images * 2 - 1
    vae.train()
    t0 = time.time()
    rec = kl = torch.tensor(0.0)
    for step in range(cfg.vae_steps):
        x = x_all[torch.randint(0, len(x_all), (cfg.vae_batch,), generator=gen)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        out = vae.decode(z).sample
        rec = (out - x).abs().mean()
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = rec + cfg.kl_weight * kl
        _update(opt, loss, sched, clip=vae.parameters())
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:
            _log(log, f"vae step {step:4d}  l1 {rec.item():.4f}  kl {kl.item():.3f}  {time.time() - t0:.0f}s")
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(x_all[i : i + 256]).latent_dist.mean for i in range(0, len(x_all), 256)])
        a = 1.0 / (float(means.std()) * vae.config.scaling_factor)
        latent = vae.config.latent_channels
        w, b = vae.quant_conv.weight, vae.quant_conv.bias
        w[:latent] *= a
        b[:latent] *= a
        b[latent:] += 2 * math.log(a)
        vae.post_quant_conv.weight /= a
        recon = torch.cat([
            vae.decode(vae.encode(x_all[i : i + 256]).latent_dist.mean).sample for i in range(0, len(x_all), 256)
        ])
    return {"l1": rec.item(), "kl": kl.item(), "latent_rescale": a, "recon_l1_mean_latent": float((recon - x_all).abs().mean())}


def train_text_encoder(text_encoder, tokenizer, cfg: TeacherTrainConfig, log=None) -> dict[str, float]:
    """Teach the CLIP text tower to name the digit at every token position from the number word on.

    A stand-in for CLIP's contrastive pre-training: a seeded random tower leaves the digit in one of 77 token
    states, which the U-Net's cross-attention cannot pick out in a few hundred steps (the first run of this
    trainer ignored the prompt). Here a temporary linear head classifies each position at or after the number
    word (and every position of the empty caption as an 11th class); the head is thrown away.
    """
    gen = torch.Generator().manual_seed(cfg.seed + 30)
    caps = [caption(d, t) for d in range(10) for t in range(len(CAPTION_TEMPLATES))] + [""]
    labels = [d for d in range(10) for _ in CAPTION_TEMPLATES] + [10]
    ids = tokenizer(caps, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    word_ids = [tokenizer(w, add_special_tokens=False).input_ids[0] for w in DIGIT_WORDS]
    target = torch.full(ids.shape, -100)
    for i, lab in enumerate(labels):
        start = 0 if lab == 10 else int((ids[i] == word_ids[lab]).nonzero()[0, 0])
        target[i, start:] = lab
    torch.manual_seed(cfg.seed + 31)
    head = nn.Linear(text_encoder.config.hidden_size, 11)
    params = list(text_encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.text_lr, weight_decay=0.0, betas=(0.9, 0.99))
    text_encoder.train()
    loss = torch.tensor(0.0)
    for step in range(cfg.text_steps):
        hidden = text_encoder(ids)[0]
        loss = F.cross_entropy(head(hidden).flatten(0, 1), target.flatten(), ignore_index=-100)
        _update(opt, loss)
        if step % cfg.log_every == 0 or step == cfg.text_steps - 1:
            _log(log, f"text step {step:4d}  loss {loss.item():.4f}")
    text_encoder.eval()
    with torch.no_grad():
        pred = head(text_encoder(ids)[0]).argmax(-1)
        acc = float((pred[target >= 0] == target[target >= 0]).float().mean())
    del gen
    return {"loss": loss.item(), "token_accuracy": acc}


def encode_captions(tokenizer, text_encoder, captions: Sequence[str]) -> torch.Tensor:
    """CLIP hidden states (N, 77, D) exactly as StableDiffusionPipeline computes them."""
    ids = tokenizer(
        list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def train_unet(unet, vae, text_encoder, tokenizer, scheduler_config, images, labels, cfg: TeacherTrainConfig,
               log=None) -> dict[str, float]:
    """Train the U-Net (epsilon objective, Min-SNR weighting, caption dropout, EMA); loads the EMA weights at the end.

    Latent posteriors and caption embeddings are computed once (the VAE and text encoder are frozen); each step
    samples a fresh latent from the posterior, a caption template, a timestep and noise.
    """
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    gen = torch.Generator().manual_seed(cfg.seed + 20)
    noise_sched = DDPMScheduler.from_config({k: v for k, v in scheduler_config.items() if k != "_class_name"})
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    sf = vae.config.scaling_factor
    with torch.no_grad():
        x_all = images * 2 - 1
        posts = [vae.encode(x_all[i : i + 256]).latent_dist for i in range(0, len(x_all), 256)]
        lat_mean = torch.cat([p.mean for p in posts])
        lat_std = torch.cat([p.std for p in posts])
    n_tpl = len(CAPTION_TEMPLATES)
    all_caps = [caption(d, t) for d in range(10) for t in range(n_tpl)] + [""]
    emb = encode_captions(tokenizer, text_encoder, all_caps)
    empty = len(all_caps) - 1

    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.unet_steps))
    # diffusers' EMA, as bksdm-edge distill uses: decay warms up as (1 + t) / (10 + t) up to cfg.ema_decay.
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay)
    unet.train()
    t0 = time.time()
    running = None
    for step in range(cfg.unet_steps):
        idx = torch.randint(0, len(lat_mean), (cfg.unet_batch,), generator=gen)
        z0 = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=gen)) * sf
        tpl = torch.randint(0, n_tpl, (cfg.unet_batch,), generator=gen)
        cap = labels[idx] * n_tpl + tpl
        cap = torch.where(torch.rand(cfg.unet_batch, generator=gen) < cfg.cond_dropout, empty, cap)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)
        pred = unet(zt, t, emb[cap]).sample
        # Min-SNR-gamma (Hang et al. 2023) for epsilon prediction: weight min(snr, gamma) / snr.
        weight = torch.clamp(snr[t], max=cfg.snr_gamma) / snr[t]
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        _update(opt, loss, sched, clip=unet.parameters())
        ema.step(unet.parameters())
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % cfg.log_every == 0 or step == cfg.unet_steps - 1:
            _log(log, f"unet step {step:4d}  loss {running:.4f}  {time.time() - t0:.0f}s")
    ema.copy_to(unet.parameters())
    unet.eval()
    return {"final_loss_ema": float(running) if running is not None else float("nan")}


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 1 px at 16 px and light noise, so the scorer tolerates generated strokes."""
    n = x.shape[0]
    pad = F.pad(x, (1, 1, 1, 1))
    dx, dy = torch.randint(0, 3, (2, n), generator=gen)
    out = torch.stack([pad[i, :, dy[i] : dy[i] + SCORER_SIZE, dx[i] : dx[i] + SCORER_SIZE] for i in range(n)])
    return (out + 0.05 * torch.randn(out.shape, generator=gen)).clamp(0, 1)


def train_scorer(
    split: DigitsSplit, *, image_size: int = 32, steps: int = 800, batch: int = 64, lr: float = 2e-3, seed: int = 0
) -> DigitScorer:
    """Train the digit scorer on the training split, seen through the same upscale -> rescale path as samples."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    scorer = DigitScorer()
    x = to_scorer_input(upscale(split.train_images, image_size))
    y = split.train_labels
    opt = torch.optim.AdamW(scorer.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 2))
    scorer.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        loss = F.cross_entropy(scorer(_augment(x[idx], gen)), y[idx])
        _update(opt, loss, sched)
    return scorer.eval()


def save_scorer(scorer: DigitScorer, out_dir: str | Path, info: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in scorer.state_dict().items()}, str(out_dir / "scorer.safetensors"))
    (out_dir / "train_config.json").write_text(json.dumps(info, indent=2) + "\n")


def train_teacher(spec, out_dir: str | Path, scorer_dir: str | Path | None, cfg: TeacherTrainConfig,
                  log: Callable[[str], None] | None = print, command: str | None = None) -> dict[str, Any]:
    """Train the digit scorer (optional), the VAE and the U-Net of ``spec`` and save them.

    Args:
        spec: a ``BuiltinSpec`` with the SD-v1 layout (e.g. ``BUILTINS["mini-sd-digits"]``); its
            ``default_resolution`` is the image size and its ``seed`` seeds every initialisation.
        out_dir: where ``unet/vae/text_encoder.safetensors`` (fp16) and ``train_config.json`` go.
        scorer_dir: where the digit scorer goes; None skips training it.
        cfg: steps, batch sizes, learning rates and seeds.
        log: a callable for progress lines (None: silent).
        command: the command line that ran this, recorded in ``train_config.json``.
    Returns the training record also written to ``train_config.json``.
    """
    from safetensors.torch import save_file

    from bksdm_edge.loading import build_builtin

    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    out_dir = Path(out_dir)
    size = spec.default_resolution
    split = load_digit_split()
    images = upscale(split.train_images, size)
    record: dict[str, Any] = {
        "spec": spec.name, "config": dataclasses.asdict(cfg), "command": command, "image_size": size,
        "data": {"source": "sklearn.datasets.load_digits", "train": len(split.train_labels),
                 "heldout": len(split.test_labels), "split_seed": SPLIT_SEED, "holdout_fraction": HOLDOUT_FRACTION},
        "captions": list(CAPTION_TEMPLATES), "versions": versions(), "timings_s": {},
    }

    # 1. Digit scorer (trained once, on the same training split).
    if scorer_dir is not None:
        t0 = time.time()
        scorer = train_scorer(split, image_size=size, steps=cfg.scorer_steps, seed=cfg.seed)
        acc = prompt_accuracy(upscale(split.test_images, size), split.test_labels.tolist(), scorer)
        record["timings_s"]["scorer"] = round(time.time() - t0, 1)
        record["scorer_heldout_accuracy"] = acc
        save_scorer(scorer, scorer_dir, {
            "seed": cfg.seed, "steps": cfg.scorer_steps, "image_size": size, "heldout_accuracy": acc,
            "command": command, "time_s": record["timings_s"]["scorer"], "versions": record["versions"],
        })
        _log(log, f"scorer: held-out accuracy {acc:.4f} ({record['timings_s']['scorer']}s)")

    # 2. Build the teacher from the spec's seeds; train the text tower to name the digit, then freeze it.
    model = build_builtin(dataclasses.replace(spec, weights=None))
    t0 = time.time()
    record["text_encoder"] = train_text_encoder(model.text_encoder, model.tokenizer, cfg, log)
    _round_fp16_(model.text_encoder)
    record["timings_s"]["text_encoder"] = round(time.time() - t0, 1)
    for part in (model.vae, model.text_encoder):
        part.requires_grad_(False)

    # 3. VAE.
    t0 = time.time()
    model.vae.requires_grad_(True)
    record["vae"] = train_vae(model.vae, images, cfg, log)
    model.vae.requires_grad_(False)
    _round_fp16_(model.vae)
    record["timings_s"]["vae"] = round(time.time() - t0, 1)

    # 4. U-Net on the frozen VAE's latents.
    t0 = time.time()
    record["unet"] = train_unet(model.unet, model.vae, model.text_encoder, model.tokenizer, spec.scheduler,
                                images, split.train_labels, cfg, log)
    _round_fp16_(model.unet)
    record["timings_s"]["unet"] = round(time.time() - t0, 1)

    # 5. Save (fp16: the package stays small; the rounding above means the loaded model is the one measured).
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("unet", "vae", "text_encoder"):
        state = {k: v.detach().half().contiguous() for k, v in getattr(model, name).state_dict().items()
                 if v.is_floating_point()}
        save_file(state, str(out_dir / f"{name}.safetensors"))
    record["timings_s"]["total"] = round(time.time() - t_start, 1)
    record["parameters"] = {n: sum(p.numel() for p in getattr(model, n).parameters())
                            for n in ("unet", "vae", "text_encoder")}
    (out_dir / "train_config.json").write_text(json.dumps(record, indent=2) + "\n")
    _log(log, f"saved teacher to {out_dir} ({record['timings_s']['total']}s total)")
    return record
