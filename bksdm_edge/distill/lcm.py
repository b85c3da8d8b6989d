"""Latent consistency distillation (Luo et al. 2023, arXiv 2310.04378), as diffusers' consistency-distillation
example does it, as an objective of the shared distillation loop.

One micro-batch (Algorithm 1 of the paper):
1. pick a DDIM solver step n per example (solver timesteps t_n = skip·(n+1) - 1, skip = 1000 // N) and a CFG
   scale w ~ U[w_min, w_max];
2. noise the latents to t_{n+k} (the solver timestep) and let the *student* map them, with the embedded w, to
   the trajectory origin through the boundary-condition parameterisation c_skip·x + c_out·x0(x);
3. the frozen *teacher* takes one DDIM step with classifier-free guidance at w from t_{n+k} to t_n;
4. the *target network* (an EMA of the student) maps that point to the origin; the loss (pseudo-Huber or L2)
   pulls the student's answer at t_{n+k} towards the target's at t_n.

Guidance convention: w is diffusers' ``guidance_scale`` (uncond + w·(cond - uncond)); the student's
``timestep_cond`` is the embedding of w - 1, as ``LatentConsistencyModelPipeline`` computes it, so an image
asked for with ``guidance_scale=w`` is the one the teacher's CFG-w trajectory leads to.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..student import StudentReport, build_student
from .kd import load_start_unet, run_plan
from .loss import check_prediction_type
from .objective import DistillError, Objective, TrainContext, check_student_fits, register

LCM_LOSS_NAMES = ("loss", "loss_consistency", "w_mean")
SIGMA_DATA = 0.5
SCHEDULER_FILE = "scheduler_config.json"


def guidance_scale_embedding(w: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding of (LCM-convention) guidance scales ``w`` (B,) -> (B, dim); diffusers' formula
    (``LatentConsistencyModelPipeline.get_guidance_scale_embedding``): w·1000 times 10000^(-i/(dim/2 - 1)),
    sines then cosines, zero-padded to an odd ``dim``."""
    w = w.reshape(-1) * 1000.0
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=dtype) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    angles = w.to(dtype)[:, None] * freq.to(w.device)[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def boundary_scalings(timesteps: torch.Tensor, timestep_scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of the consistency parameterisation at integer ``timesteps`` (LCMScheduler's formula)."""
    t = timesteps.to(torch.float32) * timestep_scaling
    c_skip = SIGMA_DATA**2 / (t**2 + SIGMA_DATA**2)
    c_out = t / (t**2 + SIGMA_DATA**2) ** 0.5
    return c_skip[:, None, None, None], c_out[:, None, None, None]


def solver_timesteps(num_train_timesteps: int, num_ddim_timesteps: int) -> torch.Tensor:
    """The DDIM solver's timesteps, ascending: skip·(1..N) - 1 (LCMScheduler's origin schedule)."""
    skip = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1, dtype=torch.int64) * skip - 1


def x0_and_eps(model_output, timesteps, sample, prediction_type: str, alphas_cumprod):
    """Predicted clean latents and noise from a U-Net output (epsilon or v-prediction)."""
    a = alphas_cumprod[timesteps].to(sample.dtype)[:, None, None, None]
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    if prediction_type == "epsilon":
        return (sample - sigma * model_output) / alpha, model_output
    return alpha * sample - sigma * model_output, alpha * model_output + sigma * sample


def lcm_scheduler_config(teacher_scheduler_config: dict[str, Any], num_ddim_timesteps: int,
                         timestep_scaling: float) -> dict[str, Any]:
    """The LCMScheduler config a student trained with this run samples with (teacher's noise schedule)."""
    import inspect

    from diffusers import LCMScheduler

    known = inspect.signature(LCMScheduler.__init__).parameters  # the teacher's PNDM-only keys would be warned about
    sched = LCMScheduler.from_config(
        {k: v for k, v in dict(teacher_scheduler_config).items() if k in known},
        original_inference_steps=num_ddim_timesteps, timestep_scaling=timestep_scaling,
    )
    return {"_class_name": "LCMScheduler", **{k: v for k, v in dict(sched.config).items() if not k.startswith("_")}}


def add_guidance_embedding(unet, dim: int):
    """A copy of ``unet`` with a ``time_cond_proj_dim`` guidance embedding whose projection is zero, so the new
    U-Net computes exactly what ``unet`` does for any w (U-Nets that already have one are returned as-is)."""
    from diffusers import UNet2DConditionModel

    if unet.config.time_cond_proj_dim is not None:
        return unet
    out = UNet2DConditionModel.from_config(unet.config, time_cond_proj_dim=dim)
    missing, unexpected = out.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or set(missing) != {"time_embedding.cond_proj.weight"}:
        raise DistillError(f"internal: adding the guidance embedding left missing={missing}, unexpected={unexpected}")
    torch.nn.init.zeros_(out.time_embedding.cond_proj.weight)
    return out.train(unet.training)


def as_lcm(model, dim: int = 256):
    """Turn a loaded ``SDModel`` into the architecture ``distill --objective lcm`` produces: its U-Net gets a
    zero-initialised guidance embedding (``add_guidance_embedding``) and the model an ``LCMScheduler`` on its
    noise schedule. Before distillation it samples like the original U-Net; for timing and export checks."""
    from ..loading import lcm_scheduler

    model.unet = add_guidance_embedding(model.unet, dim)
    if model.scheduler is not None:
        model.scheduler = lcm_scheduler(model)
    return model


@register
class LcmObjective(Objective):
    """Latent consistency distillation of a (BK-SDM) student; see the module docstring."""

    name = "lcm"
    loss_names = LCM_LOSS_NAMES
    always_needs = ("text_encoder", "tokenizer")  # the empty-prompt embedding of the teacher's CFG

    def check(self) -> None:
        c = self.config.lcm
        problems = []
        if not 1.0 <= c.w_min <= c.w_max:
            problems.append(f"--w-min {c.w_min} / --w-max {c.w_max}: need 1 <= w-min <= w-max (diffusers' CFG scale; "
                            "1 is no guidance)")
        if not 1 <= c.num_ddim_timesteps <= 1000:
            problems.append(f"--num-ddim-timesteps {c.num_ddim_timesteps}: need 1..num_train_timesteps (e.g. 50)")
        if c.loss not in ("huber", "l2"):
            problems.append(f"--loss {c.loss!r}: choose huber or l2")
        if c.loss == "huber" and not c.huber_c > 0:
            problems.append(f"--huber-c {c.huber_c}: must be > 0")
        if not 0.0 <= c.target_ema < 1.0:
            problems.append(f"--target-ema {c.target_ema}: need 0 <= rate < 1 (0: the target is the student)")
        if c.time_cond_proj_dim < 2:
            problems.append(f"--time-cond-proj-dim {c.time_cond_proj_dim}: need >= 2 (LCM-SD uses 256)")
        self.plan = None
        if self.config.variant is not None:  # the plan of the student built from the teacher (or --student's)
            try:
                self.plan = run_plan(self.config)
            except DistillError as err:
                problems.append(str(err))
        if problems:
            raise DistillError("bad --objective lcm options: " + "; ".join(problems))

    def teacher_unet_source(self) -> str | None:
        return self.config.lcm.teacher_unet

    def build_student(self, ctx: TrainContext):
        c, teacher = self.config, ctx.model.unet
        check_prediction_type(ctx.noise_scheduler)
        if c.lcm.teacher_unet is not None and ctx.model.text_encoder is not None:
            check_student_fits(teacher.config, {"in_channels": teacher.config.in_channels,
                                                "out_channels": teacher.config.out_channels,
                                                "cross_attention_dim": ctx.model.text_encoder.config.hidden_size},
                               f"--teacher-unet {c.lcm.teacher_unet}")
        if c.student is not None:
            student, report = load_start_unet(c.student, self.plan, teacher)
        elif self.plan is not None:
            student, report = build_student(teacher, self.plan)
        else:  # plain LCM: the student starts as the solver teacher itself
            n = sum(p.numel() for p in teacher.parameters())
            student, report = copy.deepcopy(teacher), StudentReport(variant="teacher", teacher_params=n, student_params=n)
        student = add_guidance_embedding(student.float(), c.lcm.time_cond_proj_dim)
        report.student_params = sum(p.numel() for p in student.parameters())
        return student, report

    def setup(self, ctx: TrainContext, student) -> None:
        c = self.config.lcm
        sched = ctx.noise_scheduler
        self.prediction_type = check_prediction_type(sched)
        self.alphas_cumprod = sched.alphas_cumprod.to(ctx.device, torch.float32)
        total = sched.config.num_train_timesteps
        if c.num_ddim_timesteps > total:
            raise DistillError(f"--num-ddim-timesteps {c.num_ddim_timesteps} > the teacher's {total} timesteps")
        self.skip = total // c.num_ddim_timesteps
        self.solver = solver_timesteps(total, c.num_ddim_timesteps).to(ctx.device)
        self.embed_dim = student.config.time_cond_proj_dim
        # The target network: a frozen EMA copy of the student, in float32 like the student's master weights.
        self.target = copy.deepcopy(student).requires_grad_(False).to(ctx.device)
        self.target.train(student.training)
        # The empty-prompt embedding of the teacher's unconditional branch (LCMs learn CFG against "").
        m = ctx.model
        ids = m.tokenizer([""], padding="max_length", max_length=m.tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids.to(ctx.device)
        with torch.no_grad():
            self.uncond = m.text_encoder.to(ctx.device)(ids, return_dict=False)[0].to(ctx.weight_dtype)
        self.scheduler_config = lcm_scheduler_config(sched.config, c.num_ddim_timesteps, c.timestep_scaling)

    def checkpoint_objects(self) -> list[Any]:
        return [self.target]

    def losses(self, ctx: TrainContext, student, latents, text, generator):
        c, device, b = self.config.lcm, latents.device, latents.shape[0]
        teacher = ctx.model.unet
        # 1. Solver step and guidance scale per example.
        index = torch.randint(0, c.num_ddim_timesteps, (b,), generator=generator, device=device)
        start = self.solver[index]  # t_{n+k}
        end = (start - self.skip).clamp(min=0)  # t_n
        w = c.w_min + (c.w_max - c.w_min) * torch.rand((b,), generator=generator, device=device)
        w_embedding = guidance_scale_embedding(w - 1.0, self.embed_dim).to(device)
        noise = torch.randn(latents.shape, generator=generator, device=device)
        noisy = ctx.noise_scheduler.add_noise(latents, noise, start)

        # 2. The student's consistency-function output at t_{n+k}.
        skip_s, out_s = boundary_scalings(start, c.timestep_scaling)
        pred = student(noisy, start, text, timestep_cond=w_embedding, return_dict=False)[0]
        x0 = x0_and_eps(pred.float(), start, noisy, self.prediction_type, self.alphas_cumprod)[0]
        student_out = skip_s * noisy + out_s * x0

        with torch.no_grad():
            # 3. One DDIM step of the teacher with CFG at w, from t_{n+k} to t_n (both branches in one call).
            with ctx.accelerator.autocast():
                both = teacher(torch.cat([noisy, noisy]).to(ctx.weight_dtype), torch.cat([start, start]),
                               torch.cat([self.uncond.expand(b, -1, -1), text.to(ctx.weight_dtype)]),
                               return_dict=False)[0].float()
            x0_both, eps_both = x0_and_eps(both, torch.cat([start, start]), torch.cat([noisy, noisy]),
                                           self.prediction_type, self.alphas_cumprod)
            wb = w[:, None, None, None]
            guided_x0 = x0_both[:b] + wb * (x0_both[b:] - x0_both[:b])
            guided_eps = eps_both[:b] + wb * (eps_both[b:] - eps_both[:b])
            a_prev = torch.where(index > 0, self.alphas_cumprod[end], self.alphas_cumprod[0])[:, None, None, None]
            x_prev = a_prev.sqrt() * guided_x0 + (1 - a_prev).sqrt() * guided_eps

            # 4. The target network's consistency-function output at t_n.
            skip_t, out_t = boundary_scalings(end, c.timestep_scaling)
            with ctx.accelerator.autocast():
                target_pred = self.target(x_prev.float(), end, text.float(), timestep_cond=w_embedding,
                                          return_dict=False)[0].float()
            target_x0 = x0_and_eps(target_pred, end, x_prev, self.prediction_type, self.alphas_cumprod)[0]
            target = skip_t * x_prev + out_t * target_x0

        diff = student_out.float() - target.float()
        if c.loss == "l2":
            loss = diff.pow(2).mean()
        else:
            loss = (torch.sqrt(diff.pow(2) + c.huber_c**2) - c.huber_c).mean()
        return {"loss": loss, "loss_consistency": loss.detach(), "w_mean": w.mean()}

    @torch.no_grad()
    def after_optimizer_step(self, inner) -> None:
        rate = self.config.lcm.target_ema
        for t, s in zip(self.target.parameters(), inner.parameters()):
            t.lerp_(s.detach().to(t.dtype), 1.0 - rate)

    def decorate_unet_folder(self, folder: Path) -> None:
        # LCMScheduler.from_pretrained(folder) then reads the schedule the student was distilled for.
        (folder / SCHEDULER_FILE).write_text(json.dumps(self.scheduler_config, indent=2) + "\n")

    def save_outputs(self, run_dir: Path, inner, save_unet, extra) -> dict[str, str]:
        save_unet(self.target, run_dir / "unet_target",
                  extra={"distill": {**extra["distill"], "target_ema": self.config.lcm.target_ema}})
        return {"unet_target": "unet_target"}

    def info(self) -> dict[str, Any]:
        return {"lcm": self.student_meta()["lcm"]}

    def student_meta(self) -> dict[str, Any]:
        c = self.config.lcm
        return {"lcm": {
            "guidance_embedding": {"dim": self.embed_dim, "embeds": "guidance_scale - 1", "scale": 1000.0},
            "w_range": [c.w_min, c.w_max], "num_ddim_timesteps": c.num_ddim_timesteps, "skip": self.skip,
            "loss": c.loss, "huber_c": c.huber_c if c.loss == "huber" else None, "target_ema": c.target_ema,
            "timestep_scaling": c.timestep_scaling, "teacher_unet": c.teacher_unet, "scheduler": SCHEDULER_FILE,
        }}

    def validation_pipeline(self, model, student):
        from diffusers import LatentConsistencyModelPipeline, LCMScheduler

        return LatentConsistencyModelPipeline(
            vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=student,
            scheduler=LCMScheduler.from_config(self.scheduler_config), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )


@contextlib.contextmanager
def portable_lcm_noise(seeds: Sequence[int]) -> Iterator[None]:
    """Make diffusers' ``LCMScheduler`` draw batch row i's re-noising noise from ``NoiseStream(seeds[i])``.

    That is the noise ``bksdm-edge generate --seed S --latents-in L`` (``BundlePipeline``, and the Kotlin engine)
    draws between LCM steps when the initial latents are given, so a diffusers run and a bundle run with the same
    latents and seeds compute the same image (tests and the digits evaluation compare them this way).
    """
    import diffusers.schedulers.scheduling_lcm as scheduling_lcm

    from ..runtime.noise import NoiseStream

    streams = [NoiseStream(s) for s in seeds]
    original = scheduling_lcm.randn_tensor

    def draw(shape, generator=None, device=None, dtype=None, layout=None):
        if shape[0] != len(streams):
            raise ValueError(f"portable_lcm_noise has {len(streams)} seeds for a batch of {shape[0]}")
        rows = [torch.from_numpy(s.normal(tuple(shape[1:]))) for s in streams]
        return torch.stack(rows).to(device=device, dtype=dtype)

    scheduling_lcm.randn_tensor = draw
    try:
        yield
    finally:
        scheduling_lcm.randn_tensor = original
