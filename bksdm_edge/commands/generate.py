"""``bksdm-edge generate``: text-to-image from an exported bundle, without PyTorch."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    from .. import runtime_speed as speed  # standard library only
    from ..runtime.schedulers import SCHEDULERS  # numpy only: --help stays fast

    default_steps = ", ".join(f"{name} {cls.default_steps}" for name, cls in SCHEDULERS.items())
    p = subparsers.add_parser(
        "generate",
        help="generate an image from a bundle (onnxruntime/LiteRT/OpenVINO + numpy; no PyTorch)",
        description="Verifies the bundle's hashes, then runs text encoder, denoising loop (classifier-free "
        "guidance) and VAE decoder. With the same initial latents (--latents-in) it reproduces diffusers' "
        "StableDiffusionPipeline on the source model. A latent consistency (LCM) bundle runs as diffusers' "
        "LatentConsistencyModelPipeline: its U-Net embeds --guidance, one U-Net call per step, no negative prompt.",
    )
    p.add_argument("--bundle", required=True, type=Path, help="bundle folder written by `bksdm-edge export`")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, help=f"denoising steps, >= 1 (default per scheduler: {default_steps})")
    p.add_argument("--guidance", type=float, default=7.5,
                   help="CFG scale; <= 1 disables guidance. LCM bundles: the guidance scale the U-Net embeds")
    p.add_argument("--seed", type=int, default=0, help="seed of the portable noise stream: initial latents, then the "
                   "lcm scheduler's noise (same as the app)")
    p.add_argument("--scheduler", choices=sorted(SCHEDULERS), help="default: the bundle's scheduler")
    p.add_argument("--latents-in", type=Path, help=".npy initial latents (1, C, h, w) instead of seeded noise")
    p.add_argument("--latents-out", type=Path, help="save the initial latents used to this .npy")
    p.add_argument("--threads", type=int, help="CPU threads of the runtime (default: the runtime's own)")
    p.add_argument("--inference-precision", default="auto",
                   help="run-time precision of formats that have several (OpenVINO: f32, bf16). auto: of those that "
                   "passed the bundle's validation and this CPU runs natively, the fastest, measured on the bundle's "
                   f"U-Net (a warm-up and {speed.TIMED_CALLS} timed calls each; the default wins unless another is "
                   f"{speed.MIN_GAIN * 100:.0f}%% faster) and remembered in "
                   f"~/.cache/bksdm-edge/{speed.CACHE_FILE} (per bundle, CPU and --threads; $XDG_CACHE_HOME moves "
                   "it); a named precision skips the measurement")
    p.add_argument("--out", required=True, type=Path,
                   help="output image (.png; .jpg/.webp/.bmp also work); missing folders are created")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..generate import generate

    generate(
        args.bundle, args.prompt, args.out, latents_in=args.latents_in, latents_out=args.latents_out,
        negative_prompt=args.negative_prompt, steps=args.steps, guidance=args.guidance, seed=args.seed,
        scheduler=args.scheduler, progress=True, threads=args.threads,
        inference_precision=args.inference_precision, log=print,
    )
    print(f"saved {args.out}")
    return 0
