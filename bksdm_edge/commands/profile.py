"""``bksdm-edge profile``: parameters, MACs and weight sizes of a teacher and its students."""

from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    from ..plans.cli_args import add_plan_args

    p = subparsers.add_parser(
        "profile",
        help="count parameters, MACs and weight sizes, teacher vs BK-SDM students or your own plans",
        description="Profile a teacher U-Net and students built from it by removal plans (BK-SDM variants, plan "
        "files, student folders): parameter count, MACs per denoising step (paper convention: conv/linear/norm "
        "modules; full: plus the attention matmuls) and weight size at fp32/fp16/int8. No weights are loaded: "
        "models are built from their configs on PyTorch's meta device, so full-size SD profiles in seconds. "
        "A --unet folder is profiled as it is and the plan it corresponds to is reported.",
    )
    p.add_argument("--teacher", default="builtin:sd-v1.4", help="model source (default: builtin:sd-v1.4)")
    add_plan_args(p, repeatable=True)
    p.add_argument("--variants", choices=["all"], help="all built-in BK-SDM variants")
    p.add_argument("--unet", help="also profile this student U-Net folder (and name its plan)")
    p.add_argument("--resolution", type=int, default=512, help="image resolution in pixels (default 512)")
    p.add_argument(
        "--components",
        default="unet",
        help="comma-separated: unet,text_encoder,vae_decoder,vae_encoder (default unet)",
    )
    p.add_argument("--vae", help="also profile this VAE against the teacher's: 'tiny' (the TAESD architecture sized "
                   "for the teacher), a `bksdm-edge distill-vae` run folder, an AutoencoderTiny folder or hub id; "
                   "needs vae_decoder/vae_encoder in --components")
    p.add_argument("--json", type=Path, help="write the rows as JSON to this file")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import checks
    from ..export.registry import ALL_COMPONENTS

    checks.resolution(args.teacher, args.resolution)
    components = checks.choices([c.strip() for c in args.components.split(",") if c.strip()], ALL_COMPONENTS,
                                "--components")
    checks.unet_folder(args.unet, "--unet")
    checks.vae_source(args.vae, "--vae")
    checks.output_file(args.json, "--json", suffixes=(".json",), what="JSON file")

    from ..outputs import write_text_atomic
    from ..plans.builtin import BUILTIN_PLANS
    from ..plans.cli_args import plan_specs
    from ..profiler import format_profiles, profile_teacher_and_students

    specs = (list(BUILTIN_PLANS) if args.variants == "all" else []) + plan_specs(args)
    rows = profile_teacher_and_students(
        args.teacher, list(dict.fromkeys(specs)), unet=args.unet, resolution=args.resolution, components=components,
        vae=args.vae,
    )
    print(f"{args.teacher} at {args.resolution}x{args.resolution} px, batch 1 (U-Net: one denoising step)\n")
    print(format_profiles(rows))
    plans = [r for r in rows if r.plan]
    if plans:
        print("\nplans (pairs kept per stage, teacher: down 2/2/2/2 | mid full | up 3/3/3/3):")
        for r in plans:
            print(f"  {r.name}: {r.plan}")
    if args.json:
        payload = {"teacher": args.teacher, "resolution": args.resolution, "vae": args.vae,
                   "models": [r.to_json() for r in rows]}
        write_text_atomic(args.json, json.dumps(payload, indent=2))
        print(f"\nwrote {args.json}")
    return 0
