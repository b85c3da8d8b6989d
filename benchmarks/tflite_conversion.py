"""Full-size TFLite conversion benchmark: time, peak RAM, file size and accuracy per U-Net and precision.

Each scenario runs in its own child process under ``flock /tmp/bksdm-heavy.lock`` (other
full-size jobs share the machine; two at once would exhaust its memory). Before a scenario
is started, the memory estimate of ``bksdm_edge.export.tflite`` is compared with the memory
available; a scenario that does not fit is recorded as refused with the numbers, not run.

    python benchmarks/tflite_conversion.py [--scenarios bk-tiny:fp16,bk-small:int8] [--out DIR]

Results: ``benchmarks/results/tflite_conversion/results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = "/tmp/bksdm-heavy.lock"


@dataclass(frozen=True)
class Scenario:
    """One conversion: a U-Net (teacher or BK-SDM student of ``source``) at one precision."""

    unet: str  # "teacher" | "bk-base" | "bk-small" | "bk-tiny"
    precision: str  # fp32 | fp16 | int8 | int8-weight-only | w8a8
    source: str = "builtin:sd-v1.4"
    lightweight: bool | None = None  # None: the library default

    @property
    def name(self) -> str:
        lw = "" if self.lightweight is None else (":lw" if self.lightweight else ":no-lw")
        return f"{self.source.split(':')[-1]}/{self.unet}:{self.precision}{lw}"


DEFAULT_SCENARIOS = [
    Scenario("bk-tiny", "fp16"),
    Scenario("bk-tiny", "int8"),
    Scenario("bk-small", "fp16"),
    Scenario("bk-small", "int8"),
    Scenario("teacher", "fp16"),
    Scenario("teacher", "int8"),
    Scenario("bk-tiny", "w8a8"),
    Scenario("bk-small", "w8a8"),
    Scenario("bk-base", "fp32"),
    Scenario("teacher", "fp32"),
]


def parse_scenario(text: str) -> Scenario:
    """``[source/]unet:precision[:lw|:no-lw]``, e.g. ``bk-tiny:fp16`` or ``mini-sd/teacher:int8``."""
    source, _, rest = text.rpartition("/")
    unet, precision, *flags = rest.split(":")
    lw = {"lw": True, "no-lw": False}[flags[0]] if flags else None
    return Scenario(unet, precision, "builtin:" + source if source else "builtin:sd-v1.4", lw)


def _unet_param_count(scenario: Scenario) -> int:
    """Parameter count of the scenario's U-Net, built on the meta device (no memory, no time)."""
    import torch
    from diffusers import UNet2DConditionModel

    from bksdm_edge.builtins import BUILTINS
    from bksdm_edge.variants import get_variant

    config = dict(BUILTINS[scenario.source.split(":", 1)[1]].unet)
    with torch.device("meta"):
        teacher = UNet2DConditionModel(**config)
        if scenario.unet == "teacher":
            unet = teacher
        else:
            unet = UNet2DConditionModel.from_config(get_variant(scenario.unet).student_config(teacher.config))
    from bksdm_edge.export.tflite import count_parameters

    return count_parameters(unet)


def run_child(scenario: Scenario, work_dir: Path) -> dict:
    """Build, convert and validate one scenario in this process; returns the measured row."""
    import resource

    import psutil
    import torch

    from bksdm_edge.export import tflite
    from bksdm_edge.export.components import COMPONENTS, ShapeConfig
    from bksdm_edge.export.tensor_io import from_runner_outputs, to_runner_inputs
    from bksdm_edge.loading import load_model
    from bksdm_edge.metrics import error_metrics

    torch.set_num_threads(os.cpu_count() or 1)
    row: dict = {}
    t0 = time.perf_counter()
    model = load_model(scenario.source, components=("unet", "vae"))
    if scenario.unet != "teacher":
        from bksdm_edge.student import build_student

        model.unet, _ = build_student(model.unet, scenario.unet)
    row["build_seconds"] = round(time.perf_counter() - t0, 1)
    spec = COMPONENTS["unet"]
    module = spec.module(model)
    from bksdm_edge.builtins import BUILTINS

    res = BUILTINS[scenario.source.split(":", 1)[1]].default_resolution
    shape = ShapeConfig(height=res, width=res)
    inputs = spec.example_inputs(model, shape, seed=0)
    # Calibration and validation sets are disjoint seeds; full-size built-ins have random
    # weights, so seeded inputs are the "real" distribution here.
    calibration = [spec.example_inputs(model, shape, seed=s) for s in (1, 2, 3, 4)] if scenario.precision == "w8a8" else None

    # Peak RSS during the conversion alone (building the teacher+student costs its own peak).
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    peak = [rss_before]
    done = threading.Event()

    def sample():
        while not done.wait(0.2):
            peak[0] = max(peak[0], proc.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    options = {"memory_limit_bytes": 1 << 62}  # _child_main already checked the estimate
    if scenario.lightweight is not None:
        options["lightweight"] = scenario.lightweight
    t0 = time.perf_counter()
    converted = tflite.convert(module, inputs, spec.output_names, work_dir / "unet", scenario.precision,
                               calibration=calibration, options=options)
    row["convert_seconds"] = round(time.perf_counter() - t0, 1)
    done.set()
    sampler.join()
    row["rss_before_convert_gib"] = round(rss_before / 2**30, 2)
    row["peak_rss_convert_gib"] = round(peak[0] / 2**30, 2)
    row["ru_maxrss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    row["file_mib"] = round(converted.path.stat().st_size / 2**20, 1)
    row["extra"] = converted.extra
    row["inputs"] = [t.to_json() for t in converted.inputs]
    row["outputs"] = [t.to_json() for t in converted.outputs]

    # Validate against PyTorch on the traced inputs and one unseen seed.
    runner = tflite.load_runner(converted)
    row["validation"] = {}
    for seed in (0, 5):
        feed = spec.example_inputs(model, shape, seed=seed)
        with torch.no_grad():
            ref = module(**feed).numpy()
        t0 = time.perf_counter()
        raw = runner(to_runner_inputs(converted.inputs, [feed[n].numpy() for n in spec.input_names]))
        out = from_runner_outputs(converted.outputs, raw)[0]
        row["validation"][f"seed{seed}"] = {**error_metrics(ref, out), "tflite_seconds": round(time.perf_counter() - t0, 2)}
    converted.path.unlink()  # keep the disk free; the size is recorded
    return row


def run_scenario(scenario: Scenario, work_root: Path) -> dict:
    """Check the memory estimate, then run the scenario in a child process under the heavy-job lock."""
    from bksdm_edge.export import tflite

    params = _unet_param_count(scenario)
    lightweight = scenario.lightweight if scenario.lightweight is not None else params >= tflite.LIGHTWEIGHT_MIN_PARAMS
    estimate = tflite.estimate_conversion_memory(params, scenario.precision, lightweight)
    row = {"scenario": scenario.name, **asdict(scenario), "parameters": params,
           "estimated_peak_gib": round(estimate / 2**30, 2)}
    # Refuse now when it cannot fit even before waiting for the lock; the child checks again under
    # the lock, once the other heavy jobs have released their memory.
    available = tflite.available_memory()
    if estimate > available:
        row.update(status="refused", available_gib_at_start=round(available / 2**30, 2), error=(
            f"estimated peak {estimate / 2**30:.1f} GiB > {available / 2**30:.1f} GiB available; not converted"))
        return row
    work_dir = work_root / scenario.name.replace("/", "_").replace(":", "_")
    work_dir.mkdir(parents=True, exist_ok=True)
    result_file = work_dir / "row.json"
    result_file.unlink(missing_ok=True)
    cmd = ["flock", LOCK, sys.executable, __file__, "--child", json.dumps(asdict(scenario)),
           "--work", str(work_dir), "--estimate", str(estimate)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    row["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if result_file.exists():
        row.update(json.loads(result_file.read_text()))
    else:
        row["status"] = "failed"
        tail = (proc.stderr or "").replace("\r", "\n").strip().splitlines()[-15:]
        row["error"] = f"exit code {proc.returncode}" + (" (killed: out of memory?)" if proc.returncode < 0 else "")
        row["stderr_tail"] = tail
    return row


def _child_main(scenario: Scenario, work_dir: Path, estimate: int) -> None:
    from bksdm_edge.errors import BksdmError
    from bksdm_edge.export import tflite

    out = work_dir / "row.json"
    available = tflite.available_memory()
    row = {"available_gib_at_start": round(available / 2**30, 2)}
    if estimate > available:
        row.update(status="refused", error=(
            f"estimated peak {estimate / 2**30:.1f} GiB > {available / 2**30:.1f} GiB available; not converted"))
        out.write_text(json.dumps(row))
        return
    try:
        row.update(run_child(scenario, work_dir), status="ok")
    except BksdmError as err:
        row.update(status="failed", error=str(err))
    except Exception as err:  # record the failure in the table, as the benchmark's purpose is to find them
        row.update(status="failed", error=f"{type(err).__name__}: {str(err)[:800]}")
    out.write_text(json.dumps(row))


def machine_info() -> dict:
    import psutil
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "torch": torch.__version__}
    for pkg in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "diffusers"):
        from importlib.metadata import version

        info[pkg] = version(pkg)
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def write_markdown(rows: list[dict], info: dict, path: Path) -> None:
    lines = [
        "# TFLite conversion of U-Nets (built-in architectures, random weights, default resolution: 512 px for sd-v1.4)",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        "Peak RSS is sampled during `tflite.convert` only (building teacher + student is excluded);",
        "`ru_maxrss` is the whole child process. Accuracy: TFLite vs PyTorch on the traced inputs (seed 0)",
        "and an unseen seed (5).",
        "",
        "| scenario | params (M) | status | est. peak GiB | peak RSS GiB | ru_maxrss GiB | convert s | file MiB |"
        " PSNR dB (s0/s5) | cosine (s5) | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v = r.get("validation", {})
        psnr = "/".join(f"{v[s]['psnr_db']:.1f}" for s in ("seed0", "seed5") if s in v) or "-"
        cos = f"{v['seed5']['cosine']:.5f}" if "seed5" in v else "-"
        note = r.get("error", "")
        if r.get("extra", {}).get("lightweight_conversion") is not None:
            note = ("lightweight" if r["extra"]["lightweight_conversion"] else "default conversion") + (
                f"; {note}" if note else "")
        lines.append(
            f"| {r['scenario']} | {r['parameters'] / 1e6:.1f} | {r.get('status')} | {r['estimated_peak_gib']} | "
            f"{r.get('peak_rss_convert_gib', '-')} | {r.get('ru_maxrss_gib', '-')} | {r.get('convert_seconds', '-')} | "
            f"{r.get('file_mib', '-')} | {psnr} | {cos} | {note.replace('|', '/')[:300]} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", help="comma-separated [source/]unet:precision[:lw|:no-lw]; default: all")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/tflite_conversion")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bksdm-tflite-bench"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--estimate", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        fields = Scenario.__dataclass_fields__
        _child_main(Scenario(**{k: v for k, v in json.loads(args.child).items() if k in fields}), args.work,
                    args.estimate)
        return 0

    scenarios = [parse_scenario(s) for s in args.scenarios.split(",")] if args.scenarios else DEFAULT_SCENARIOS
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "results.json"
    previous = json.loads(json_path.read_text())["rows"] if json_path.exists() else []
    info = machine_info()
    rows = {r["scenario"]: r for r in previous}
    for scenario in scenarios:
        print(f"[tflite-bench] {scenario.name} ...", flush=True)
        row = run_scenario(scenario, args.work)
        print(f"[tflite-bench] {scenario.name}: {row.get('status')} {row.get('error', '')[:200]}", flush=True)
        rows[scenario.name] = row
        ordered = list(rows.values())
        json_path.write_text(json.dumps({"machine": info, "command": sys.argv, "rows": ordered}, indent=2))
        write_markdown(ordered, info, args.out / "results.md")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
