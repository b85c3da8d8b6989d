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
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bksdm_edge.bench.child import child_env, run_task, task_main  # noqa: E402
from bksdm_edge.bench.machine import machine_info, machine_markdown  # noqa: E402
from bksdm_edge.bench.scenario import Scenario  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "train"
MIXED_PRECISION = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}  # scenario precision -> accelerate's name


@dataclass(frozen=True)
class TrainRun:
    """One measured training configuration: a bench ``Scenario`` plus what only training has.

    The scenario's ``source`` is the teacher, ``model`` the student variant, ``batch`` the batch size,
    ``repeats`` the timed steps after ``warmup`` untimed ones, ``precision`` the mixed precision
    (``fp32`` = none), ``threads`` the torch intra-op threads on CPU (0: torch's default).
    """

    name: str
    scenario: Scenario
    cached: bool
    gradient_checkpointing: bool = False

    @staticmethod
    def make(name: str, teacher: str, variant: str, resolution: int, batch_size: int, cached: bool, steps: int = 8,
             warmup: int = 2, device: str = "cpu", precision: str = "fp32", gradient_checkpointing: bool = False,
             threads: int = 0) -> "TrainRun":
        s = Scenario(model=variant, component="unet", backend="pytorch", precision=precision, resolution=resolution,
                     batch=batch_size, threads=threads, device=device, repeats=steps, warmup=warmup, source=teacher)
        return TrainRun(name, s, cached, gradient_checkpointing)

    def with_batch(self, batch: int) -> "TrainRun":
        return dataclasses.replace(self, scenario=dataclasses.replace(self.scenario, batch=batch))

    def record(self) -> dict:
        """The row's description columns (the names results/train/*.json have always used)."""
        s = self.scenario
        return {"name": self.name, "teacher": s.source, "variant": s.model, "resolution": s.resolution,
                "batch_size": s.batch, "cached": self.cached, "steps": s.repeats, "warmup": s.warmup,
                "device": s.device, "mixed_precision": MIXED_PRECISION[s.precision],
                "gradient_checkpointing": self.gradient_checkpointing, "threads": s.threads}

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "scenario": self.scenario.to_json()}

    @staticmethod
    def from_json(d: dict) -> "TrainRun":
        return TrainRun(**{**d, "scenario": Scenario(**d["scenario"])})


def cpu_runs(threads: int) -> list[TrainRun]:
    tiny = TrainRun.make("tiny-sd bk-small 64px", "builtin:tiny-sd", "bk-small", 64, 4, cached=False, steps=10,
                         threads=threads)
    mini = TrainRun.make("mini-sd bk-small 128px", "builtin:mini-sd", "bk-small", 128, 2, cached=False, steps=5,
                         threads=threads)
    return [r for base in (tiny, mini) for r in (base, dataclasses.replace(base, cached=True))]


def cuda_runs(teacher_full: str, batch: int) -> list[TrainRun]:
    full = TrainRun.make("SD-v1.4 -> BK-SDM-Small 512px fp16", teacher_full, "bk-small", 512, batch, cached=False,
                         steps=10, warmup=3, device="cuda", precision="fp16", gradient_checkpointing=True)
    tiny = TrainRun.make("tiny-sd bk-small 64px", "builtin:tiny-sd", "bk-small", 64, 64, cached=False, device="cuda")
    return [r for base in (tiny, full) for r in (base, dataclasses.replace(base, cached=True))]


# ---- child process ------------------------------------------------------------------------------------------


def build_cache_child(run: TrainRun, data: Path, work: Path) -> dict:
    """Encode the data set into ``work/cache`` (its own process, so training's peak memory excludes the encoders)."""
    import torch

    from bksdm_edge.distill import cache_latents

    s = run.scenario
    if s.threads:
        torch.set_num_threads(s.threads)
    started = time.perf_counter()
    dtype = torch.float16 if s.precision == "fp16" else torch.float32
    cache = cache_latents(s.source, data_config(run, data, work), work / "cache", device=s.device, dtype=dtype,
                          progress=False)
    return {"cache_build_s": round(time.perf_counter() - started, 2), "cache_rows": len(cache)}


def data_config(run: TrainRun, data: Path, work: Path):
    from bksdm_edge.distill import DataConfig

    return DataConfig(source=str(data), resolution=run.scenario.resolution,
                      num_workers=0 if run.scenario.device == "cpu" else 4,
                      cache_dir=str(work / "cache") if run.cached else None)


def train_child(run: TrainRun, data: Path, work: Path) -> dict:
    """Train warmup + steps and measure the timed steps (median step time)."""
    import statistics

    import torch

    from bksdm_edge.distill import CheckpointConfig, DistillConfig, distill, read_log

    s = run.scenario
    if s.threads:
        torch.set_num_threads(s.threads)
    config = DistillConfig(
        teacher=s.source, variant=s.model, out=str(work / "run"), max_steps=s.warmup + s.repeats, batch_size=s.batch,
        mixed_precision=MIXED_PRECISION[s.precision], gradient_checkpointing=run.gradient_checkpointing,
        progress=False, report_to="none", data=data_config(run, data, work), checkpoint=CheckpointConfig(every=0),
    )
    started = time.perf_counter()
    distill(config)
    wall = time.perf_counter() - started
    timed = read_log(work / "run")[s.warmup :]
    step_s = statistics.median(r["seconds"] for r in timed)
    row = {
        "images_per_s": round(s.batch / step_s, 3),
        "s_per_step_median": round(step_s, 4),
        "s_per_step_min_max": [round(min(r["seconds"] for r in timed), 4), round(max(r["seconds"] for r in timed), 4)],
        "run_wall_s": round(wall, 1),
        "torch_threads": torch.get_num_threads(),
        "last_losses": {k: round(v, 5) for k, v in timed[-1].items() if k.startswith("loss")},
    }
    if s.device.startswith("cuda"):
        row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        row["gpu"] = torch.cuda.get_device_name(0)
    return row


CHILDREN = {"cache": build_cache_child, "train": train_child}
# The peak RSS the child protocol reads, under the name each stage's column has.
PEAK_COLUMN = {"cache": "cache_peak_rss_mb", "train": "peak_rss_mb"}


def _child(task: dict) -> dict:
    return CHILDREN[task["stage"]](TrainRun.from_json(task["run"]), Path(task["data"]), Path(task["work"]))


def measure(run: TrainRun, data: Path, work_root: Path) -> dict:
    """Run one configuration in child processes; a failure (OOM included) becomes a row with the error."""
    work = Path(tempfile.mkdtemp(dir=work_root))
    s = run.scenario
    row = {**run.record(), "ok": False}
    extra = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if s.device == "cpu":
        extra["CUDA_VISIBLE_DEVICES"] = ""  # accelerate would pick a visible GPU
    env = child_env(threads=s.threads or None, **extra)
    for stage in (("cache", "train") if run.cached else ("train",)):
        result, _ = run_task([sys.executable, __file__, "--child"],
                             {"stage": stage, "run": run.to_json(), "data": str(data), "work": str(work)}, env=env)
        if not result["ok"]:
            row["oom"] = "out of memory" in result["log_tail"].lower()
            row["error"] = f"{stage}: {result['error']}"
            return row
        row.update({k: v for k, v in result.items() if k not in ("ok", "log_tail", "peak_rss_mb")})
        row[PEAK_COLUMN[stage]] = round(result["peak_rss_mb"], 1)
    row["ok"] = True
    return row


def batch_search(base: TrainRun, data: Path, work_root: Path, start: int) -> list[dict]:
    """Double the batch from ``start`` until a run fails (CUDA OOM); every try is a row."""
    rows, batch = [], start
    while True:
        row = measure(base.with_batch(batch), data, work_root)
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("name", "cached", "batch_size", "ok", "images_per_s",
                                                  "peak_cuda_mb", "error")}), flush=True)
        if not row["ok"] or batch >= 256:
            return rows
        batch *= 2


# ---- report ---------------------------------------------------------------------------------------------------


def to_markdown(info: dict, rows: list[dict], command: str) -> str:
    lines = [
        "# Distillation training benchmark",
        "",
        machine_markdown(info),
        "",
        f"Command: `{command}`",
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
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        return task_main(_child, args.child)

    from bksdm_edge.distill.synthetic import make_synthetic_folder

    info = machine_info()
    command = " ".join(["python", "benchmarks/train_bench.py", *(argv if argv is not None else sys.argv[1:])])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bksdm-train-bench-") as tmp:
        tmp = Path(tmp)
        if args.device == "cpu":
            data = make_synthetic_folder(tmp / "data", rows=args.rows or 32, size=128)
            for run in cpu_runs(args.threads):
                rows.append(measure(run, data, tmp))
                print(json.dumps({k: rows[-1].get(k) for k in ("name", "cached", "ok", "images_per_s",
                                                               "peak_rss_mb", "error")}), flush=True)
        else:
            data = make_synthetic_folder(tmp / "data", rows=args.rows or 512, size=512)
            for base in cuda_runs(args.teacher_full, args.start_batch):
                rows.extend(batch_search(base, data, tmp, args.start_batch))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"train_bench_{args.device}"
    (args.out / f"{stem}.json").write_text(json.dumps({"machine": info, "command": command, "rows": rows}, indent=2))
    (args.out / f"{stem}.md").write_text(to_markdown(info, rows, command))
    print(f"wrote {args.out / stem}.json and .md")
    return 0 if all(r["ok"] for r in rows) or args.device == "cuda" else 1


if __name__ == "__main__":
    sys.exit(main())
