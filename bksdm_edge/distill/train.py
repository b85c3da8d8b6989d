"""The distillation loop shared by every objective (``objective.py``): the BK-SDM paper's KD (``kd.py``) and
latent consistency distillation (``lcm.py``).

Runs unchanged on one CPU, one GPU or ``accelerate launch --multi_gpu`` (DDP, mixed precision,
gradient accumulation). Exact resume on CPU/fp32 rests on three things: the data order is a
function of (seed, epoch) and the position is the count of consumed micro-batches; noise,
timesteps and latent samples come from a generator seeded by (seed, micro-batch, process); and
model, optimizer, LR scheduler, EMA and RNG states are restored from ``accelerator.save_state``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..loading import load_model
from ..outputs import atomic_dir
from .cache import CachedDataset, build_cache, check_cache, encode_moments, encode_text, open_cache
from .checkpoint import (
    clean_partial,
    list_checkpoints,
    read_trainer_state,
    resolve_resume,
    save_checkpoint,
)
from .config import RESUME_INVARIANTS, DistillConfig, versions
from .data import EpochBatches, ImageCaptionDataset, batch_iterator, load_rows
from .loss import check_prediction_type
from .objective import DistillError, Objective, TrainContext, get_objective

LOG_FILE = "logs/train_log.jsonl"
RUN_CONFIG = "run_config.json"


@dataclass
class DistillResult:
    """What a finished run produced."""

    run_dir: Path
    steps: int
    unet_dir: Path
    ema_dir: Path | None
    log_path: Path
    last_losses: dict[str, float] = field(default_factory=dict)
    skipped_rows: int = 0
    resumed_from: str | None = None
    world_size: int = 1
    is_main_process: bool = True
    outputs: dict[str, Path] = field(default_factory=dict)  # every saved U-Net folder by name


def sample_latents(moments: torch.Tensor, generator: torch.Generator, scaling_factor: float) -> torch.Tensor:
    """Draw a scaled latent from VAE posterior moments (same parameterisation as diffusers' DiagonalGaussian)."""
    mean, logvar = torch.chunk(moments.float(), 2, dim=1)
    std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return (mean + std * eps) * scaling_factor


def micro_batch_seed(seed: int, micro_batch: int, process_index: int) -> int:
    return int(np.random.SeedSequence([seed, micro_batch, process_index]).generate_state(1)[0])


def _tracker(report_to: str) -> str | None:
    if report_to == "none":
        return None
    available = importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX")
    if report_to == "tensorboard" and not available:
        raise DistillError("--report-to tensorboard needs `pip install tensorboard`")
    if report_to not in ("auto", "tensorboard"):
        raise DistillError(f"unknown --report-to {report_to!r}; choose auto, tensorboard or none")
    return "tensorboard" if available else None


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _check_resume(checkpoint: Path, config: DistillConfig, world_size: int) -> dict[str, Any]:
    state = read_trainer_state(checkpoint)
    # Through from_dict, so fields added since the checkpoint was written compare as their defaults.
    saved = _flat({**DistillConfig.from_dict(state["config"]).to_dict(), "world_size": state["world_size"]})
    now = _flat({**config.to_dict(), "world_size": world_size})
    changed = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in RESUME_INVARIANTS if saved.get(k) != now.get(k)]
    if changed:
        raise DistillError(
            f"Cannot resume from {checkpoint}: these settings differ from the checkpointed run and would change the "
            "data order or the saved state: " + "; ".join(changed)
        )
    return state


def _optimizer(config: DistillConfig, params):
    o = config.optim
    if o.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise DistillError("--use-8bit-adam needs `pip install bitsandbytes` (CUDA only)") from err
        cls = bnb.optim.AdamW8bit
    else:
        cls = torch.optim.AdamW
    return cls(params, lr=o.lr, betas=(o.adam_beta1, o.adam_beta2), weight_decay=o.weight_decay, eps=o.adam_epsilon)


def _open_log(path: Path, resume_step: int | None):
    """The per-step JSONL log; on resume, entries after the checkpoint (steps that will be redone) are dropped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if resume_step is not None and path.exists():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= resume_step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError):
                break  # a line cut by a kill
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in kept)
    return open(path, "a", buffering=1)


def _save_atomic(objective: Objective, inner, out: Path, **kwargs) -> Path:
    """``objective.save_student`` into a temporary sibling renamed into place: a kill never leaves a half-written
    student, and the previous one (a resumed run's) is only deleted once the new one is complete."""
    with atomic_dir(out) as tmp:
        objective.save_student(inner, tmp, **kwargs)
    return out


def render_validation(model, student, config: DistillConfig, step: int, accelerator, objective: Objective) -> list[Path]:
    """Render the validation prompts with the current student; returns the image paths."""
    v = config.validation
    steps = v.num_inference_steps or objective.default_validation_steps
    pipe = objective.validation_pipeline(model, student)
    pipe.set_progress_bar_config(disable=True)
    out_dir = config.run_dir / "validation" / f"step-{step:06d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, images = [], []
    was_training = student.training
    student.eval()
    # Validation must not disturb the training RNG streams (exact resume compares runs with and without it).
    with torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []):
        generator = torch.Generator(device=accelerator.device).manual_seed(v.seed)
        with torch.no_grad(), accelerator.autocast():
            for i, prompt in enumerate(v.prompts):
                image = pipe(
                    prompt, num_inference_steps=steps, guidance_scale=v.guidance_scale,
                    height=config.data.resolution, width=config.data.resolution, generator=generator,
                ).images[0]
                path = out_dir / f"{i:02d}.png"
                image.save(path)
                paths.append(path)
                images.append(np.asarray(image))
    student.train(was_training)
    (out_dir / "prompts.json").write_text(json.dumps(list(v.prompts), indent=1))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", np.stack(images), step, dataformats="NHWC")
    return paths


def prepare_objective(objective: Objective, accelerator, need_encoders: bool = True):
    """Load the teacher, build the student and the objective's frozen parts (step 3 of ``distill``).

    Args:
        objective: from ``get_objective(config)``.
        accelerator: an ``accelerate.Accelerator`` (device, mixed precision).
        need_encoders: load the VAE and text encoder (not needed when training from a latent cache).
    Returns (TrainContext, student in train mode on the CPU in float32, StudentReport).
    """
    from diffusers import DDPMScheduler

    config, device = objective.config, accelerator.device
    # The VAE and text encoder are only needed without a cache (or for validation images, or when the objective
    # always needs them).
    components = ("unet", "scheduler") + (("vae", "text_encoder", "tokenizer") if need_encoders else ())
    components += tuple(c for c in objective.always_needs if c not in components)
    model = load_model(config.teacher, unet=objective.teacher_unet_source(), components=components)
    noise_scheduler = DDPMScheduler.from_config(model.scheduler.config)
    check_prediction_type(noise_scheduler)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    ctx = TrainContext(config=config, model=model, noise_scheduler=noise_scheduler, device=device,
                       weight_dtype=weight_dtype, accelerator=accelerator)
    student, report = objective.build_student(ctx)
    if config.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    for frozen in (model.unet, model.vae, model.text_encoder):
        if frozen is not None:
            frozen.requires_grad_(False).eval().to(device)
            if weight_dtype != torch.float32:  # a float32 cast is a no-op that diffusers warns about
                frozen.to(dtype=weight_dtype)
    student.train()
    objective.setup(ctx, student)
    return ctx, student, report


def distill(config: DistillConfig, *, command: list[str] | None = None) -> DistillResult:
    """Train a student of ``config.teacher`` with ``config.objective`` and save it under ``config.out``.

    Args:
        config: the run (see ``DistillConfig``); ``config.checkpoint.resume`` continues a run.
        command: the command line, recorded in ``run_config.json``.

    Returns:
        ``DistillResult`` with the output folders (``unet``, ``unet_ema``, the objective's extras such as
        ``unet_target``) and the last logged losses.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    run_dir = config.run_dir
    objective = get_objective(config)  # refuses bad objective options before anything is loaded
    if config.max_steps < 1 or config.batch_size < 1 or config.grad_accum < 1:
        raise DistillError("--max-steps, --batch-size and --grad-accum must be >= 1")

    # 1. Accelerator: DDP, mixed precision and gradient accumulation come from here and `accelerate launch`.
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accum,
        mixed_precision=config.mixed_precision,
        log_with=_tracker(config.report_to),
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    is_main, device, world = accelerator.is_main_process, accelerator.device, accelerator.num_processes

    # 2. New run or resume.
    checkpoint = resolve_resume(run_dir, config.checkpoint.resume)
    if checkpoint is None and (list_checkpoints(run_dir) or (run_dir / objective.output_dirs[0]).exists()):
        raise DistillError(f"{run_dir} already holds a run; pass --resume latest to continue it or choose another --out")
    resume_state = _check_resume(checkpoint, config, world) if checkpoint else None
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_partial(run_dir)
    set_seed(config.seed)

    # 3. Teacher, student, noise scheduler, the objective's frozen parts.
    use_cache = config.data.cache_dir is not None
    need_encoders = not use_cache or bool(config.validation.prompts) or not Path(config.data.cache_dir).exists()
    ctx, student, report = prepare_objective(objective, accelerator, need_encoders)
    model = ctx.model

    # 4. Data: the cache (built on first use) or the raw rows.
    rowset = load_rows(config.data) if (config.data.source or not use_cache) else None
    if use_cache:
        cache_path = Path(config.data.cache_dir)
        if not cache_path.exists():
            if rowset is None:
                raise DistillError(f"--cache-dir {cache_path} does not exist; pass --data to build it")
            if is_main:
                build_cache(model, rowset, config.data, cache_path, teacher=config.teacher, progress=config.progress)
            accelerator.wait_for_everyone()
        cache = open_cache(cache_path)
        check_cache(cache, config.teacher, config.data, rowset.fingerprint if rowset else None)
        dataset = CachedDataset(cache, config.data.random_flip, config.seed)
        scaling_factor = cache.meta["scaling_factor"]
        skipped = cache.meta.get("skipped_rows", 0)
    else:
        dataset = ImageCaptionDataset(rowset, config.data, model.tokenizer, config.seed)
        scaling_factor = model.vae.config.scaling_factor
        skipped = len(rowset.skipped)
    sampler = EpochBatches(len(dataset), config.batch_size, world, accelerator.process_index, config.seed)
    if skipped and is_main:
        print(f"skipped {skipped} bad row(s) of {config.data.source or config.data.cache_dir} (--skip-bad-rows); "
              f"training on {len(dataset)}", flush=True)

    # 5. Optimizer, LR schedule, EMA. A prepared scheduler steps once per process, hence the * world.
    optimizer = _optimizer(config, [p for p in student.parameters() if p.requires_grad])
    try:
        lr_scheduler = get_scheduler(
            config.optim.lr_scheduler, optimizer,
            num_warmup_steps=config.optim.lr_warmup_steps * world,
            num_training_steps=config.max_steps * world,
        )
    except ValueError as err:
        raise DistillError(f"--lr-scheduler {config.optim.lr_scheduler!r}: {err}") from err
    ema = None
    if config.ema:
        averaged = objective.ema_model(student)
        ema = EMAModel(averaged.parameters(), decay=config.ema_decay, model_cls=type(averaged),
                       model_config=averaged.config)
        ema.to(device)
        accelerator.register_for_checkpointing(ema)
    for obj in objective.checkpoint_objects():
        accelerator.register_for_checkpointing(obj)
    student, optimizer, lr_scheduler = accelerator.prepare(student, optimizer, lr_scheduler)
    inner = accelerator.unwrap_model(student)

    # 6. Restore the checkpoint.
    global_step = 0
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        global_step = resume_state["step"]
        if is_main:
            print(f"resumed from {checkpoint} at step {global_step}", flush=True)
    run_info = {
        "config": config.to_dict(),
        "world_size": world,
        "versions": versions(),
        "command": command,
        "student": report.summary(),
        "data": {"rows": len(dataset), "skipped_rows": skipped, "cache": config.data.cache_dir},
        "objective": config.objective,
        **objective.info(),
        "prediction_type": ctx.noise_scheduler.config.prediction_type,
    }
    log_file = None
    if is_main:
        (run_dir / RUN_CONFIG).write_text(json.dumps({**run_info, "status": "running"}, indent=2))
        log_file = _open_log(run_dir / LOG_FILE, global_step if checkpoint else None)
        if accelerator.log_with:
            init_kwargs = {"tensorboard": {"purge_step": global_step + 1}} if checkpoint else {}
            accelerator.init_trackers("distill", config=_flat(config.to_dict()), init_kwargs=init_kwargs)

    # 7. Train.
    loss_names = objective.loss_names
    images_per_step = config.batch_size * config.grad_accum * world
    micro = global_step * config.grad_accum
    batches = batch_iterator(dataset, sampler, micro, config.data.num_workers)
    bar = tqdm(total=config.max_steps, initial=global_step, desc="distill", unit="step",
               disable=not (is_main and config.progress))
    last: dict[str, float] = {}
    speed = None

    def micro_step(batch) -> dict[str, torch.Tensor]:
        generator = torch.Generator(device=device).manual_seed(micro_batch_seed(config.seed, micro, accelerator.process_index))
        with torch.no_grad():
            if "moments" in batch:
                moments = batch["moments"].to(device)
                text = batch["text_embeds"].to(device, dtype=ctx.weight_dtype)
            else:
                moments = encode_moments(model.vae, batch["pixel_values"].to(device, dtype=ctx.weight_dtype))
                text = encode_text(model.text_encoder, batch["input_ids"].to(device))
        latents = sample_latents(moments, generator, scaling_factor)
        return objective.losses(ctx, student, latents, text, generator)

    with objective.session(ctx, inner):
        while global_step < config.max_steps:
            started = time.perf_counter()
            lr = lr_scheduler.get_last_lr()[0]  # the rate this step uses
            sums = torch.zeros(len(loss_names), device=device)
            grad_norm = None
            for _ in range(config.grad_accum):
                batch = next(batches)
                with accelerator.accumulate(student):
                    losses = micro_step(batch)
                    accelerator.backward(losses["loss"])
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(student.parameters(), config.optim.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                sums += torch.stack([losses[k].detach().float() for k in loss_names])
                micro += 1
            if not accelerator.sync_gradients:
                raise DistillError("internal: an optimizer step ended without a gradient sync")
            objective.after_optimizer_step(inner)
            if ema is not None:
                ema.step(objective.ema_model(inner).parameters())
            global_step += 1
            means = accelerator.reduce(sums / config.grad_accum, reduction="mean").tolist()
            seconds = time.perf_counter() - started
            speed = images_per_step / seconds if speed is None else 0.9 * speed + 0.1 * images_per_step / seconds
            last = dict(zip(loss_names, means))
            if not all(math.isfinite(v) for v in means):
                raise DistillError(f"non-finite loss at step {global_step}: {last}. Lower --lr or use bf16/fp32.")
            record = {
                "step": global_step,
                **last,
                "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "images_per_s": images_per_step / seconds,
                "seconds": seconds,
            }
            if is_main:
                log_file.write(json.dumps(record) + "\n")
                bar.update(1)
                if global_step % config.log_every == 0 or global_step == config.max_steps:
                    bar.set_postfix(loss=f"{last['loss']:.4g}", img_s=f"{speed:.3g}")
                    accelerator.log({k: v for k, v in record.items() if v is not None and k != "step"},
                                    step=global_step)
            if config.checkpoint.every > 0 and global_step % config.checkpoint.every == 0:
                save_checkpoint(
                    accelerator, run_dir, global_step,
                    {"step": global_step, "micro_batches": micro, "config": config.to_dict(), "world_size": world,
                     "losses": last},
                    config.checkpoint.keep,
                )
            v = config.validation
            if v.prompts and is_main and v.every > 0 and global_step % v.every == 0:
                render_validation(model, inner, config, global_step, accelerator, objective)
    bar.close()

    # 8. Final outputs: the student (and its EMA) as diffusers model folders with the run config beside them.
    accelerator.wait_for_everyone()
    main_name, ema_name = objective.output_dirs
    unet_dir, ema_dir = run_dir / main_name, (run_dir / ema_name if ema is not None else None)
    outputs: dict[str, str | None] = {}
    if is_main:
        v = config.validation
        if v.prompts and not (v.every > 0 and global_step % v.every == 0):
            render_validation(model, inner, config, global_step, accelerator, objective)
        extra = {"distill": {"steps": global_step, "run_config": RUN_CONFIG, "losses": last,
                             "objective": config.objective}}

        def save_unet(unet, out: Path, extra: dict) -> Path:
            return _save_atomic(objective, unet, out, report=report, extra=extra)

        save_unet(inner, unet_dir, extra)
        if ema is not None:
            averaged = objective.ema_model(inner).parameters
            ema.store(averaged())
            ema.copy_to(averaged())
            save_unet(inner, ema_dir, {"distill": {**extra["distill"], "ema_decay": config.ema_decay}})
            ema.restore(averaged())
        outputs = {main_name: main_name, ema_name: ema_name if ema is not None else None,
                   **objective.save_outputs(run_dir, inner, save_unet, extra)}
        result_info = {**run_info, "status": "finished", "steps": global_step, "last_losses": last,
                       "outputs": outputs}
        (run_dir / RUN_CONFIG).write_text(json.dumps(result_info, indent=2))
        log_file.close()
    accelerator.end_training()
    return DistillResult(
        run_dir=run_dir, steps=global_step, unet_dir=unet_dir, ema_dir=ema_dir, log_path=run_dir / LOG_FILE,
        last_losses=last, skipped_rows=skipped, resumed_from=str(checkpoint) if checkpoint else None,
        world_size=world, is_main_process=is_main,
        outputs={k: run_dir / v for k, v in outputs.items() if v is not None},
    )


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-step records of a run's JSONL log."""
    path = Path(run_dir) / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
