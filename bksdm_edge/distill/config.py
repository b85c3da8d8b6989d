"""Every option of a distillation run, as data.

Defaults follow the BK-SDM paper's recipe (arXiv 2305.15798, Sec. 4): lr 5e-5
constant, AdamW with weight decay 1e-2, gradient-norm clip 1, all loss weights 1.
The ``lcm`` objective's defaults follow diffusers' consistency-distillation example
(Latent Consistency Models, arXiv 2310.04378). The resolved config is written as
``run_config.json`` beside the outputs, with the versions that produced it.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DataConfig:
    """Where the image-caption pairs come from and how images are prepared.

    Attributes:
        source: an image folder with ``metadata.jsonl``, a CSV/JSONL of image paths and captions,
            or a Hugging Face ``datasets`` name / saved dataset folder. None when training from a cache only.
        resolution: square training resolution in pixels (shorter side resized, then cropped).
        center_crop: center crop (paper); False takes a seeded random crop.
        random_flip: horizontal flip with probability 0.5 (paper).
        image_column / caption_column: column names; None picks a known name (file_name/image, text/caption).
        split: split of a Hugging Face dataset.
        skip_bad_rows: drop rows with unreadable images or missing captions (their count is reported)
            instead of failing.
        cache_dir: folder of cached VAE latents and text embeddings (built on first use).
        cache_dtype: storage dtype of the cache ("float32" reproduces the uncached path; "float16" halves disk).
        num_workers: DataLoader worker processes.
    """

    source: str | None = None
    resolution: int = 512
    center_crop: bool = True
    random_flip: bool = True
    image_column: str | None = None
    caption_column: str | None = None
    split: str = "train"
    skip_bad_rows: bool = False
    cache_dir: str | None = None
    cache_dtype: str = "float32"
    num_workers: int = 4


@dataclass(frozen=True)
class LossConfig:
    """Weights of λ_task·L_task + λ_out·L_outKD + λ_feat·L_featKD."""

    lambda_task: float = 1.0
    lambda_out: float = 1.0
    lambda_feat: float = 1.0


@dataclass(frozen=True)
class LcmConfig:
    """Latent consistency distillation (``objective="lcm"``).

    Guidance scales are diffusers' ``guidance_scale`` (the CFG scale of ``StableDiffusionPipeline``:
    uncond + w * (cond - uncond)). The student embeds ``w - 1``, exactly as ``LatentConsistencyModelPipeline``
    embeds its ``guidance_scale - 1``, so ``guidance_scale=w`` at inference asks for the teacher's CFG-w image.

    Attributes:
        w_min / w_max: range of the teacher's CFG scale, sampled uniformly per example
            (defaults: diffusers' example's 5..15 in the LCM paper's convention, +1).
        num_ddim_timesteps: DDIM solver timesteps out of the teacher's 1000 (skip = 1000 // N); also the
            ``original_inference_steps`` of the LCMScheduler written next to the student.
        loss: "huber" (pseudo-Huber, sqrt(d^2 + c^2) - c) or "l2".
        huber_c: the pseudo-Huber constant c.
        target_ema: EMA rate of the target network (diffusers' example: 0.95).
        time_cond_proj_dim: width of the guidance embedding added to a student that has none (256, as LCM-SD).
        timestep_scaling: boundary-condition scale (c_skip, c_out), LCMScheduler's ``timestep_scaling``.
        teacher_unet: optional U-Net folder used as the ODE-solver teacher instead of ``teacher``'s own U-Net
            (e.g. a KD-distilled BK-SDM student); VAE, text encoder and scheduler still come from ``teacher``.
    """

    w_min: float = 6.0
    w_max: float = 16.0
    num_ddim_timesteps: int = 50
    loss: str = "huber"
    huber_c: float = 0.001
    target_ema: float = 0.95
    time_cond_proj_dim: int = 256
    timestep_scaling: float = 10.0
    teacher_unet: str | None = None


@dataclass(frozen=True)
class VaeConfig:
    """Tiny-VAE distillation (``objective="vae"``, ``bksdm-edge distill-vae``; see ``distill/vae.py``).

    Attributes:
        channels: width of every stage of the ``AutoencoderTiny`` (None: TAESD's 64, capped at the teacher VAE's
            first width; ``tiny_vae.tiny_vae_config``).
        encoder: also train the tiny encoder (towards the teacher encoder's latents); otherwise only the decoder.
        trajectories: number of teacher text-to-image runs whose final latents the decoder also trains on
            (generated once per run, from the data's captions or ``trajectory_prompts``).
        trajectory_steps / trajectory_guidance: sampling steps (the teacher's scheduler) and CFG scale of those runs.
        trajectory_fraction: share of each micro-batch added as trajectory latents (round(batch x fraction) rows
            on top of the batch's image latents).
        trajectory_prompts: a prompt file (one per line) instead of the data's captions.
        lambda_l1 / lambda_l2: pixel losses against the teacher decoder's image.
        lambda_edge: L1 between Sobel gradients (keeps edges sharp).
        lambda_fft: L1 between FFT magnitudes at 3 scales (a multi-scale frequency loss).
        lambda_adv: hinge-GAN term with a patch discriminator trained from scratch (0: no discriminator).
        disc_channels: width of the discriminator's first layer.
        lambda_enc: MSE of the tiny encoder's latents against the teacher encoder's (with ``encoder``).
    """

    channels: int | None = None
    encoder: bool = False
    trajectories: int = 64
    trajectory_steps: int = 25
    trajectory_guidance: float = 7.5
    trajectory_fraction: float = 0.25
    trajectory_prompts: str | None = None
    lambda_l1: float = 1.0
    lambda_l2: float = 1.0
    lambda_edge: float = 1.0
    lambda_fft: float = 0.0
    lambda_adv: float = 0.0
    disc_channels: int = 32
    lambda_enc: float = 1.0


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and the learning-rate schedule (``diffusers.optimization.get_scheduler`` names)."""

    lr: float = 5e-5
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    use_8bit_adam: bool = False


@dataclass(frozen=True)
class CheckpointConfig:
    """Atomic checkpoints every ``every`` optimizer steps; the newest ``keep`` are kept (0 keeps all).

    ``resume`` is "latest", a checkpoint folder, or None (a new run).
    """

    every: int = 500
    keep: int = 3
    resume: str | None = None


# Validation sampling steps when ValidationConfig.num_inference_steps is None, per objective.
DEFAULT_VALIDATION_STEPS = {"kd": 25, "lcm": 4, "vae": 25}


@dataclass(frozen=True)
class ValidationConfig:
    """Prompts rendered with the student every ``every`` steps and at the end (empty: no validation)."""

    prompts: tuple[str, ...] = ()
    every: int = 500
    num_inference_steps: int | None = None  # None: DEFAULT_VALIDATION_STEPS[objective]
    guidance_scale: float = 7.5
    seed: int = 0


@dataclass(frozen=True)
class DistillConfig:
    """One distillation run.

    Attributes:
        teacher: model source for ``loading.load_model`` (``builtin:...``, a diffusers folder or a hub id).
        variant: the removal plan: a BK-SDM variant (``bk-base``, ``bk-small``, ``bk-tiny``), a plan file
            (docs/plans.md) or a student U-Net folder (its recognised plan). ``kd`` needs it or ``student``
            (whose plan it then uses). With ``lcm`` it
            builds the student from the teacher when ``student`` is None (None there: the teacher's U-Net).
        out: run folder (checkpoints, logs, final ``unet``/``unet_ema``, ``run_config.json``).
        student: optional U-Net folder to start from instead of the teacher-initialised student (``vae``: a tiny
            VAE source, e.g. madebyollin/taesd, to fine-tune instead of a freshly initialised one).
        objective: "kd" (the BK-SDM paper's task + output-KD + feature-KD), "lcm" (latent consistency
            distillation: a few-step student, see ``LcmConfig``) or "vae" (a tiny VAE learns the teacher's VAE,
            ``bksdm-edge distill-vae``, see ``VaeConfig``).
        max_steps: optimizer steps.
        batch_size: images per process per micro-batch; the global batch is
            ``batch_size * grad_accum * processes``.
        grad_accum: micro-batches per optimizer step.
        mixed_precision: "no", "fp16" or "bf16" (accelerate).
        gradient_checkpointing: trade compute for activation memory in the student.
        ema / ema_decay: keep an exponential moving average of the student (``diffusers.training_utils.EMAModel``).
        seed: seeds data order, augmentation, noise and timesteps.
        report_to: "auto" (TensorBoard when installed), "tensorboard" or "none"; a JSONL log is always written.
        log_every: progress-bar refresh and tracker logging interval in steps (the JSONL has every step).
        progress: show a tqdm progress bar.
    """

    teacher: str
    variant: str | None
    out: str
    student: str | None = None
    objective: str = "kd"
    max_steps: int = 50_000
    batch_size: int = 64
    grad_accum: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.9999
    seed: int = 0
    report_to: str = "auto"
    log_every: int = 1
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    lcm: LcmConfig = field(default_factory=LcmConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        nested = {"data": DataConfig, "loss": LossConfig, "optim": OptimConfig, "checkpoint": CheckpointConfig,
                  "validation": ValidationConfig, "lcm": LcmConfig, "vae": VaeConfig}
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        for name, sub in nested.items():
            if name in kwargs:
                sub_known = {f.name for f in dataclasses.fields(sub)}
                values = {k: v for k, v in kwargs[name].items() if k in sub_known}
                if "prompts" in values:
                    values["prompts"] = tuple(values["prompts"])
                kwargs[name] = sub(**values)
        return cls(**kwargs)

    @property
    def run_dir(self) -> Path:
        return Path(self.out)


# Fields that fix the data order and the shapes of saved optimizer/EMA state: a resumed run must keep them.
RESUME_INVARIANTS = ("objective", "variant", "batch_size", "grad_accum", "seed", "ema", "data.resolution",
                     "data.center_crop", "data.random_flip", "world_size", "lcm.time_cond_proj_dim",
                     "vae.channels", "vae.encoder", "vae.lambda_adv", "vae.disc_channels", "vae.trajectories",
                     "vae.trajectory_fraction")


def versions() -> dict[str, str]:
    """Versions of the packages that shape a run's results."""
    import accelerate
    import diffusers
    import torch
    import transformers

    from .. import __version__

    return {
        "bksdm_edge": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }
