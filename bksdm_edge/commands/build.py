"""``bksdm-edge build``: build a student by a removal plan from a teacher and save it as a diffusers U-Net folder."""

from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    from ..plans.cli_args import add_plan_args

    p = subparsers.add_parser(
        "build",
        help="build a student U-Net (BK-SDM variant or your own plan) initialised from the teacher",
        description="Remove residual/attention blocks from the teacher's U-Net by a plan (BK-SDM Base/Small/Tiny, "
        "a plan file, or the topology of an existing student folder such as nota-ai/bk-sdm-small), copy every "
        "remaining tensor from the teacher (shapes checked) and save the student with save_pretrained. The "
        "folder loads with UNet2DConditionModel.from_pretrained and replaces the teacher's U-Net in "
        "StableDiffusionPipeline; bksdm_edge.json beside it records teacher, plan and the weight map. A plan "
        "that cannot be built is refused with the reason before anything is written (docs/plans.md).",
    )
    p.add_argument("--teacher", default="builtin:mini-sd", help="model source (default: builtin:mini-sd)")
    add_plan_args(p)
    p.add_argument("--out", required=True, type=Path, help="output folder for the student U-Net")
    p.add_argument("--force", action="store_true",
                   help="replace an existing student folder (one with bksdm_edge.json); other folders are never replaced")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import checks
    from ..console import notice
    from ..outputs import STUDENT, atomic_dir, claim

    checks.output_dir(args.out, "--out")
    replaces = claim(args.out, (STUDENT,), replace=args.force, flag="--out", option="--force")

    from ..loading import load_model
    from ..plans.cli_args import plan_spec
    from ..plans.resolve import describe_student
    from ..student import build_student, save_student, validate_plan

    spec = plan_spec(args)
    print(f"loading teacher U-Net from {args.teacher} ...", flush=True)
    teacher = load_model(args.teacher, components=("unet",))
    plan = validate_plan(spec, teacher.unet.config)
    if Path(spec).is_dir():
        print(f"plan recognised: {describe_student(spec, teacher.unet.config).describe()}")
    print(f"plan {plan.name}: {plan.summary()}")
    student, report = build_student(teacher.unet, plan)
    with atomic_dir(args.out, replaced=replaces, log=notice) as tmp:
        save_student(student, tmp, teacher=args.teacher, report=report)
    print(json.dumps(report.summary(), indent=2))
    print(f"saved {plan.name} student to {args.out}")
    return 0
