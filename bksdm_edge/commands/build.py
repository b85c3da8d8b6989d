"""``bksdm-edge build``: build a BK-SDM student from a teacher and save it as a diffusers U-Net folder."""

from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    from ..variants import VARIANTS

    p = subparsers.add_parser(
        "build",
        help="build a BK-SDM student U-Net initialised from the teacher",
        description="Remove residual/attention blocks from the teacher's U-Net (BK-SDM Base/Small/Tiny), copy "
        "every remaining tensor from the teacher (shapes checked) and save the student with save_pretrained. "
        "The folder loads with UNet2DConditionModel.from_pretrained and replaces the teacher's U-Net in "
        "StableDiffusionPipeline; bksdm_edge.json beside it records teacher, variant and the weight map.",
    )
    p.add_argument("--teacher", default="builtin:mini-sd", help="model source (default: builtin:mini-sd)")
    p.add_argument("--variant", required=True, choices=sorted(VARIANTS), help="BK-SDM variant")
    p.add_argument("--out", required=True, type=Path, help="output folder for the student U-Net")
    p.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import BksdmError
    from ..loading import load_model
    from ..student import build_student, save_student

    if args.out.exists() and any(args.out.iterdir()) and not args.force:
        raise BksdmError(f"{args.out} exists and is not empty; pass --force to overwrite or choose another --out")
    print(f"loading teacher U-Net from {args.teacher} ...", flush=True)
    teacher = load_model(args.teacher, components=("unet",))
    student, report = build_student(teacher.unet, args.variant)
    save_student(student, args.out, teacher=args.teacher, report=report)
    print(json.dumps(report.summary(), indent=2))
    print(f"saved {args.variant} student to {args.out}")
    return 0
