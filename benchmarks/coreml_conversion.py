"""Core ML conversion of the full-size BK-SDM-Tiny U-Net (SD-v1.4 teacher): time, peak RAM, sizes.

Each stage is a bench ``Scenario`` (model, component ``unet``, backend ``coreml``, precision) run in its own
child process (``bksdm_edge.bench.child``) under ``flock /tmp/bksdm-heavy.lock`` (other full-size jobs share
the machine; two at once would run out of memory), so its peak RSS is its own:

1. ``fp16``: build the student from ``builtin:sd-v1.4`` (seeded random weights), trace,
   convert to an fp16 mlprogram, read the package back (stored precision, weight PSNR).
2. ``palettize6`` (and any other ``--precisions``): recompress the fp16 package with 6-bit
   k-means palettization (no second PyTorch conversion), read it back.

Writes ``benchmarks/results/coreml_conversion/results.json`` and ``results.md``.

    python benchmarks/coreml_conversion.py [--precisions fp16,palettize6] [--attention original]
    python benchmarks/coreml_conversion.py --source builtin:tiny-sd --lock "" --out /tmp/cm --work /tmp/cm/work
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bksdm_edge.bench.child import child_env, run_task, task_main  # noqa: E402
from bksdm_edge.bench.machine import machine_info, machine_markdown  # noqa: E402
from bksdm_edge.bench.scenario import Scenario  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "coreml_conversion"
LOCK = "/tmp/bksdm-heavy.lock"
WORK = Path(os.environ.get("BKSDM_BENCH_WORK", "/tmp/bksdm_coreml_bench"))


def scenarios(source: str, variant: str, attention: str, precisions: list[str]) -> list[Scenario]:
    """fp16 first (the palettized stages recompress its package), then the other precisions; batch 2 (CFG) at
    the built-in source's default resolution (the U-Net's own sample size)."""
    from bksdm_edge.builtins import BUILTINS

    base = Scenario(model=variant, component="unet", backend="coreml", precision="fp16", source=source, batch=2,
                    resolution=BUILTINS[source.split(":", 1)[1]].default_resolution,
                    options={"export": {"component": "unet", "attention": attention}}, variant=attention)
    return [replace(base, precision=p) for p in ["fp16"] + [p for p in precisions if p and p != "fp16"]]


def child(task: dict) -> dict:
    """One stage in this process (the child side of ``run_task``); returns its measurements."""
    import torch

    from bksdm_edge.bench.backends import load_scenario_model
    from bksdm_edge.export.components import UNetWrapper
    from bksdm_edge.export.coreml.check import static_check
    from bksdm_edge.export.coreml.convert import convert, recompress

    s, work = Scenario(**task["scenario"]), Path(task["work"])
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    unet = load_scenario_model(s, ("unet",)).unet.eval()
    module = UNetWrapper(unet).eval()
    params = sum(p.numel() for p in unet.parameters())
    t_build = time.perf_counter() - t0
    options = s.options["export"]
    fp16_dir = work / "fp16"
    t1 = time.perf_counter()
    if s.precision == "fp16":
        g = torch.Generator().manual_seed(0)
        cfg = unet.config
        example = {
            "sample": torch.randn(s.batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g),
            "timestep": torch.full((s.batch,), 999.0),
            "encoder_hidden_states": torch.randn(s.batch, 77, cfg.cross_attention_dim, generator=g),
        }
        converted = convert(module, example, ["out_sample"], fp16_dir, "fp16", options=options)
    else:
        fp16 = json.loads((work / "fp16.json").read_text())
        from bksdm_edge.export.base import ConvertedModel

        base = ConvertedModel(path=Path(fp16["path"]), files=[], inputs=[], outputs=[], precision="fp16",
                              extra=fp16["extra"])
        converted = recompress(base, module, s.precision, work / s.precision, options={})
    seconds = time.perf_counter() - t1
    problems = static_check(converted)
    stored = converted.extra["stored_weights"]
    row = {
        "model": f"{s.source} -> {s.model}",
        "component": s.component,
        "precision": s.precision,
        "attention": options["attention"],
        "params": params,
        "build_s": round(t_build, 1),
        "convert_s": round(seconds, 1),
        "package_mb": round(stored["package_bytes"] / 2**20, 1),
        "weights_file_mb": round(stored["weights_file_bytes"] / 2**20, 1),
        "stored_precision": stored["stored_precision"],
        "compressed_fraction": round(stored["compressed_fraction"], 4),
        "weight_psnr": converted.extra["weight_psnr"],
        "static_check": problems or "passed",
        "inputs": [t.to_json() for t in converted.inputs],
        "outputs": [t.to_json() for t in converted.outputs],
    }
    if s.precision == "fp16":
        (work / "fp16.json").write_text(json.dumps({"path": str(converted.path), "extra": converted.extra},
                                                   default=str))
    return row


def run_stage(s: Scenario, work: Path, lock: str) -> dict:
    """Run one stage in a child process (under ``lock`` when given); a failure becomes a row with its error."""
    argv = (["flock", lock] if lock else []) + [sys.executable, __file__, "--child"]
    result, ran = run_task(argv, {"scenario": s.to_json(), "work": str(work)}, env=child_env(TQDM_DISABLE="1"))
    if not result["ok"]:
        print(f"{s.precision}: FAILED: {result['error']}\n{result['log_tail'][-2000:]}", file=sys.stderr)
        return {"precision": s.precision, "error": result["error"]}
    row = {k: v for k, v in result.items() if k not in ("ok", "log_tail")}
    row["peak_rss_mb"] = round(row["peak_rss_mb"])
    row["wall_s_including_lock_wait"] = round(ran.wall_s, 1)
    return row


def write_results(rows: list[dict], info: dict, argv: list[str], out: Path, lock: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(["python", "benchmarks/coreml_conversion.py", *argv]), "machine": info, "rows": rows}
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    model = next((r["model"] for r in rows if "model" in r), "?")
    lines = [
        f"# Core ML conversion: {model} U-Net (seeded random weights)",
        "",
        machine_markdown(info),
        "",
        f"Each stage ran alone in a child process{f' under `flock {lock}`' if lock else ''}; palettize6 recompresses the "
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
    (out / "results.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", default="fp16,palettize6", help="comma list; fp16 always runs first")
    parser.add_argument("--variant", default="bk-tiny", help="teacher or a BK-SDM variant (default bk-tiny)")
    parser.add_argument("--source", default="builtin:sd-v1.4", help="teacher pipeline (default builtin:sd-v1.4)")
    parser.add_argument("--attention", default="original", choices=["original", "split-einsum"])
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    parser.add_argument("--work", type=Path, default=WORK, help=f"packages are written here (default {WORK})")
    parser.add_argument("--lock", default=LOCK, help=f"flock file around each stage ('' for none; default {LOCK})")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return task_main(child, args.child)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in scenarios(args.source, args.variant, args.attention, args.precisions.split(",")):
        row = run_stage(s, args.work, args.lock)
        rows.append(row)
        if "error" in row:
            if s.precision == "fp16":
                break
            continue
        print(f"{s.precision}: {row['convert_s']} s, peak {row['peak_rss_mb']} MB, {row['package_mb']} MB")
    write_results(rows, machine_info(), argv if argv is not None else sys.argv[1:], args.out, args.lock)
    print(f"wrote {args.out / 'results.md'}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
