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
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bksdm_edge.bench.child import PeakRss, child_env, run_task, task_main  # noqa: E402
from bksdm_edge.bench.machine import machine_info, machine_markdown  # noqa: E402
from bksdm_edge.bench.scenario import Scenario  # noqa: E402

LOCK = "/tmp/bksdm-heavy.lock"
LIGHTWEIGHT = {"lw": True, "no-lw": False}  # scenario variant -> litert-torch's lightweight_conversion


def scenario(unet: str, precision: str, source: str = "builtin:sd-v1.4", lightweight: bool | None = None) -> Scenario:
    """One conversion: a U-Net (``teacher`` or a BK-SDM variant of ``source``) at one precision, at the source's
    default resolution; ``lightweight`` None leaves litert-torch's lightweight conversion to the library."""
    from bksdm_edge.builtins import BUILTINS

    res = BUILTINS[source.split(":", 1)[1]].default_resolution
    s = Scenario(model=unet, component="unet", backend="litert", precision=precision, source=source, resolution=res)
    if lightweight is None:
        return s
    return replace(s, options={"export": {"lightweight": lightweight}}, variant="lw" if lightweight else "no-lw")


def scenario_name(s: Scenario) -> str:
    """``sd-v1.4/bk-tiny:int8[:lw|:no-lw]``: the key of a row in results.json (and what --scenarios takes)."""
    return f"{s.source.split(':')[-1]}/{s.model}:{s.precision}" + (f":{s.variant}" if s.variant else "")


def _lightweight(s: Scenario) -> bool | None:
    return s.options.get("export", {}).get("lightweight")


DEFAULT_SCENARIOS = [
    scenario("bk-tiny", "fp16"),
    scenario("bk-tiny", "int8"),
    scenario("bk-small", "fp16"),
    scenario("bk-small", "int8"),
    scenario("teacher", "fp16"),
    scenario("teacher", "int8"),
    scenario("bk-tiny", "w8a8"),
    scenario("bk-small", "w8a8"),
    scenario("bk-base", "fp32"),
    scenario("teacher", "fp32"),
]


def parse_scenario(text: str) -> Scenario:
    """``[source/]unet:precision[:lw|:no-lw]``, e.g. ``bk-tiny:fp16`` or ``mini-sd/teacher:int8``."""
    source, _, rest = text.rpartition("/")
    unet, precision, *flags = rest.split(":")
    lw = LIGHTWEIGHT[flags[0]] if flags else None
    return scenario(unet, precision, "builtin:" + source if source else "builtin:sd-v1.4", lw)


def _unet_param_count(s: Scenario) -> int:
    """Parameter count of the scenario's U-Net, built on the meta device (no memory, no time)."""
    import torch
    from diffusers import UNet2DConditionModel

    from bksdm_edge.builtins import BUILTINS
    from bksdm_edge.variants import get_variant

    config = dict(BUILTINS[s.source.split(":", 1)[1]].unet)
    with torch.device("meta"):
        teacher = UNet2DConditionModel(**config)
        if s.model == "teacher":
            unet = teacher
        else:
            unet = UNet2DConditionModel.from_config(get_variant(s.model).student_config(teacher.config))
    from bksdm_edge.export.tflite import count_parameters

    return count_parameters(unet)


def convert_and_validate(s: Scenario, work_dir: Path) -> dict:
    """Build, convert and validate one scenario in this process; returns the measured row."""
    import os

    import torch

    from bksdm_edge.bench.backends import load_scenario_model
    from bksdm_edge.export import tflite
    from bksdm_edge.export.components import COMPONENTS, ShapeConfig
    from bksdm_edge.export.tensor_io import from_runner_outputs, to_runner_inputs
    from bksdm_edge.metrics import error_metrics

    torch.set_num_threads(os.cpu_count() or 1)
    row: dict = {}
    t0 = time.perf_counter()
    model = load_scenario_model(s, ("unet", "vae"))
    row["build_seconds"] = round(time.perf_counter() - t0, 1)
    spec = COMPONENTS["unet"]
    module = spec.module(model)
    shape = ShapeConfig(height=s.resolution, width=s.resolution)
    inputs = spec.example_inputs(model, shape, seed=0)
    # Calibration and validation sets are disjoint seeds; full-size built-ins have random
    # weights, so seeded inputs are the "real" distribution here.
    calibration = [spec.example_inputs(model, shape, seed=i) for i in (1, 2, 3, 4)] if s.precision == "w8a8" else None

    # Peak RSS during the conversion alone (building teacher + student costs its own peak).
    options = {"memory_limit_bytes": 1 << 62}  # the parent and this child already checked the estimate
    if _lightweight(s) is not None:
        options["lightweight"] = _lightweight(s)
    t0 = time.perf_counter()
    with PeakRss() as conversion:
        converted = tflite.convert(module, inputs, spec.output_names, work_dir / "unet", s.precision,
                                   calibration=calibration, options=options)
    row["convert_seconds"] = round(time.perf_counter() - t0, 1)
    row["rss_before_convert_gib"] = round(conversion.before_mb / 2**10, 2)
    row["peak_rss_convert_gib"] = round(conversion.peak_mb / 2**10, 2)
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


def run_scenario(s: Scenario, work_root: Path, lock: str = LOCK) -> dict:
    """Check the memory estimate, then run the scenario in a child process under the heavy-job lock."""
    from bksdm_edge.export import tflite

    params = _unet_param_count(s)
    lightweight = _lightweight(s) if _lightweight(s) is not None else params >= tflite.LIGHTWEIGHT_MIN_PARAMS
    estimate = tflite.estimate_conversion_memory(params, s.precision, lightweight)
    row = {"scenario": scenario_name(s), "unet": s.model, "precision": s.precision, "source": s.source,
           "lightweight": _lightweight(s), "parameters": params, "estimated_peak_gib": round(estimate / 2**30, 2)}
    # Refuse now when it cannot fit even before waiting for the lock; the child checks again under
    # the lock, once the other heavy jobs have released their memory.
    available = tflite.available_memory()
    if estimate > available:
        row.update(status="refused", available_gib_at_start=round(available / 2**30, 2), error=(
            f"estimated peak {estimate / 2**30:.1f} GiB > {available / 2**30:.1f} GiB available; not converted"))
        return row
    work_dir = work_root / scenario_name(s).replace("/", "_").replace(":", "_")
    work_dir.mkdir(parents=True, exist_ok=True)
    argv = (["flock", lock] if lock else []) + [sys.executable, __file__, "--child"]
    result, ran = run_task(argv, {"scenario": s.to_json(), "work": str(work_dir), "estimate": estimate},
                           cwd=ROOT, env=child_env())
    row["wall_seconds"] = round(ran.wall_s, 1)
    if result["ok"]:
        row.update({k: v for k, v in result.items() if k not in ("ok", "log_tail", "peak_rss_mb")})
        if row.get("status") == "ok":
            row["peak_rss_process_gib"] = round(result["peak_rss_mb"] / 2**10, 2)
    else:
        row["status"] = "failed"
        row["error"] = result["error"]
        row["stderr_tail"] = result["log_tail"].replace("\r", "\n").strip().splitlines()[-15:]
    return row


def _child(task: dict) -> dict:
    """The child side: check the memory again under the lock, then convert; a failure is a row, not a crash."""
    from bksdm_edge.errors import BksdmError
    from bksdm_edge.export import tflite

    s, work_dir, estimate = Scenario(**task["scenario"]), Path(task["work"]), task["estimate"]
    available = tflite.available_memory()
    row = {"available_gib_at_start": round(available / 2**30, 2)}
    if estimate > available:
        return {**row, "status": "refused", "error": (
            f"estimated peak {estimate / 2**30:.1f} GiB > {available / 2**30:.1f} GiB available; not converted")}
    try:
        row.update(convert_and_validate(s, work_dir), status="ok")
    except BksdmError as err:
        row.update(status="failed", error=str(err))
    except Exception as err:  # record the failure in the table, as the benchmark's purpose is to find them
        row.update(status="failed", error=f"{type(err).__name__}: {str(err)[:800]}")
    return row


def write_markdown(rows: list[dict], info: dict, path: Path) -> None:
    lines = [
        "# TFLite conversion of U-Nets (built-in architectures, random weights, default resolution: 512 px for sd-v1.4)",
        "",
        machine_markdown(info) if "isa" in info or "cpu_flags" in info else
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        "Peak RSS is sampled during `tflite.convert` only (building teacher + student is excluded);",
        "`process peak` is the whole child process (`VmHWM`; older rows recorded `ru_maxrss`).",
        "Accuracy: TFLite vs PyTorch on the traced inputs (seed 0) and an unseen seed (5).",
        "",
        "| scenario | params (M) | status | est. peak GiB | peak RSS GiB | process peak GiB | convert s | file MiB |"
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
            f"{r.get('peak_rss_convert_gib', '-')} | {r.get('peak_rss_process_gib', r.get('ru_maxrss_gib', '-'))} | "
            f"{r.get('convert_seconds', '-')} | "
            f"{r.get('file_mib', '-')} | {psnr} | {cos} | {note.replace('|', '/')[:300]} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", help="comma-separated [source/]unet:precision[:lw|:no-lw]; default: all")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/tflite_conversion")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bksdm-tflite-bench"))
    parser.add_argument("--lock", default=LOCK, help=f"flock file around each conversion ('' for none; default {LOCK})")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return task_main(_child, args.child)

    scenarios = [parse_scenario(s) for s in args.scenarios.split(",")] if args.scenarios else DEFAULT_SCENARIOS
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "results.json"
    previous = json.loads(json_path.read_text())["rows"] if json_path.exists() else []
    info = machine_info()
    rows = {r["scenario"]: r for r in previous}
    for s in scenarios:
        print(f"[tflite-bench] {scenario_name(s)} ...", flush=True)
        row = run_scenario(s, args.work, args.lock)
        print(f"[tflite-bench] {scenario_name(s)}: {row.get('status')} {row.get('error', '')[:200]}", flush=True)
        rows[scenario_name(s)] = row
        ordered = list(rows.values())
        json_path.write_text(json.dumps({"machine": info, "command": sys.argv, "rows": ordered}, indent=2))
        write_markdown(ordered, info, args.out / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
