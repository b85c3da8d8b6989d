"""The README's main job on the built-in default: ``python -m bksdm_edge.main_job --out out``.

From the trained built-in teacher (``builtin:mini-sd-digits``, falling back to ``builtin:mini-sd``):
1. profile SD-v1.4 against BK-SDM Base/Small/Tiny (the paper's Table 1);
2. build a BK-SDM student, 3. distil it briefly on the digits data,
4. export the student pipeline to an ONNX bundle (validated against PyTorch), 5. re-validate it,
6. generate an image from the bundle with onnxruntime (no PyTorch),
7. score a grid of digits from the bundle next to the teacher's,
8. benchmark one denoising step of the teacher's U-Net against the student's (ONNX Runtime, same run).
Every step is one library call or one ``bksdm-edge`` command; a failing step stops the job non-zero.
At the end: the digit scores, the student's speed-up and where each output is.
The wider benchmark (PyTorch vs ONNX Runtime, every component, a whole image) is ``python benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import shlex
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
    """One step: what it does, how it runs, the command shown to the user and what it leaves in ``--out``."""

    title: str
    run: Callable[[], int | None]
    shown: str = ""
    outputs: tuple[tuple[Path, str], ...] = ()  # (path, what it is)


def _cli_step(title: str, args: list[str], outputs: tuple[tuple[Path, str], ...] = ()) -> Step:
    return Step(title, lambda: cli(args), "$ bksdm-edge " + shlex.join(args), outputs)


BENCH_DEFAULTS = {"component": "unet", "backend": "onnxruntime", "precision": "fp32", "batch": 2, "threads": 2,
                  "repeats": 20, "warmup": 3, "timeout_s": 600}


def bench_config(teacher: str, student: Path, resolution: int) -> dict:
    """The main job's benchmark as a config: one U-Net step with classifier-free guidance (batch 2), the teacher's
    U-Net against the student the job made, in ONNX Runtime (the bundle's runtime), at the teacher's size."""
    return {"name": "main-job",
            "description": f"{teacher} U-Net step vs the distilled student, ONNX Runtime fp32 (written by the main job)",
            "source": teacher, "defaults": {**BENCH_DEFAULTS, "resolution": resolution},
            "matrix": [{"model": ["teacher", str(student)]}]}


def run_bench(config: dict, config_path: Path, out: Path) -> int:
    """Write ``config`` beside the outputs (rerun it with the command shown), then run it."""
    import yaml

    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return cli(["bench", "--config", str(config_path), "--out", str(out)])


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
                  ["profile", "--teacher", "builtin:sd-v1.4", "--variants", "all", "--json", str(out / "profile.json")],
                  ((out / "profile.json", "parameters and MACs of SD-v1.4 and BK-SDM Base/Small/Tiny"),)),
        _cli_step(f"Build {variant} from {teacher}",
                  ["build", "--teacher", teacher, "--variant", variant, "--out", str(student), "--force"],
                  ((student, "the student U-Net built from the teacher (diffusers folder + bksdm_edge.json)"),)),
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
                       "--report-to", "none"],
                      ((run, "the distillation run: unet/, losses per step, config"),)),
        ]
        unet = run / "unet"
    job += [
        _cli_step("Export the student pipeline to ONNX fp32 (every component validated against PyTorch)",
                  ["export", "--model", teacher, "--unet", str(unet), "--format", "onnx", "--precision", "fp32",
                   "--out", str(bundle), "--overwrite", "--no-progress"],
                  ((bundle, "the exported bundle: manifest.json, ONNX models, validation report"),)),
        _cli_step("Re-validate the bundle", ["validate", "--bundle", str(bundle)]),
        _cli_step("Generate an image from the bundle (onnxruntime + numpy, no PyTorch)",
                  ["generate", "--bundle", str(bundle), "--prompt", "a handwritten digit seven", "--steps", "25",
                   "--guidance", "4", "--seed", "0", "--out", str(out / "digit_seven.png")],
                  ((out / "digit_seven.png", "an image generated from the bundle"),)),
    ]
    if is_digits:
        job.append(Step("Digit grids and scores: teacher (PyTorch) vs distilled student bundle (ONNX Runtime)",
                        lambda: digits_report(teacher, bundle, out, seeds, 25), "",
                        ((out / "digit_scores.json", "prompt accuracy and Fréchet distance, teacher and student"),
                         (out / "grid_teacher.png", "the teacher's digits (row = digit, column = seed)"),
                         (out / "grid_student_bundle.png", "the student bundle's digits"))))
    config = bench_config(teacher, unet, int(resolution))
    config_path, bench_out = out / "bench.yaml", out / "bench"
    job.append(Step("Benchmark: teacher vs student U-Net step (ONNX Runtime fp32, same run)",
                    lambda: run_bench(config, config_path, bench_out),
                    f"$ bksdm-edge bench --config {config_path} --out {bench_out}",
                    ((bench_out / "report.md", "the benchmark: latency, memory, size, speed-up, MACs ratio"),)))
    return job


def summary(job: list[Step], out: Path) -> str:
    """What the job measured (digit scores, the student's speed-up) and where each output is."""
    lines = []
    scores = out / "digit_scores.json"
    if scores.exists():
        lines += ["Digit scores (10 prompts x seeds; higher accuracy / lower distance is better):",
                  "| model | prompt accuracy | Fréchet distance |", "|---|---:|---:|"]
        lines += [f"| {name} | {s['prompt_accuracy']:.3f} | {s['frechet_distance']:.1f} |"
                  for name, s in json.loads(scores.read_text()).items()]
        lines.append("")
    results = out / "bench" / "results.json"
    if results.exists():
        rows = json.loads(results.read_text())["rows"]
        teacher = next((r for r in rows if r["model"] == "teacher" and r.get("median_s")), None)
        for r in rows:
            if r["model"] != "teacher" and teacher and r.get("speedup_vs_teacher"):
                ratios = ", ".join(f"{r[k]:.2f} of the teacher's {what}" for k, what in
                                   (("macs_ratio_vs_teacher", "MACs"), ("size_ratio_vs_teacher", "size"))
                                   if r.get(k) is not None)
                lines.append(f"Student U-Net step {r['median_s'] * 1e3:.1f} ms vs teacher {teacher['median_s'] * 1e3:.1f} "
                             f"ms ({r['backend']} {r['precision']}, {r['resolution']} px, batch {r['batch']}): "
                             f"{r['speedup_vs_teacher']:.2f}x faster" + (f"; {ratios}" if ratios else "") + ".")
            elif r.get("error"):
                lines.append(f"Benchmark row {r['model']}: {r['error']}")
        lines.append("")
    lines.append("Where to look:")
    lines += [f"  {path}  {what}" for step in job for path, what in step.outputs]
    lines.append("Next: python benchmarks/run.py (teacher vs BK-SDM students, PyTorch vs ONNX Runtime, every "
                 "component and a whole image; a few minutes)")
    return "\n".join(lines)



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
    print(f"\n=== main job done in {sum(timings.values()):.0f} s (per step: {args.out / 'main_job.json'})\n")
    print(summary(job, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
