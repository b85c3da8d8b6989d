"""``bksdm-edge bench``: run a benchmark config and write its report (see benchmarks/README.md)."""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    """The bench options, shared with ``benchmarks/run.py``."""
    p.add_argument("--config", default="quick",
                   help="YAML config path, or a ready config: quick (default), cpu-full, target, gpu")
    p.add_argument("--out", type=Path, help="run folder (default benchmarks/results/<config name>)")
    p.add_argument("--cache", type=Path, help="exported-model cache (default ~/.cache/bksdm-edge/bench)")
    p.add_argument("--device", help="run every scenario on this device: cpu, cuda, android:SERIAL")
    p.add_argument("--repeats", type=int, help="override the timed repeats of every scenario")
    p.add_argument("--warmup", type=int, help="override the warm-up runs of every scenario")
    p.add_argument("--threads", type=int, help="override the thread count of every scenario")
    p.add_argument("--import", dest="imports", action="append", default=[], type=Path, metavar="FILE",
                   help="add rows measured elsewhere (JSON or CSV, format in benchmarks/README.md); repeatable")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in the run folder's results.json and run only the missing scenarios")
    p.add_argument("--finalize", action="store_true",
                   help="run nothing: record missing scenarios as not measured and write the full report")
    p.add_argument("--adb", help="adb executable for android devices (default: adb on PATH)")
    p.add_argument("--benchmark-model", help="path of TFLite's benchmark_model binary (on this machine)")
    p.add_argument("--perf-test", help="path of onnxruntime_perf_test (on this machine)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark latency and memory of teacher vs BK-SDM students on every backend",
        description="Run a matrix of scenarios (model x component x backend x precision x shape x threads x "
        "device), each in its own process, and write results.json, results.csv, report.md and plots. "
        "Models: teacher, bk-base/bk-small/bk-tiny, a removal-plan file (docs/plans.md), a student U-Net folder "
        "or an exported bundle folder. "
        "Components: text_encoder, unet (one step), vae_decoder, vae_encoder, generate (a whole text-to-image "
        "run of `steps` steps). Config format: benchmarks/README.md.")
    add_arguments(p)
    p.set_defaults(func=run)


def check_args(args) -> None:
    """The bench options that can be checked before anything runs (scenarios check their own fields)."""
    from .. import checks
    from ..outputs import BENCH_RUN, claim

    checks.at_least(args.repeats, 1, "--repeats")
    checks.at_least(args.warmup, 0, "--warmup")
    checks.at_least(args.threads, 1, "--threads")
    for path in args.imports:
        checks.existing_file(path, "--import", suffixes=(".json", ".csv"), what="results file")
    if args.out is not None:
        checks.output_dir(args.out, "--out")
        # A run folder is rewritten in place (its rows, report and plots); never a folder of other files.
        claim(args.out, (BENCH_RUN,), replace=True, flag="--out", option="--out")


def run(args) -> int:
    from ..bench.runner import bench

    check_args(args)

    overrides = {k: getattr(args, k) for k in ("repeats", "warmup", "threads") if getattr(args, k) is not None}
    android = {k: v for k, v in (("adb", args.adb), ("benchmark_model", args.benchmark_model),
                                 ("onnxruntime_perf_test", args.perf_test)) if v}
    doc = bench(args.config, out_dir=args.out, cache=args.cache, device=args.device, imports=tuple(args.imports),
                overrides=overrides, android=android, resume=args.resume, finalize=args.finalize)
    failed = sum(1 for r in doc["rows"] if r.get("error"))
    print(f"{len(doc['rows'])} rows, {failed} with an error")
    return 0
