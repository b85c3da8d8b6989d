"""A small text-to-image teacher trained on scikit-learn's handwritten digits, and a digit scorer.

No real Stable Diffusion checkpoint or LAION/COCO data can be downloaded where this project is built, so the
toolkit trains its own teacher: ``sklearn.datasets.load_digits`` (1,797 8x8 images, bundled with scikit-learn)
upscaled to 32 px, captioned "a handwritten digit seven" and the like. The teacher has the SD-v1 layout (an
AutoencoderKL, a CLIP-architecture text encoder read through the real CLIP tokenizer, and a U-Net with
CrossAttnDown x3 + DownBlock2D, a cross-attention mid block and UpBlock2D + CrossAttnUp x3) so every BK-SDM
variant, the distiller and the exporters apply to it unchanged.

The digit scorer is a small CNN trained once on the same training split. It gives the two quality numbers of
this scale: ``prompt_accuracy`` (the fraction of generated images classified as the digit the prompt asked
for; the CLIP-score analogue) and a Fréchet distance on its penultimate features against the held-out real
digits (the FID analogue).

Training choices (see docs/quality.md): the CLIP text tower is trained for a few seconds to name the digit at
every token position from the number word on (a frozen random tower left the digit in 1 of 77 token states and
the U-Net learnt to ignore the prompt), then frozen and stored in fp16; the VAE is trained next (L1 + a small
KL term), then its latent space is rescaled exactly so latents have unit standard deviation under the spec's
``scaling_factor``; the U-Net is trained with the epsilon objective, Min-SNR-5 loss weighting, 10% caption
dropout (for classifier-free guidance) and an EMA copy, which is what ships.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Training captions vary a little; evaluation always uses the first template.
CAPTION_TEMPLATES = (
    "a handwritten digit {word}",
    "a photo of the handwritten number {word}",
    "the digit {word}, handwritten",
    "a drawing of the number {word}",
)
SCORER_SIZE = 16  # the scorer sees every image as 16x16 grayscale, whatever its resolution
HOLDOUT_FRACTION = 0.2
SPLIT_SEED = 0


def caption(digit: int, template: int = 0) -> str:
    """The caption for ``digit`` (0-9) with caption template number ``template``."""
    return CAPTION_TEMPLATES[template].format(word=DIGIT_WORDS[digit])


def eval_prompts() -> list[str]:
    """The 10 evaluation prompts, digit 0 to 9."""
    return [caption(d) for d in range(10)]


def digit_of_caption(text: str) -> int | None:
    """The digit a caption asks for (a number word or a single numeral), or None if it names none or several."""
    words = [w.strip(".,;:!?\"'()") for w in text.lower().split()]
    found = {DIGIT_WORDS.index(w) for w in words if w in DIGIT_WORDS}
    found |= {int(w) for w in words if len(w) == 1 and w.isdigit()}
    return found.pop() if len(found) == 1 else None


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigitsSplit:
    """Digit images as float tensors in [0, 1], shape (N, 1, 8, 8), with labels (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_digit_split() -> DigitsSplit:
    """scikit-learn's digits, split 80/20 stratified with a fixed seed (the held-out 20% is never trained on)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = data.images.astype(np.float32) / 16.0  # ink is 16 in the raw data: white digit on black
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, data.target, test_size=HOLDOUT_FRACTION, stratify=data.target, random_state=SPLIT_SEED
    )
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return DigitsSplit(
        as_tensor(x_tr)[:, None], as_tensor(y_tr).long(), as_tensor(x_te)[:, None], as_tensor(y_te).long()
    )


def upscale(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, 8, 8) digits in [0, 1] -> (N, 3, size, size) RGB in [0, 1] (bicubic, clamped)."""
    big = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return big.expand(-1, 3, -1, -1).contiguous()


def write_digits_imagefolder(out: str | Path, resolution: int) -> int:
    """Write the digits training split as an image folder with ``metadata.jsonl`` (the paper's LAION layout:
    ``file_name`` + ``text``, captions cycling through ``CAPTION_TEMPLATES``); returns the number of images."""
    from PIL import Image

    split = load_digit_split()
    images = (upscale(split.train_images, resolution) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metadata.jsonl", "w") as meta:
        for i, (img, label) in enumerate(zip(images, split.train_labels.tolist())):
            name = f"{i:05d}.png"
            Image.fromarray(img).save(out / name)
            meta.write(json.dumps({"file_name": name, "text": caption(label, i % len(CAPTION_TEMPLATES))}) + "\n")
    return len(images)


# ----------------------------------------------------------------------------------------------------------------
# Digit scorer
# ----------------------------------------------------------------------------------------------------------------


def to_scorer_input(images: torch.Tensor) -> torch.Tensor:
    """Any (N, C, H, W) image batch (uint8 0-255 or float 0-1, gray or RGB) -> (N, 1, 16, 16) float in [0, 1]."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (SCORER_SIZE, SCORER_SIZE):
        x = F.interpolate(x, size=(SCORER_SIZE, SCORER_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x


class DigitScorer(nn.Module):
    """A small CNN digit classifier. ``features`` (64-d, penultimate) feeds the Fréchet distance."""

    num_features = 64

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, self.num_features)
        self.head = nn.Linear(self.num_features, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = to_scorer_input(images) * 2 - 1
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) for any image batch accepted by ``to_scorer_input``."""
        return self.head(self.features(images))


class ScorerFeatures(nn.Module):
    """The scorer's penultimate features as a feature extractor (torchmetrics' FID takes it as ``feature=``)."""

    def __init__(self, scorer: DigitScorer):
        super().__init__()
        self.scorer = scorer
        self.num_features = scorer.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scorer.features(images)


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
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return scorer.eval()


def save_scorer(scorer: DigitScorer, out_dir: str | Path, info: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in scorer.state_dict().items()}, str(out_dir / "scorer.safetensors"))
    (out_dir / "train_config.json").write_text(json.dumps(info, indent=2) + "\n")


def load_scorer(path: str | Path | None = None) -> DigitScorer:
    """Load the digit scorer (default: the one shipped in ``bksdm_edge/weights/digit-scorer``)."""
    from importlib import resources

    from safetensors.torch import load_file

    root = Path(path) if path is not None else Path(str(resources.files("bksdm_edge") / "weights" / "digit-scorer"))
    scorer = DigitScorer()
    scorer.load_state_dict(load_file(str(root / "scorer.safetensors")))
    return scorer.eval()


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([fn(images[i : i + batch]) for i in range(0, len(images), batch)])


def prompt_accuracy(images: torch.Tensor, digits: Sequence[int], scorer: DigitScorer | None = None) -> float:
    """Fraction of ``images`` (N, C, H, W; uint8 or float in [0, 1]) that the scorer classifies as ``digits``."""
    scorer = scorer or load_scorer()
    pred = _batched(scorer, images).argmax(dim=1)
    return float((pred == torch.as_tensor(list(digits))).float().mean())


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between two Gaussians (the FID formula), with scipy.linalg.sqrtm.

    ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)); as in pytorch-fid, a tiny diagonal offset is added when the
    product is singular and the imaginary part left by sqrtm's rounding is dropped.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean), 0.0))


def digit_frechet_distance(images: torch.Tensor, reference: torch.Tensor, scorer: DigitScorer | None = None) -> float:
    """Fréchet distance between the scorer features of ``images`` and of ``reference`` images."""
    scorer = scorer or load_scorer()
    a = _batched(scorer.features, images).numpy()
    b = _batched(scorer.features, reference).numpy()
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def heldout_reference(image_size: int = 32) -> torch.Tensor:
    """The held-out real digits (360 images) as (N, 3, size, size) float in [0, 1]: the FD reference set."""
    return upscale(load_digit_split().test_images, image_size)


# ----------------------------------------------------------------------------------------------------------------
# Teacher training
# ----------------------------------------------------------------------------------------------------------------


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
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
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
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
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


class _EMA:
    """Exponential moving average of a module's parameters (decay warms up as (1+t)/(10+t))."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = [p.detach().clone() for p in module.parameters()]
        self.steps = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for s, p in zip(self.shadow, module.parameters()):
            s.lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for s, p in zip(self.shadow, module.parameters()):
            p.copy_(s)


def train_unet(unet, vae, text_encoder, tokenizer, scheduler_config, images, labels, cfg: TeacherTrainConfig,
               log=None) -> dict[str, float]:
    """Train the U-Net (epsilon objective, Min-SNR weighting, caption dropout, EMA); loads the EMA weights at the end.

    Latent posteriors and caption embeddings are computed once (the VAE and text encoder are frozen); each step
    samples a fresh latent from the posterior, a caption template, a timestep and noise.
    """
    from diffusers import DDPMScheduler

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
    ema = _EMA(unet, cfg.ema_decay)
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
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(unet)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % cfg.log_every == 0 or step == cfg.unet_steps - 1:
            _log(log, f"unet step {step:4d}  loss {running:.4f}  {time.time() - t0:.0f}s")
    ema.copy_to(unet)
    unet.eval()
    return {"final_loss_ema": float(running) if running is not None else float("nan")}


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

    from ..loading import build_builtin

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
        "captions": list(CAPTION_TEMPLATES), "versions": _versions(), "timings_s": {},
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


def _versions() -> dict[str, str]:
    import diffusers
    import sklearn
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "scikit-learn": sklearn.__version__, "numpy": np.__version__}


# ----------------------------------------------------------------------------------------------------------------
# Scoring a model
# ----------------------------------------------------------------------------------------------------------------


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


def score_digits(images: torch.Tensor, digits: Sequence[int], scorer: DigitScorer | None = None,
                 resolution: int = 32) -> dict[str, Any]:
    """Prompt accuracy (overall and per digit) and Fréchet distance to the held-out real digits."""
    scorer = scorer or load_scorer()
    pred = _batched(scorer, images).argmax(dim=1)
    want = torch.as_tensor(list(digits))
    per_digit = {d: float((pred[want == d] == d).float().mean()) for d in range(10) if (want == d).any()}
    return {
        "prompt_accuracy": float((pred == want).float().mean()),
        "per_digit_accuracy": per_digit,
        "frechet_distance": digit_frechet_distance(images, heldout_reference(resolution), scorer),
        "n_images": len(want),
    }


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

    from ..loading import build_builtin

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
    resolution = resolution or model.vae.config.sample_size
    scorer = scorer or load_scorer()
    pipe = model.to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    t0 = time.time()
    images, digits = generate_digits(pipe, cfg, resolution)
    gen_s = time.time() - t0
    scores = score_digits(images, digits, scorer, resolution)
    record = {
        "model": model.source, "unet": model.unet_source, "weights": model.info.get("weights"), "name": name,
        "protocol": {"prompts": eval_prompts(), "seeds": list(range(cfg.seeds)), "steps": cfg.steps,
                     "scheduler": type(pipe.scheduler).__name__, "guidance_scale": cfg.guidance_scale,
                     "resolution": resolution, "reference": "held-out real digits (20% split, upscaled)",
                     "scorer": "bksdm_edge/weights/digit-scorer"},
        **scores, "generation_s": round(gen_s, 1), "versions": _versions(), **(extra or {}),
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
