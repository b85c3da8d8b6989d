"""``bksdm-edge distill``: train a BK-SDM student from its teacher (``kd``: task + output-KD + feature-KD losses)
or make a student few-step (``lcm``: latent consistency distillation)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError

DATA_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def _bool_flag(p, name: str, default: bool, help: str) -> None:
    p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=default, help=help)


def add_data_arguments(p) -> None:
    """Data options shared with ``cache-latents``."""
    g = p.add_argument_group("data")
    g.add_argument("--data", help="image folder with metadata.jsonl (file_name, text), a CSV/JSONL of image paths and "
                   "captions, or a Hugging Face dataset name / save_to_disk folder")
    g.add_argument("--resolution", type=int, default=512, help="training resolution in pixels (default 512)")
    g.add_argument("--random-crop", action="store_true", help="seeded random crops instead of center crops")
    _bool_flag(g, "flip", True, "random horizontal flips (default on, as in the paper)")
    g.add_argument("--image-column", help="image column (default: file_name/image/path)")
    g.add_argument("--caption-column", help="caption column (default: text/caption/prompt)")
    g.add_argument("--split", default="train", help="split of a Hugging Face dataset (default train)")
    g.add_argument("--skip-bad-rows", action="store_true", help="drop unreadable images / missing captions, "
                   "reporting their count, instead of failing")
    g.add_argument("--cache-dir", help="latent + text-embedding cache (see `bksdm-edge cache-latents`); built here "
                   "first when missing")
    g.add_argument("--cache-dtype", choices=["float32", "float16"], default="float32",
                   help="storage dtype of a cache built by this command (float16 halves disk, no longer bit-exact)")
    g.add_argument("--num-workers", type=int, default=4, help="DataLoader workers (default 4)")


def data_config(args):
    from ..distill.config import DataConfig

    return DataConfig(
        source=args.data, resolution=args.resolution, center_crop=not args.random_crop, random_flip=args.flip,
        image_column=args.image_column, caption_column=args.caption_column, split=args.split,
        skip_bad_rows=args.skip_bad_rows, cache_dir=args.cache_dir, cache_dtype=args.cache_dtype,
        num_workers=args.num_workers,
    )


def register(subparsers) -> None:
    from ..distill.config import LcmConfig
    from ..plans.cli_args import add_plan_args

    lcm = LcmConfig()
    p = subparsers.add_parser(
        "distill",
        help="distil a BK-SDM student from its teacher, or make it few-step (--objective lcm)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="--objective kd (default): train a BK-SDM student (initialised from the teacher) with "
        "λ_task·L_task + λ_out·L_outKD + λ_feat·L_featKD; defaults are the paper's recipe. --objective lcm: latent "
        "consistency distillation of --student (e.g. a kd run's unet) against the teacher's CFG trajectories, for "
        "1-8-step sampling with LCMScheduler. Runs on CPU, one GPU or `accelerate launch --multi_gpu`. Writes "
        "RUN_DIR/unet (+ unet_ema; lcm: + unet_target), run_config.json, checkpoints/ and logs/. See docs/distill.md.",
    )
    p.add_argument("--teacher", required=True, help="teacher model source (builtin:..., diffusers folder, hub id)")
    p.add_argument("--objective", choices=["kd", "lcm"], default="kd",
                   help="kd: BK-SDM distillation; lcm: latent consistency distillation (few-step student)")
    add_plan_args(p, required=False, note="kd: --variant, --plan or --student is required; with lcm and no "
                  "--student, the student is this plan built from the teacher, or the teacher's own U-Net when omitted")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--student", help="start from this student U-Net folder instead of the teacher-initialised one "
                   "(kd without --variant/--plan: the plan is the one the folder corresponds to)")
    add_data_arguments(p)
    add_training_arguments(p)
    l = p.add_argument_group("loss")
    l.add_argument("--lambda-task", type=float, default=1.0, help="weight of MSE(student, noise or velocity)")
    l.add_argument("--lambda-out", type=float, default=1.0, help="weight of MSE(student, teacher output)")
    l.add_argument("--lambda-feat", type=float, default=1.0, help="weight of the summed feature MSEs")
    lc = p.add_argument_group("latent consistency distillation (--objective lcm)")
    lc.add_argument("--w-min", type=float, default=lcm.w_min,
                    help="smallest teacher CFG scale sampled (diffusers' guidance_scale; the student embeds w - 1)")
    lc.add_argument("--w-max", type=float, default=lcm.w_max, help="largest teacher CFG scale sampled")
    lc.add_argument("--num-ddim-timesteps", type=int, default=lcm.num_ddim_timesteps,
                    help="DDIM solver timesteps (skip = 1000 // N); the LCMScheduler's original_inference_steps")
    lc.add_argument("--loss", choices=["huber", "l2"], default=lcm.loss, help="consistency loss (pseudo-Huber or L2)")
    lc.add_argument("--huber-c", type=float, default=lcm.huber_c, help="pseudo-Huber constant c")
    lc.add_argument("--target-ema", type=float, default=lcm.target_ema, help="EMA rate of the target network")
    lc.add_argument("--time-cond-proj-dim", type=int, default=lcm.time_cond_proj_dim,
                    help="guidance-embedding width added to a student without one (zero-initialised projection)")
    lc.add_argument("--teacher-unet", help="U-Net folder used as the ODE-solver teacher instead of --teacher's "
                    "(e.g. a KD-distilled BK-SDM student); VAE, text encoder and noise schedule come from --teacher")
    add_optimizer_arguments(p)
    add_checkpoint_arguments(p)
    p.set_defaults(func=run)


def add_training_arguments(p, *, max_steps: int = 50_000, batch_size: int = 64, ema_what: str = "unet") -> None:
    """Training-length, precision, EMA and seed options (shared with ``distill-vae``, which has its own defaults)."""
    t = p.add_argument_group("training")
    t.add_argument("--max-steps", type=int, default=max_steps, help="optimizer steps")
    t.add_argument("--batch-size", type=int, default=batch_size, help="images per process per micro-batch")
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (paper: 4)")
    t.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no",
                   help="mixed precision (paper: fp16 on GPU)")
    t.add_argument("--gradient-checkpointing", action="store_true", help="recompute student activations")
    t.add_argument("--ema", action="store_true", help=f"keep an EMA of the student (saved as RUN_DIR/{ema_what}_ema)")
    t.add_argument("--ema-decay", type=float, default=0.9999)
    t.add_argument("--seed", type=int, default=0)


def add_optimizer_arguments(p, *, lr: float = 5e-5, weight_decay: float = 1e-2) -> None:
    """AdamW and LR-schedule options (shared with ``distill-vae``)."""
    o = p.add_argument_group("optimizer")
    o.add_argument("--lr", type=float, default=lr, help="learning rate")
    o.add_argument("--lr-scheduler", default="constant",
                   help="diffusers.optimization.get_scheduler name (constant, linear, cosine, constant_with_warmup, ...)")
    o.add_argument("--lr-warmup-steps", type=int, default=0)
    o.add_argument("--weight-decay", type=float, default=weight_decay)
    o.add_argument("--max-grad-norm", type=float, default=1.0)
    o.add_argument("--use-8bit-adam", action="store_true", help="bitsandbytes AdamW8bit (needs bitsandbytes, CUDA)")


def add_checkpoint_arguments(p, validation_help: str = "prompts rendered with the student") -> None:
    """Checkpoint, resume, validation-image and logging options (shared with ``distill-vae``)."""
    from ..distill.config import DEFAULT_VALIDATION_STEPS

    c = p.add_argument_group("checkpoints and logging")
    c.add_argument("--checkpoint-every", type=int, default=500, help="checkpoint interval in steps (0: never)")
    c.add_argument("--keep-checkpoints", type=int, default=3, help="newest checkpoints kept (0: all)")
    c.add_argument("--resume", help="'latest' or a checkpoint folder")
    c.add_argument("--validation-prompts", nargs="*", default=[], help=validation_help)
    c.add_argument("--validate-every", type=int, default=500, help="validation interval in steps")
    c.add_argument("--validation-inference-steps", type=int,
                   help="sampling steps of validation images; when not given: "
                   + ", ".join(f"{k} {v}" for k, v in DEFAULT_VALIDATION_STEPS.items()))
    c.add_argument("--report-to", choices=["auto", "tensorboard", "none"], default="auto",
                   help="auto: TensorBoard when installed; a JSONL log of every step is always written")
    c.add_argument("--log-every", type=int, default=1, help="progress-bar / tracker interval in steps")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")


def common_config_kwargs(args) -> dict:
    """``DistillConfig`` fields of the shared option groups (training, data, optimizer, checkpoints, validation)."""
    from ..distill.config import CheckpointConfig, OptimConfig, ValidationConfig

    return dict(
        max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
        ema=args.ema, ema_decay=args.ema_decay, seed=args.seed, report_to=args.report_to,
        log_every=args.log_every, progress=not args.no_progress,
        data=data_config(args),
        optim=OptimConfig(lr=args.lr, lr_scheduler=args.lr_scheduler, lr_warmup_steps=args.lr_warmup_steps,
                          weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
                          use_8bit_adam=args.use_8bit_adam),
        checkpoint=CheckpointConfig(every=args.checkpoint_every, keep=args.keep_checkpoints, resume=args.resume),
        validation=ValidationConfig(prompts=tuple(args.validation_prompts), every=args.validate_every,
                                    num_inference_steps=args.validation_inference_steps),
    )


def config_from_args(args):
    from ..distill.config import DistillConfig, LcmConfig, LossConfig
    from ..plans.cli_args import plan_spec

    return DistillConfig(
        teacher=args.teacher, variant=plan_spec(args), out=args.out, student=args.student, objective=args.objective,
        **common_config_kwargs(args),
        loss=LossConfig(args.lambda_task, args.lambda_out, args.lambda_feat),
        lcm=LcmConfig(w_min=args.w_min, w_max=args.w_max, num_ddim_timesteps=args.num_ddim_timesteps, loss=args.loss,
                      huber_c=args.huber_c, target_ema=args.target_ema, time_cond_proj_dim=args.time_cond_proj_dim,
                      teacher_unet=args.teacher_unet),
    )


def check_data_args(args) -> None:
    """The data options shared with ``cache-latents`` (no model or data is loaded)."""
    from .. import checks

    checks.resolution(args.teacher, args.resolution)
    checks.at_least(args.num_workers, 0, "--num-workers")
    if args.data and (Path(args.data).suffix.lower() in DATA_FILE_SUFFIXES or args.data.startswith((".", "/", "~"))
                      or Path(args.data).exists()):
        # A path (not a Hugging Face dataset name): it must exist.
        path = Path(args.data).expanduser()
        if not path.exists():
            raise InputError(f"--data {args.data}: no such file or folder; pass an image folder with metadata.jsonl, "
                             "a CSV/JSONL file, or a Hugging Face dataset name")
        if path.is_dir():
            checks.existing_dir(path, "--data")
        else:
            checks.existing_file(path, "--data")
    if args.cache_dir and Path(args.cache_dir).exists():
        checks.existing_dir(args.cache_dir, "--cache-dir", what="latent cache folder")


def check_run_dir(out: str, cache_dir: str | None) -> None:
    """``--out`` may be new, empty, or an earlier run of ours: never a folder of the user's files."""
    from .. import checks
    from ..errors import OutputError
    from ..outputs import DISTILL_RUN, kind_of

    path = Path(out)
    checks.output_dir(path, "--out")
    if not path.is_dir() or kind_of(path, (DISTILL_RUN,)):
        return
    cache = Path(cache_dir).resolve() if cache_dir else None
    foreign = sorted(p.name for p in path.iterdir() if p.resolve() != cache)
    if foreign:
        raise OutputError(
            f"--out {out} is an existing folder that is not a distillation run (no {DISTILL_RUN.marker}; it holds "
            f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); choose a new --out or an empty folder")


def check_common_args(args) -> None:
    """The options of the shared groups (data, output, training, optimizer, checkpoints), also ``distill-vae``'s."""
    from .. import checks

    check_data_args(args)
    check_run_dir(args.out, args.cache_dir)
    for flag, minimum in (("max_steps", 1), ("batch_size", 1), ("grad_accum", 1), ("seed", 0),
                          ("lr_warmup_steps", 0), ("checkpoint_every", 0), ("keep_checkpoints", 0),
                          ("validate_every", 1), ("validation_inference_steps", 1), ("log_every", 1),
                          ("weight_decay", 0)):
        checks.at_least(getattr(args, flag), minimum, "--" + flag.replace("_", "-"))
    checks.in_range(args.lr, 0, float("inf"), "--lr", low_open=True, high_open=True)
    checks.in_range(args.max_grad_norm, 0, float("inf"), "--max-grad-norm", low_open=True, high_open=True)
    checks.in_range(args.ema_decay, 0, 1, "--ema-decay")
    if args.resume not in (None, "latest"):
        checks.existing_dir(args.resume, "--resume", what="checkpoint folder", contains="trainer_state.json",
                            hint="pass --resume latest or a RUN_DIR/checkpoints/checkpoint-N folder")


def check_args(args) -> None:
    """Every distill option that can be checked before the teacher is loaded."""
    from .. import checks

    check_common_args(args)
    for flag in ("lambda_task", "lambda_out", "lambda_feat"):
        checks.at_least(getattr(args, flag), 0, "--" + flag.replace("_", "-"))
    checks.unet_folder(args.student, "--student")
    checks.unet_folder(getattr(args, "teacher_unet", None), "--teacher-unet")


def run(args) -> int:
    check_args(args)
    return run_config(config_from_args(args))


def run_config(config) -> int:
    """Run a distillation and print its summary (the main process only)."""
    from ..distill import distill

    result = distill(config, command=["bksdm-edge", *sys.argv[1:]])
    if not result.is_main_process:
        return 0
    summary = {"steps": result.steps, "processes": result.world_size,
               **{name: str(path) for name, path in result.outputs.items()},
               "skipped_rows": result.skipped_rows, "last_losses": result.last_losses}
    print(json.dumps(summary, indent=2))
    return 0
