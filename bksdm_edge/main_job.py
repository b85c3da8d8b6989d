"""The README's main job on the built-in default: ``python -m bksdm_edge.main_job --out out``.

From the trained built-in teacher (``builtin:mini-sd-digits``, falling back to ``builtin:mini-sd``):
1. profile SD-v1.4 against BK-SDM Base/Small/Tiny (the paper's Table 1);
2. build a BK-SDM student, 3. distil it briefly on the digits data,
4. export the student pipeline to an ONNX bundle (validated against PyTorch), 5. re-validate it,
6. generate an image from the bundle with onnxruntime (no PyTorch),
7. score a grid of digits from the bundle next to the teacher's, 8. run the quick benchmark.
Every step is one library call or one ``bksdm-edge`` command; a failing step stops the job non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .builtins import BUILTINS
from .cli import main as cli

DEFAULT_TEACHER = "builtin:mini-sd-digits" if "mini-sd-digits" in BUILTINS else "builtin:mini-sd"


@dataclass(frozen=True)
class Step:
    title: str
    run: Callable[[], int | None]
    shown: str = ""


def _cli_step(title: str, args: list[str]) -> Step:
    return Step(title, lambda: cli(args), "$ bksdm-edge " + " ".join(args))


def digits_report(teacher: str, bundle: Path, out: Path, seeds: int, steps: int) -> int:
    """Generate every digit prompt x ``seeds`` with the teacher (PyTorch) and the bundle (onnxruntime); score both."""
    from .generate import BundlePipeline
    from .loading import load_model
    from .quality.digits import DigitEvalConfig, generate_bundle_digits, generate_digits, image_grid, score_digits

    cfg = DigitEvalConfig(seeds=seeds, steps=steps)
    model = load_model(teacher)
    resolution = BUILTINS[teacher.split(":", 1)[1]].default_resolution
    pipe = model.to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    teacher_images, digits = generate_digits(pipe, cfg, resolution)
    bundle_pipe = BundlePipeline(bundle)
    student_images, _ = generate_bundle_digits(bundle_pipe, cfg)
    scores = {
        "teacher (PyTorch)": score_digits(teacher_images, digits, resolution=resolution),
        f"student bundle ({bundle_pipe.manifest['format']} {bundle_pipe.manifest['precision']})":
            score_digits(student_images, digits, resolution=resolution),
    }
    image_grid(teacher_images, rows=10, scale=3).save(out / "grid_teacher.png")
    image_grid(student_images, rows=10, scale=3).save(out / "grid_student_bundle.png")
    (out / "digit_scores.json").write_text(json.dumps(scores, indent=2))
    print(f"{10 * seeds} images each (10 digit prompts x {seeds} seeds, {steps} steps, guidance {cfg.guidance_scale})")
    print("| model | prompt accuracy | Fréchet distance (digit features) |\n|---|---:|---:|")
    for name, s in scores.items():
        print(f"| {name} | {s['prompt_accuracy']:.3f} | {s['frechet_distance']:.1f} |")
    print(f"grids: {out / 'grid_teacher.png'}, {out / 'grid_student_bundle.png'}")
    return 0


def steps(out: Path, teacher: str, variant: str, distill_steps: int, seeds: int) -> list[Step]:
    """The main job as data."""
    from .quality.digits import write_digits_imagefolder

    student, run, data, bundle = out / f"student-{variant}", out / "distill", out / "digits", out / "bundle-onnx-fp32"
    resolution = str(BUILTINS[teacher.split(":", 1)[1]].default_resolution)
    is_digits = teacher.endswith("mini-sd-digits")
    job = [
        _cli_step("Profile SD-v1.4 vs BK-SDM students (paper Table 1)",
                  ["profile", "--teacher", "builtin:sd-v1.4", "--variants", "all", "--json", str(out / "profile.json")]),
        _cli_step(f"Build {variant} from {teacher}",
                  ["build", "--teacher", teacher, "--variant", variant, "--out", str(student), "--force"]),
    ]
    unet = student
    if is_digits:
        job += [
            Step("Write the digits training split as an image folder",
                 lambda: print(f"wrote {write_digits_imagefolder(data, int(resolution))} images + metadata.jsonl "
                               f"to {data}")),
            _cli_step(f"Distil {variant} for {distill_steps} steps (task + output KD + feature KD)",
                      ["distill", "--teacher", teacher, "--variant", variant, "--student", str(student),
                       "--data", str(data), "--out", str(run), "--resolution", resolution, "--no-flip",
                       "--max-steps", str(distill_steps), "--batch-size", "32", "--lr", "5e-4",
                       "--checkpoint-every", str(distill_steps), "--num-workers", "0", "--no-progress",
                       "--report-to", "none"]),
        ]
        unet = run / "unet"
    job += [
        _cli_step("Export the student pipeline to ONNX fp32 (every component validated against PyTorch)",
                  ["export", "--model", teacher, "--unet", str(unet), "--format", "onnx", "--precision", "fp32",
                   "--out", str(bundle), "--overwrite", "--no-progress"]),
        _cli_step("Re-validate the bundle", ["validate", "--bundle", str(bundle)]),
        _cli_step("Generate an image from the bundle (onnxruntime + numpy, no PyTorch)",
                  ["generate", "--bundle", str(bundle), "--prompt", "a handwritten digit seven", "--steps", "25",
                   "--guidance", "4", "--seed", "0", "--out", str(out / "digit_seven.png")]),
    ]
    if is_digits:
        job.append(Step("Digit grids and scores: teacher (PyTorch) vs distilled student bundle (ONNX Runtime)",
                        lambda: digits_report(teacher, bundle, out, seeds, 25)))
    job.append(_cli_step("Quick benchmark: mini-sd teacher vs BK-SDM students, PyTorch vs ONNX Runtime",
                         ["bench", "--config", "quick", "--out", str(out / "bench-quick")]))
    return job


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: out)")
    parser.add_argument("--teacher", default=DEFAULT_TEACHER, help=f"built-in teacher (default: {DEFAULT_TEACHER})")
    parser.add_argument("--variant", default="bk-small", help="student variant (default: bk-small)")
    parser.add_argument("--distill-steps", type=int, default=200, help="distillation steps (default: 200)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per digit prompt in the scored grids (default 5)")
    args = parser.parse_args(argv)
    if not args.teacher.startswith("builtin:") or args.teacher.split(":", 1)[1] not in BUILTINS:
        parser.error(f"--teacher must be a built-in model: {', '.join('builtin:' + n for n in BUILTINS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    job = steps(args.out, args.teacher, args.variant, args.distill_steps, args.seeds)
    for i, step in enumerate(job, 1):
        print(f"\n=== [{i}/{len(job)}] {step.title}" + (f"\n{step.shown}" if step.shown else ""), flush=True)
        start = time.perf_counter()
        code = step.run()
        timings[step.title] = round(time.perf_counter() - start, 1)
        print(f"--- {timings[step.title]} s", flush=True)
        if code:
            print(f"step {i} failed with exit code {code}", file=sys.stderr)
            return code
    (args.out / "main_job.json").write_text(json.dumps({"teacher": args.teacher, "steps_s": timings}, indent=2))
    print(f"\nmain job done in {sum(timings.values()):.0f} s: outputs in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
