"""Core ML conversion of the full-size BK-SDM-Tiny U-Net (SD-v1.4 teacher): time, peak RAM, sizes.

Each stage runs in its own child process under ``flock /tmp/bksdm-heavy.lock`` (other
full-size jobs share the machine; two at once would run out of memory), so its peak RSS
is its own:

1. ``fp16``: build the student from ``builtin:sd-v1.4`` (seeded random weights), trace,
   convert to an fp16 mlprogram, read the package back (stored precision, weight PSNR).
2. ``palettize6`` (and any other ``--precisions``): recompress the fp16 package with 6-bit
   k-means palettization (no second PyTorch conversion), read it back.

Writes ``benchmarks/results/coreml_conversion/results.json`` and ``results.md``.

    python benchmarks/coreml_conversion.py [--precisions fp16,palettize6] [--attention original]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "coreml_conversion"
LOCK = "/tmp/bksdm-heavy.lock"
WORK = Path(os.environ.get("BKSDM_BENCH_WORK", "/tmp/bksdm_coreml_bench"))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _build_student(variant: str):
    from bksdm_edge.loading import load_model
    from bksdm_edge.student import build_student

    teacher = load_model("builtin:sd-v1.4", components=["unet"]).unet
    student, _report = build_student(teacher, variant)
    del teacher
    return student.eval()


def child(stage: str, variant: str, attention: str, out: Path) -> dict:
    """One stage in this process; returns its measurements."""
    import torch

    from bksdm_edge.export import coreml
    from bksdm_edge.export.components import UNetWrapper

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    unet = _build_student(variant)
    module = UNetWrapper(unet).eval()
    params = sum(p.numel() for p in unet.parameters())
    t_build = time.perf_counter() - t0
    options = {"component": "unet", "attention": attention}
    fp16_dir = WORK / "fp16"
    t1 = time.perf_counter()
    if stage == "fp16":
        g = torch.Generator().manual_seed(0)
        cfg = unet.config
        example = {
            "sample": torch.randn(2, cfg.in_channels, 64, 64, generator=g),
            "timestep": torch.tensor([999.0, 999.0]),
            "encoder_hidden_states": torch.randn(2, 77, cfg.cross_attention_dim, generator=g),
        }
        converted = coreml.convert(module, example, ["out_sample"], fp16_dir, "fp16", options=options)
    else:
        fp16 = json.loads((WORK / "fp16.json").read_text())
        from bksdm_edge.export.base import ConvertedModel

        base = ConvertedModel(path=Path(fp16["path"]), files=[], inputs=[], outputs=[], precision="fp16",
                              extra=fp16["extra"])
        converted = coreml.recompress(base, module, stage, WORK / stage, options={})
    seconds = time.perf_counter() - t1
    problems = coreml.static_check(converted)
    row = {
        "model": f"builtin:sd-v1.4 -> {variant}",
        "component": "unet",
        "precision": stage,
        "attention": attention,
        "params": params,
        "build_s": round(t_build, 1),
        "convert_s": round(seconds, 1),
        "peak_rss_mb": round(_peak_rss_mb()),
        "package_mb": round(converted.extra["stored_weights"]["package_bytes"] / 2**20, 1),
        "weights_file_mb": round(converted.extra["stored_weights"]["weights_file_bytes"] / 2**20, 1),
        "stored_precision": converted.extra["stored_weights"]["stored_precision"],
        "compressed_fraction": round(converted.extra["stored_weights"]["compressed_fraction"], 4),
        "weight_psnr": converted.extra["weight_psnr"],
        "static_check": problems or "passed",
        "inputs": [t.to_json() for t in converted.inputs],
        "outputs": [t.to_json() for t in converted.outputs],
    }
    if stage == "fp16":
        (WORK / "fp16.json").write_text(json.dumps({"path": str(converted.path), "extra": converted.extra},
                                                   default=str))
    out.write_text(json.dumps(row, indent=2, default=str))
    return row


def machine_info() -> dict:
    import coremltools
    import numpy
    import torch

    mem = None
    try:
        mem = int(open("/proc/meminfo").read().split("MemTotal:")[1].split()[0]) // 1024
    except (OSError, IndexError):
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "mem_total_mb": mem,
        "load_avg_at_start": os.getloadavg(),
        "versions": {"torch": torch.__version__, "coremltools": coremltools.__version__, "numpy": numpy.__version__},
    }


def write_results(rows: list[dict], info: dict, argv: list[str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(["python", "benchmarks/coreml_conversion.py", *argv]), "machine": info, "rows": rows}
    (RESULTS / "results.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    lines = [
        "# Core ML conversion: full-size BK-SDM-Tiny U-Net (SD-v1.4 teacher, seeded random weights)",
        "",
        f"Machine: {info['platform']}, {info['cpu_count']} CPUs (shared), {info['mem_total_mb']} MB RAM; "
        f"torch {info['versions']['torch']}, coremltools {info['versions']['coremltools']}, "
        f"numpy {info['versions']['numpy']}. Load average at start: {info['load_avg_at_start']}.",
        "Each stage ran alone in a child process under `flock /tmp/bksdm-heavy.lock`; palettize6 recompresses the "
        "fp16 package (no second PyTorch conversion). Times include reading the package back and the weight PSNR.",
        "",
        "| precision | status | convert s | peak RSS MB | package MB | weight.bin MB | stored | weight PSNR min / median dB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['precision']} | FAILED: {r['error'][:120]} | | | | | | |")
            continue
        p = r["weight_psnr"]
        status = "ok" if r["static_check"] == "passed" else "static check: " + "; ".join(r["static_check"])
        lines.append(
            f"| {r['precision']} | {status} | {r['convert_s']} | {r['peak_rss_mb']} | {r['package_mb']} | "
            f"{r['weights_file_mb']} | {r['stored_precision']} ({r['compressed_fraction']:.0%}) | "
            f"{p.get('min_db', float('nan')):.1f} / {p.get('median_db', float('nan')):.1f} |"
        )
    lines += ["", f"U-Net parameters: {rows[0].get('params', '?'):,}" if rows and "params" in rows[0] else "",
              "Weights are random (seeded), so the PSNR shows quantization error on Gaussian-like weights, "
              "not on trained ones.", ""]
    (RESULTS / "results.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", default="fp16,palettize6", help="comma list; fp16 always runs first")
    parser.add_argument("--variant", default="bk-tiny")
    parser.add_argument("--attention", default="original", choices=["original", "split-einsum"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.variant, args.attention, Path(args.out))
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    stages = ["fp16"] + [p for p in args.precisions.split(",") if p and p != "fp16"]
    rows = []
    for stage in stages:
        out = WORK / f"{stage}.row.json"
        out.unlink(missing_ok=True)
        cmd = ["flock", LOCK, sys.executable, __file__, "--child", stage, "--variant", args.variant,
               "--attention", args.attention, "--out", str(out)]
        env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout)[-2000:]
            rows.append({"precision": stage, "error": f"exit {proc.returncode}: {tail.strip().splitlines()[-1:]}"})
            print(f"{stage}: FAILED (exit {proc.returncode})\n{tail}", file=sys.stderr)
            if stage == "fp16":
                break
            continue
        row = json.loads(out.read_text())
        row["wall_s_including_lock_wait"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        print(f"{stage}: {row['convert_s']} s, peak {row['peak_rss_mb']} MB, {row['package_mb']} MB")
    write_results(rows, machine_info(), argv if argv is not None else sys.argv[1:])
    print(f"wrote {RESULTS / 'results.md'}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
