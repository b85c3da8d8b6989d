"""``bksdm-edge plan``: show a removal plan, measure what each removable unit costs, search plans in a budget."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="removal plans beyond BK-SDM: show a plan, sensitivity of each unit, budgeted search (docs/plans.md)",
        description="Work with block-removal plans (docs/plans.md). `plan show` checks a plan against a teacher and "
        "prints its structure, cost and feature-KD pairs; `plan sensitivity` removes each unit alone and measures "
        "params, MACs, optionally latency, and the output error of the teacher-initialised student; `plan search` "
        "proposes plans inside a budget (macs=0.55, params=..., latency=...) from that data and writes them as "
        "plan files, with the BK-SDM presets on the same axes.",
    )
    sub = p.add_subparsers(dest="plan_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    show = sub.add_parser("show", help="check a plan against a teacher; print structure, cost, feature pairs",
                          description="Resolve SPEC (plan file, built-in name or student U-Net folder), refuse it with "
                          "the reasons if it cannot be built from the teacher, else print its pairs per stage, "
                          "params/MACs vs the teacher, the student config changes and the feature-KD pairs.")
    show.add_argument("spec", help="plan file, built-in plan name, or student U-Net folder")
    show.add_argument("--teacher", default="builtin:sd-v1.4", help="model source (default: builtin:sd-v1.4)")
    show.add_argument("--resolution", type=int, help="image size in pixels (default: the model's native size)")
    show.set_defaults(func=run_show)

    sens = sub.add_parser("sensitivity", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                          help="remove each unit alone: params, MACs, latency, output error",
                          description="Apply every option of the plan space alone to the teacher (one pair fewer in "
                          "a level, a stage's attentions, the mid block, the innermost stage) and measure params and "
                          "paper-convention MACs (exact), optionally the U-Net step latency on a benchmark backend, "
                          "and the output error (NMSE, PSNR, cosine) of the teacher-initialised student against the "
                          "teacher on U-Net inputs recorded from real denoising runs. Writes OUT/sensitivity.json, "
                          ".md, .png and OUT/units/*.yaml.")
    sens.add_argument("--teacher", required=True, help="model source (builtin:..., diffusers folder, hub id)")
    sens.add_argument("--out", required=True, type=Path, help="output folder")
    add_sensitivity_args(sens)
    sens.set_defaults(func=run_sensitivity_cmd)

    search = sub.add_parser("search", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                            help="propose plans inside a budget from the sensitivity data",
                            description="Score every plan of the space (exact) or walk greedily from the teacher, with "
                            "exact params/MACs and the output error estimated as the sum of the options' measured "
                            "alone; re-measure the best candidates as whole plans; write OUT/plan-1.yaml ... and "
                            "OUT/search.json, .md, .png with the BK-SDM presets on the same axes. Runs the sensitivity "
                            "analysis first (into OUT/sensitivity) unless --sensitivity is given.")
    search.add_argument("--teacher", help="model source; needed when --sensitivity is not given")
    search.add_argument("--sensitivity", type=Path, help="a `plan sensitivity` result (its folder or sensitivity.json)")
    search.add_argument("--budget", action="append", required=True, metavar="METRIC=VALUE",
                        help="macs=0.55 (fraction of the teacher's paper-convention MACs), params=0.5, latency=0.6 "
                        "(needs latency in the sensitivity data), or absolute: macs=200G, params=400M, latency=2.5s; "
                        "repeat to combine")
    search.add_argument("--method", choices=["exact", "greedy"], default="exact",
                        help="exact: score every plan; greedy: cheapest damage per unit saved, one change at a time")
    search.add_argument("--min-attention", type=int, default=1, metavar="N",
                        help="propose only plans that keep at least N blocks with cross-attention (where the prompt "
                        "enters the U-Net; 0 allows plans that ignore the prompt)")
    search.add_argument("--top", type=int, default=3, help="plan files to write")
    search.add_argument("--candidates", type=int, default=8, help="best estimates re-measured as whole plans")
    search.add_argument("--no-measure", action="store_true",
                        help="estimates only (no teacher weights needed; candidates are not re-measured)")
    search.add_argument("--out", required=True, type=Path, help="output folder")
    add_sensitivity_args(search.add_argument_group("sensitivity (when it runs first)"))
    search.set_defaults(func=run_search_cmd)


def add_sensitivity_args(p) -> None:
    p.add_argument("--resolution", type=int, help="image size in pixels (default: the model's native size)")
    p.add_argument("--maps", choices=["all", "paper"], default="all",
                   help="weight maps measured for a removed level: every one that fits, or the paper's only")
    p.add_argument("--no-error", action="store_true",
                   help="skip the output error (costs and latency only; e.g. full-size random weights)")
    p.add_argument("--prompts", type=Path, help="prompt file, one per line (default: the packaged calibration list)")
    p.add_argument("--num-prompts", type=int, default=4, help="pipeline runs recorded (first N prompts)")
    p.add_argument("--steps", type=int, default=10, help="denoising steps per recorded run")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance of the recorded runs")
    p.add_argument("--inputs", type=int, default=32, help="recorded U-Net inputs kept (evenly spaced)")
    p.add_argument("--batch", type=int, default=8, help="inputs per forward pass")
    p.add_argument("--latency-backend", help="also time one U-Net step per option on this benchmark backend "
                   "(pytorch, onnxruntime, litert, ...; slow at full size: run it under the heavy-job lock)")
    p.add_argument("--latency-precision", default="fp32", help="precision of the latency backend")
    p.add_argument("--latency-interleaved", action="store_true",
                   help="PyTorch fp32 only: time the teacher and each plan alternately in this process (robust "
                   "ratios on a loaded machine; needs memory for two U-Nets at once)")
    p.add_argument("--threads", type=int, default=2, help="threads of the latency measurement")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per option")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs per option")
    p.add_argument("--bench-cache", type=Path, help="benchmark artifact cache (default ~/.cache/bksdm-edge/bench)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_sensitivity_args(args, teacher: str | None) -> None:
    """The sensitivity options, checked before any model is loaded (shared by `plan sensitivity` and `plan search`)."""
    from .. import checks

    if teacher:
        checks.resolution(teacher, args.resolution)
    for flag, minimum in (("num_prompts", 1), ("steps", 1), ("inputs", 1), ("batch", 1), ("threads", 1),
                          ("repeats", 1), ("warmup", 0)):
        checks.at_least(getattr(args, flag), minimum, "--" + flag.replace("_", "-"))
    checks.finite(args.guidance, "--guidance")
    checks.text_file(args.prompts, "--prompts", what="prompt file")


def claim_out(out: Path, kinds) -> None:
    """``--out`` may be new, empty, or a result folder of the same kind (rewritten): never another folder."""
    from .. import checks
    from ..outputs import claim

    checks.output_dir(out, "--out")
    claim(out, kinds, replace=True, flag="--out", option="--out")


def sensitivity_config(args, teacher: str):
    from ..export.inputs import read_prompts
    from ..plans.sensitivity import ErrorProtocol, LatencyProtocol, SensitivityConfig

    error = None
    if not args.no_error:
        prompts = tuple(read_prompts(args.prompts)[: args.num_prompts])
        error = ErrorProtocol(prompts=prompts, steps=args.steps, guidance_scale=args.guidance,
                              max_inputs=args.inputs, batch=args.batch)
    latency = None
    if args.latency_backend:
        latency = LatencyProtocol(backend=args.latency_backend, precision=args.latency_precision,
                                  threads=args.threads, repeats=args.repeats, warmup=args.warmup,
                                  interleaved=args.latency_interleaved)
    return SensitivityConfig(teacher=teacher, resolution=args.resolution, maps=args.maps, error=error, latency=latency)


def run_show(args) -> int:
    from ..loading import load_model
    from ..plans.cost import CostModel
    from ..plans.resolve import describe_student
    from ..student import validate_plan

    from .. import checks

    checks.resolution(args.teacher, args.resolution)
    model = load_model(args.teacher, components=("unet", "vae"), weights=False)
    plan = validate_plan(args.spec, model.unet.config)
    if Path(args.spec).is_dir():
        print(describe_student(args.spec, model.unet.config).describe())
    costs = CostModel(model.unet.config, args.resolution, model.vae_scale_factor)
    cost, teacher = costs.cost(plan), costs.teacher
    config = plan.student_config(model.unet.config)
    changed = {k: v for k, v in config.items() if model.unet.config.get(k) != v}
    print(f"plan {plan.name}: {plan.summary()}" + (f"  ({plan.description})" if plan.description else ""))
    print(f"fits {args.teacher}: student config changes {changed}")
    print(f"U-Net at {costs.resolution} px: {cost.params:,} params ({cost.params / teacher.params:.3f} of the "
          f"teacher's), {cost.macs_paper / 1e9:.3f} GMACs paper convention ({cost.macs_paper / teacher.macs_paper:.3f}), "
          f"{cost.macs_full / 1e9:.3f} GMACs with attention matmuls ({cost.macs_full / teacher.macs_full:.3f})")
    print("feature-KD pairs (teacher <- student):")
    for t, s in plan.feature_pairs:
        print(f"  {t} <- {s}")
    return 0


def run_sensitivity_cmd(args) -> int:
    from ..outputs import PLAN_SENSITIVITY
    from ..plans.sensitivity import run_sensitivity

    check_sensitivity_args(args, args.teacher)
    claim_out(args.out, (PLAN_SENSITIVITY,))
    doc = run_sensitivity(sensitivity_config(args, args.teacher), args.out, progress=not args.no_progress,
                          bench_cache=args.bench_cache)
    print((args.out / "sensitivity.md").read_text())
    print(f"wrote {args.out}/sensitivity.json, sensitivity.md, sensitivity.png and {len(doc['options'])} plan files "
          "under units/")
    return 0


def run_search_cmd(args) -> int:
    from ..errors import BksdmError
    from ..plans.search import SearchConfig, parse_budget, run_search
    from ..plans.sensitivity import load_sensitivity, run_sensitivity

    from .. import checks
    from ..outputs import PLAN_SEARCH, PLAN_SEARCH_STARTED

    check_sensitivity_args(args, args.teacher if args.sensitivity is None else None)
    checks.at_least(args.top, 1, "--top")
    checks.at_least(args.min_attention, 0, "--min-attention")
    checks.at_least(args.candidates, 1, "--candidates")
    claim_out(args.out, (PLAN_SEARCH, PLAN_SEARCH_STARTED))
    for text in args.budget:  # syntax first: the sensitivity run may take long
        parse_budget(text, {"macs_paper": 1.0, "params": 1.0, "latency_s": 1.0})
    if args.sensitivity is not None:
        sensitivity = load_sensitivity(args.sensitivity)
        if args.teacher and args.teacher != sensitivity["config"]["teacher"]:
            raise BksdmError(f"--teacher {args.teacher} differs from the teacher of {args.sensitivity} "
                             f"({sensitivity['config']['teacher']}); drop --teacher or rerun the sensitivity")
    elif args.teacher:
        if args.no_error:
            raise BksdmError("the search ranks plans by the output error; drop --no-error")
        sensitivity = run_sensitivity(sensitivity_config(args, args.teacher), args.out / "sensitivity",
                                      progress=not args.no_progress, bench_cache=args.bench_cache)
    else:
        raise BksdmError("give --sensitivity RESULT (from `bksdm-edge plan sensitivity`) or --teacher SRC")
    config = SearchConfig(budgets=tuple(args.budget), method=args.method, top=args.top, candidates=args.candidates,
                          min_attention=args.min_attention,
                          measure=not args.no_measure)
    doc = run_search(sensitivity, config, args.out)
    print((args.out / "search.md").read_text())
    print(f"wrote {len(doc['proposals'])} plan file(s) and search.json, search.md, search.png to {args.out}")
    return 0
