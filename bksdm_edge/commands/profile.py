"""``bksdm-edge profile``: parameters, MACs and weight sizes of a teacher and its BK-SDM students."""

from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    from ..variants import VARIANTS

    p = subparsers.add_parser(
        "profile",
        help="count parameters, MACs and weight sizes, teacher vs BK-SDM students",
        description="Profile a teacher U-Net and BK-SDM students built from it: parameter count, MACs per "
        "denoising step (paper convention: conv/linear/norm modules; full: plus the attention matmuls) and "
        "weight size at fp32/fp16/int8. No weights are loaded: models are built from their configs on "
        "PyTorch's meta device, so full-size SD profiles in seconds.",
    )
    p.add_argument("--teacher", default="builtin:sd-v1.4", help="model source (default: builtin:sd-v1.4)")
    p.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS), help="a student variant (repeatable)")
    p.add_argument("--variants", choices=["all"], help="all BK-SDM variants")
    p.add_argument("--unet", help="also profile this student U-Net folder")
    p.add_argument("--resolution", type=int, default=512, help="image resolution in pixels (default 512)")
    p.add_argument(
        "--components",
        default="unet",
        help="comma-separated: unet,text_encoder,vae_decoder,vae_encoder (default unet)",
    )
    p.add_argument("--json", type=Path, help="write the rows as JSON to this file")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..profiler import format_profiles, profile_teacher_and_students
    from ..variants import VARIANTS

    variants = list(VARIANTS) if args.variants == "all" else args.variant
    components = [c.strip() for c in args.components.split(",") if c.strip()]
    rows = profile_teacher_and_students(
        args.teacher, variants, unet=args.unet, resolution=args.resolution, components=components
    )
    print(f"{args.teacher} at {args.resolution}x{args.resolution} px, batch 1, one denoising step\n")
    print(format_profiles(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"teacher": args.teacher, "resolution": args.resolution, "models": [r.to_json() for r in rows]}
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {args.json}")
    return 0
