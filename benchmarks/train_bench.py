"""Distillation throughput and memory: images/s and peak memory per scenario, with and without the latent cache.

Each scenario runs in its own child process (peak RSS and CUDA peak memory are per process) on a
synthetic image-caption folder; the first ``warmup`` steps are not timed. Results are one row per
scenario, failures included, written as JSON and Markdown with the machine description.

    python benchmarks/train_bench.py                       # CPU: tiny-sd and mini-sd, cached and uncached
    python benchmarks/train_bench.py --device cuda         # + SD-v1.4 -> BK-SDM-Small at 512 px, batch search
    python benchmarks/train_bench.py --device cuda --teacher-full CompVis/stable-diffusion-v1-4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "train"


@dataclass(frozen=True)
class Scenario:
    """One measured training configuration."""

    name: str
    teacher: str
    variant: str
    resolution: int
    batch_size: int
    cached: bool
    steps: int = 8  # timed steps
    warmup: int = 2
    device: str = "cpu"
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    threads: int = 0  # torch intra-op threads on CPU (0: torch's default)


def cpu_scenarios(threads: int) -> list[Scenario]:
    tiny = Scenario("tiny-sd bk-small 64px", "builtin:tiny-sd", "bk-small", 64, 4, cached=False, steps=10,
                    threads=threads)
    mini = Scenario("mini-sd bk-small 128px", "builtin:mini-sd", "bk-small", 128, 2, cached=False, steps=5,
                    threads=threads)
    return [s for base in (tiny, mini) for s in (base, dataclasses.replace(base, cached=True))]


def cuda_scenarios(teacher_full: str, batch: int) -> list[Scenario]:
    full = Scenario("SD-v1.4 -> BK-SDM-Small 512px fp16", teacher_full, "bk-small", 512, batch, cached=False,
                    steps=10, warmup=3, device="cuda", mixed_precision="fp16", gradient_checkpointing=True)
    tiny = Scenario("tiny-sd bk-small 64px", "builtin:tiny-sd", "bk-small", 64, 64, cached=False, device="cuda")
    return [s for base in (tiny, full) for s in (base, dataclasses.replace(base, cached=True))]


def machine() -> dict:
    import psutil
    import torch

    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


# ---- child process ------------------------------------------------------------------------------------------


def build_cache_child(scenario: Scenario, data: Path, work: Path) -> dict:
    """Encode the data set into ``work/cache`` (its own process, so training's peak memory excludes the encoders)."""
    import torch

    from bksdm_edge.distill import cache_latents

    if scenario.threads:
        torch.set_num_threads(scenario.threads)
    started = time.perf_counter()
    dtype = torch.float16 if scenario.mixed_precision == "fp16" else torch.float32
    cache = cache_latents(scenario.teacher, data_config(scenario, data, work), work / "cache", device=scenario.device,
                          dtype=dtype, progress=False)
    return {"cache_build_s": round(time.perf_counter() - started, 2), "cache_rows": len(cache),
            "cache_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def data_config(scenario: Scenario, data: Path, work: Path):
    from bksdm_edge.distill import DataConfig

    return DataConfig(source=str(data), resolution=scenario.resolution,
                      num_workers=0 if scenario.device == "cpu" else 4,
                      cache_dir=str(work / "cache") if scenario.cached else None)


def train_child(scenario: Scenario, data: Path, work: Path) -> dict:
    """Train warmup + steps and measure the timed steps (median step time)."""
    import statistics

    import torch

    from bksdm_edge.distill import CheckpointConfig, DistillConfig, distill, read_log

    if scenario.threads:
        torch.set_num_threads(scenario.threads)
    config = DistillConfig(
        teacher=scenario.teacher, variant=scenario.variant, out=str(work / "run"),
        max_steps=scenario.warmup + scenario.steps, batch_size=scenario.batch_size,
        mixed_precision=scenario.mixed_precision, gradient_checkpointing=scenario.gradient_checkpointing,
        progress=False, report_to="none", data=data_config(scenario, data, work), checkpoint=CheckpointConfig(every=0),
    )
    started = time.perf_counter()
    distill(config)
    wall = time.perf_counter() - started
    timed = read_log(work / "run")[scenario.warmup :]
    step_s = statistics.median(r["seconds"] for r in timed)
    row = {
        "images_per_s": round(scenario.batch_size / step_s, 3),
        "s_per_step_median": round(step_s, 4),
        "s_per_step_min_max": [round(min(r["seconds"] for r in timed), 4), round(max(r["seconds"] for r in timed), 4)],
        "run_wall_s": round(wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
        "last_losses": {k: round(v, 5) for k, v in timed[-1].items() if k.startswith("loss")},
    }
    if scenario.device.startswith("cuda"):
        row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        row["gpu"] = torch.cuda.get_device_name(0)
    return row


CHILDREN = {"cache": build_cache_child, "train": train_child}


def _child(stage: str, scenario: Scenario, data: Path, work: Path) -> tuple[dict, str | None]:
    cmd = [sys.executable, __file__, "--child", stage, "--scenario", json.dumps(dataclasses.asdict(scenario)),
           "--data", str(data), "--work", str(work)]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if scenario.threads:
        env["OMP_NUM_THREADS"] = str(scenario.threads)
    if scenario.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # accelerate would pick a visible GPU
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    result = work / f"{stage}.json"
    if proc.returncode == 0 and result.exists():
        return json.loads(result.read_text()), None
    tail = (proc.stderr or "").strip().splitlines()[-3:]
    return {"oom": "out of memory" in (proc.stderr or "").lower()}, " | ".join(tail) or f"exit code {proc.returncode}"


def measure(scenario: Scenario, data: Path, work_root: Path) -> dict:
    """Run one scenario in child processes; a failure (OOM included) becomes a row with the error."""
    work = Path(tempfile.mkdtemp(dir=work_root))
    row = {**dataclasses.asdict(scenario), "ok": False}
    for stage in (("cache", "train") if scenario.cached else ("train",)):
        values, error = _child(stage, scenario, data, work)
        row.update(values)
        if error:
            row["error"] = f"{stage}: {error}"
            return row
    row["ok"] = True
    return row


def batch_search(base: Scenario, data: Path, work_root: Path, start: int) -> list[dict]:
    """Double the batch from ``start`` until a run fails (CUDA OOM); every try is a row."""
    rows, batch = [], start
    while True:
        row = measure(dataclasses.replace(base, batch_size=batch), data, work_root)
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("name", "cached", "batch_size", "ok", "images_per_s",
                                                  "peak_cuda_mb", "error")}), flush=True)
        if not row["ok"] or batch >= 256:
            return rows
        batch *= 2


# ---- report ---------------------------------------------------------------------------------------------------


def to_markdown(info: dict, rows: list[dict]) -> str:
    lines = [
        "# Distillation training benchmark",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items() if k != "command"),
        "",
        f"Command: `{info.get('command', '')}`",
        "",
        "| scenario | cache | device | batch | res | images/s | s/step (median) | peak RSS MB | peak CUDA MB | cache build s | "
        "status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {'yes' if r['cached'] else 'no'} | {r['device']} | {r['batch_size']} | "
            f"{r['resolution']} | {r.get('images_per_s', '')} | {r.get('s_per_step_median', '')} | {r.get('peak_rss_mb', '')} | "
            f"{r.get('peak_cuda_mb', '')} | {r.get('cache_build_s', '')} | "
            f"{'ok' if r['ok'] else 'FAILED: ' + r.get('error', '')[:120]} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="CPU torch threads (0: torch's default)")
    p.add_argument("--teacher-full", default="builtin:sd-v1.4",
                   help="full-size teacher for the CUDA scenario (builtin:sd-v1.4 has random weights: same speed)")
    p.add_argument("--start-batch", type=int, default=8, help="first batch of the CUDA batch search")
    p.add_argument("--rows", type=int, default=0, help="synthetic rows (default: enough for the largest batch)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--scenario", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        row = CHILDREN[args.child](Scenario(**json.loads(args.scenario)), args.data, args.work)
        (args.work / f"{args.child}.json").write_text(json.dumps(row))
        return 0

    from bksdm_edge.distill.synthetic import make_synthetic_folder

    info = {**machine(), "command": " ".join(["python", "benchmarks/train_bench.py", *(argv or sys.argv[1:])])}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bksdm-train-bench-") as tmp:
        tmp = Path(tmp)
        if args.device == "cpu":
            scenarios = cpu_scenarios(args.threads)
            data = make_synthetic_folder(tmp / "data", rows=args.rows or 32, size=128)
            for s in scenarios:
                rows.append(measure(s, data, tmp))
                print(json.dumps({k: rows[-1].get(k) for k in ("name", "cached", "ok", "images_per_s",
                                                               "peak_rss_mb", "error")}), flush=True)
        else:
            data = make_synthetic_folder(tmp / "data", rows=args.rows or 512, size=512)
            for base in cuda_scenarios(args.teacher_full, args.start_batch):
                rows.extend(batch_search(base, data, tmp, args.start_batch))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"train_bench_{args.device}"
    (args.out / f"{stem}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    (args.out / f"{stem}.md").write_text(to_markdown(info, rows))
    print(f"wrote {args.out / stem}.json and .md")
    return 0 if all(r["ok"] for r in rows) or args.device == "cuda" else 1


if __name__ == "__main__":
    sys.exit(main())
