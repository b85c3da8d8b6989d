"""Where an OpenVINO U-Net step spends its time: per layer type, per U-Net block and the slowest nodes.

Thin wrapper over ``bksdm_edge.export.openvino`` (``load_runner(profile=True)``, ``node_times``): compiles an IR for
the CPU with per-node timing, runs it on recorded inputs (warm-up first) and prints the split of the last call.
The cpu-full notes' "where the time goes" come from it, on the benchmark cache's IRs:

    python benchmarks/openvino_profile.py ~/.cache/bksdm-edge/bench/builtin_sd-v1.4/bk-tiny/unet/openvino-int8/512px-b1 \\
        --inference-precision bf16 --threads 2

Time it on a quiet machine (``/work/bin/timed-run`` on a shared one): like every timing, only ratios within one
sitting count.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bksdm_edge.cli import add_console_flags, run_entry_point  # noqa: E402
from bksdm_edge.errors import InputError  # noqa: E402


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ir", type=Path, help="openvino_model.xml, or the folder that holds it (a benchmark cache entry)")
    p.add_argument("--inputs", type=Path, help="feeds as .npz (default: inputs.npz beside the IR, which the "
                                               "benchmark cache records)")
    p.add_argument("--inference-precision", default="f32", choices=("f32", "bf16"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=8, help="slowest nodes to list")
    p.add_argument("--json", type=Path, help="also write every node's time here")
    return add_console_flags(p).parse_args(argv)


def run(a) -> int:
    import numpy as np

    from bksdm_edge.export import openvino as ov_backend

    xml = a.ir / "openvino_model.xml" if a.ir.is_dir() else a.ir
    inputs = a.inputs or xml.parent / "inputs.npz"
    if not xml.is_file():
        raise InputError(f"{xml}: no OpenVINO IR there; pass openvino_model.xml or its folder")
    if not inputs.is_file():
        raise InputError(f"{inputs}: no recorded inputs; pass --inputs FEEDS.npz (one array per model input)")
    with np.load(inputs) as z:
        feeds = {k: z[k] for k in z.files}
    runner = ov_backend.load_runner(xml, threads=a.threads, inference_precision=a.inference_precision, profile=True)
    for _ in range(max(0, a.warmup) + 1):
        runner(feeds)
    nodes = ov_backend.node_times(runner)
    total = sum(n["seconds"] for n in nodes)
    print(f"{xml}: {a.inference_precision}, {a.threads} threads, {total:.3f} s in {len(nodes)} executed nodes")
    for title, key in (("per layer type", "type"), ("per U-Net block", "block")):
        print(f"  {title}:")
        for name, sec in ov_backend.time_by(nodes, key).items():
            print(f"    {name:34s} {sec:7.3f} s {100 * sec / total:5.1f} %")
    print(f"  slowest {a.top} nodes:")
    for n in nodes[:a.top]:
        print(f"    {n['seconds']:7.4f} s  {n['type']:14s} {n['kernel']:28s} {n['name']}")
    if a.json:
        a.json.write_text(json.dumps({"ir": str(xml), "inference_precision": a.inference_precision,
                                      "threads": a.threads, "nodes": nodes}, indent=1))
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry_point(sys.argv[1:], parse, run))
