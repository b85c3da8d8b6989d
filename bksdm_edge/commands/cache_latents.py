"""``bksdm-edge cache-latents``: encode a data set once (VAE latents + text embeddings) for faster distillation."""

from __future__ import annotations

import json
from pathlib import Path

from .distill import add_data_arguments, check_data_args, data_config


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cache-latents",
        help="cache VAE latents and text embeddings of a training set",
        description="Run the teacher's VAE encoder and text encoder over every row once and store the VAE posterior "
        "moments (of the image and, with flips, of its mirror) and the caption embeddings in --cache-dir. "
        "`bksdm-edge distill --cache-dir DIR` then trains without the encoders; in float32 it reproduces the "
        "uncached run's losses.",
    )
    p.add_argument("--teacher", required=True, help="teacher model source (its VAE and text encoder are used)")
    add_data_arguments(p)
    p.add_argument("--device", default="cpu", help="device to encode on (cpu, cuda, cuda:1, ...)")
    p.add_argument("--encode-batch-size", type=int, default=16)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import checks
    from ..errors import InputError, OutputError

    if not args.cache_dir or not args.data:
        raise InputError("cache-latents needs --data and --cache-dir")
    check_data_args(args)
    checks.at_least(args.encode_batch_size, 1, "--encode-batch-size")
    checks.output_dir(args.cache_dir, "--cache-dir")
    if Path(args.cache_dir).exists():
        raise OutputError(f"--cache-dir {args.cache_dir} already exists; a cache is never overwritten: choose a new "
                          "--cache-dir (or delete that one if it is an old cache you no longer need)")

    from ..distill import cache_latents
    cache = cache_latents(args.teacher, data_config(args), args.cache_dir, device=args.device,
                          batch_size=args.encode_batch_size)
    print(json.dumps({k: v for k, v in cache.meta.items()}, indent=2))
    return 0
