"""How an ONNX bundle's U-Net should take classifier-free guidance's two rows: a batch axis, static batch 2,
or two batch-1 calls. The evidence behind the ONNX format's default U-Net shape (docs/bundle_format.md).

Every SD pipeline with guidance (diffusers, optimum's ``ORTStableDiffusionPipeline``, ours) sends the U-Net a
batch of 2 per step (unconditional + conditional rows). A static batch-1 U-Net cannot take it in optimum's
pipeline; our runtime would then split it into two calls. The study exports one U-Net three ways with the ONNX
back-end's own ``convert`` (fp32):

- ``static-b1``: batch 1 (one CFG step = two calls),
- ``static-b2``: batch 2 (one call),
- ``batch-axis``: a dynamic batch axis (called with batch 2 for a CFG step, and with batch 1 twice),

and times one CFG step of each, interleaved in one process (rounds alternate the order), so that load drift on
a shared machine hits every variant alike; a model whose three sessions do not fit in memory together (full-size
SD-v1.4 fp32 on 24 GB) is timed one variant at a time. ``prepare`` (exports, heavy) and ``measure`` (timing) are separate
calls, so that only the timing needs an idle machine.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

# variant -> (export batch, dynamic batch axis)
VARIANTS = {"static-b1": (1, False), "static-b2": (2, False), "batch-axis": (2, True)}
# What one CFG step costs with each variant: (variant, calls, batch per call).
CFG_STEP = {"static-b1 x2": ("static-b1", 2, 1), "static-b2": ("static-b2", 1, 2),
            "batch-axis b2": ("batch-axis", 1, 2), "batch-axis b1 x2": ("batch-axis", 2, 1)}
BATCH_AXES = {"sample": {0: "batch"}, "timestep": {0: "batch"}, "encoder_hidden_states": {0: "batch"}}


@dataclass(frozen=True)
class StudyConfig:
    """One U-Net batch study.

    Args:
        source: teacher model source (``builtin:sd-v1.4``: full size, random weights).
        models: ``teacher`` and/or BK-SDM variant / plan names built from it.
        resolution: image size in pixels (512: the U-Net sees 64x64 latents).
        threads: ONNX Runtime intra-op threads.
        repeats: timed rounds (each round runs every CFG-step variant once, order alternating).
        warmup: untimed rounds first.
    """

    source: str = "builtin:sd-v1.4"
    models: tuple[str, ...] = ("bk-tiny", "teacher")
    resolution: int = 512
    threads: int = 2
    repeats: int = 3
    warmup: int = 1


def _unet_module(source: str, model_name: str):
    from ..export.components import COMPONENTS
    from ..loading import load_model
    from ..student import build_student

    model = load_model(source, components=("unet", "vae"))
    if model_name != "teacher":
        model.unet, _ = build_student(model.unet, model_name)
    return model, COMPONENTS["unet"]


def prepare(config: StudyConfig, cache: Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export every model's U-Net as each variant under ``cache/<model>/<variant>/`` (skips existing exports)."""
    from ..export.onnx import MODEL_FILE, convert
    from ..export.request import ShapeConfig

    done = {}
    for name in config.models:
        model = spec = None
        for variant, (batch, dynamic) in VARIANTS.items():
            out = cache / name / variant
            if (out / MODEL_FILE).exists() and (out / "export.json").exists():
                done[f"{name}/{variant}"] = json.loads((out / "export.json").read_text())
                continue
            if model is None:
                model, spec = _unet_module(config.source, name)
            shape = ShapeConfig(height=config.resolution, width=config.resolution, batch=batch)
            log(f"exporting {name} U-Net as {variant} ({config.resolution} px, batch {batch}"
                f"{', batch axis' if dynamic else ''})")
            started = time.perf_counter()
            converted = convert(spec.module(model), spec.example_inputs(model, shape), spec.output_names, out, "fp32",
                                options={"dynamic_axes": BATCH_AXES} if dynamic else {})
            record = {"model": name, "variant": variant, "batch": batch, "dynamic": dynamic,
                      "export_s": round(time.perf_counter() - started, 1),
                      "inputs": [t.to_json() for t in converted.inputs],
                      "bytes": sum(f.stat().st_size for f in converted.files)}
            (out / "export.json").write_text(json.dumps(record, indent=2))
            done[f"{name}/{variant}"] = record
        del model
    return done


def _feeds(record: dict, batch: int, latent_side: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    shapes = {t["name"]: t["shape"] for t in record["inputs"]}
    channels, context = shapes["sample"][1], shapes["encoder_hidden_states"][2]
    return {"sample": rng.standard_normal((batch, channels, latent_side, latent_side)).astype(np.float32),
            "timestep": np.full((batch,), 500, dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((batch, 77, context)).astype(np.float32)}


def fits_together(records: dict[str, dict], factor: float = 2.5) -> bool:
    """Whether every variant's session fits in the memory available now (weights x ``factor``: ONNX Runtime keeps
    the initializers and pre-packed copies of the convolution/matmul weights, plus activations)."""
    import psutil

    return factor * sum(r["bytes"] for r in records.values()) < psutil.virtual_memory().available


def measure(config: StudyConfig, cache: Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time one CFG step of every variant, interleaved; returns the results document (machine included)."""
    from ..export.onnx import MODEL_FILE, load_runner
    from .machine import machine_info

    machine_start = machine_info()
    side = config.resolution // 8
    rows = []
    for name in config.models:
        records = {v: json.loads((cache / name / v / "export.json").read_text()) for v in VARIANTS}
        rng = np.random.default_rng(0)
        feeds = {b: _feeds(records["static-b1"], b, side, rng) for b in (1, 2)}
        split = [{k: v[i : i + 1] for k, v in feeds[2].items()} for i in range(2)]
        # Three full-size SD-v1.4 fp32 sessions (3.4 GB of weights each, plus ONNX Runtime's pre-packed copies) do
        # not fit in 24 GB together: such a model's variants are loaded and timed one at a time instead.
        together = fits_together(records)
        groups = [list(VARIANTS)] if together else [[v] for v in VARIANTS]
        times: dict[str, list[float]] = {label: [] for label in CFG_STEP}
        outputs: dict[str, np.ndarray] = {}
        for group in groups:
            runners = {v: load_runner(cache / name / v / MODEL_FILE, threads=config.threads) for v in group}

            def step(label: str) -> float:
                variant, calls, batch = CFG_STEP[label]
                run = runners[variant]
                started = time.perf_counter()
                if calls == 1:
                    run(feeds[2])
                else:
                    for part in split:
                        run(part)
                return time.perf_counter() - started

            labels = [label for label in CFG_STEP if CFG_STEP[label][0] in group]
            for _ in range(config.warmup):
                for label in labels:
                    step(label)
            for r in range(config.repeats):
                for label in labels[:: 1 if r % 2 == 0 else -1]:
                    times[label].append(step(label))
            # the same outputs whichever way the step is run (batch-1 rows vs the batch-2 call)
            for v in group:
                outputs[v] = (np.concatenate([runners[v](p)["out_sample"] for p in split]) if v == "static-b1"
                              else runners[v](feeds[2])["out_sample"])
            del runners, step
            gc.collect()
        ref = outputs["static-b2"]
        agree = float(max(np.abs(ref - outputs["static-b1"]).max(), np.abs(ref - outputs["batch-axis"]).max()))
        base = float(np.median(times["static-b1 x2"]))
        for label in CFG_STEP:
            variant, calls, batch = CFG_STEP[label]
            median = float(np.median(times[label]))
            rows.append({"model": name, "cfg_step": label, "variant": variant, "calls": calls, "batch": batch,
                         "median_s": round(median, 4), "times_s": [round(t, 4) for t in times[label]],
                         "vs_two_batch1_calls": round(median / base, 3), "max_abs_diff_vs_static_b2": agree,
                         "model_bytes": records[variant]["bytes"],
                         "rounds": "interleaved" if together else "one variant loaded at a time"})
            log(f"  {name} {label}: {median:.2f} s per CFG step ({median / base:.2f}x of two batch-1 calls)")
    return {"name": "unet_batch", "config": asdict(config), "rows": rows,
            "machine": {"start": machine_start, "end": machine_info()},
            "protocol": "one CFG step (2 U-Net rows) per variant, rounds interleaved with alternating order (a model "
                        "whose three sessions do not fit in memory together: one variant loaded at a time, its "
                        "rounds back to back, column rounds); "
                        "median over rounds; ONNX Runtime CPU fp32, random weights"}


def write_results(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, results.csv, report.md and a bar plot of the per-step medians."""
    import csv

    from .machine import machine_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    fields = ["model", "cfg_step", "variant", "calls", "batch", "median_s", "vs_two_batch1_calls", "model_bytes"]
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(doc["rows"])
    cfg = doc["config"]
    lines = [f"# U-Net batch for classifier-free guidance ({cfg['source']}, {cfg['resolution']} px, ONNX Runtime fp32,"
             f" {cfg['threads']} threads)", "", doc["protocol"] + ".", "",
             "| model | one CFG step as | calls x batch | median s | vs two batch-1 calls | rounds |",
             "|---|---|---|---:|---:|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['model']} | {r['cfg_step']} | {r['calls']} x {r['batch']} | {r['median_s']:.3f} | "
                     f"{r['vs_two_batch1_calls']:.3f} | {r.get('rounds', 'interleaved')} |")
    lines += ["", machine_markdown(doc["machine"]["start"], (doc["machine"]["end"] or {}).get("load_average")), ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    paths = [out_dir / "results.json", out_dir / "results.csv", out_dir / "report.md"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    models = list(dict.fromkeys(r["model"] for r in doc["rows"]))
    labels = list(CFG_STEP)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        values = [next(r["median_s"] for r in doc["rows"] if r["model"] == m and r["cfg_step"] == label) for m in models]
        ax.bar(np.arange(len(models)) + i * width, values, width, label=label)
    ax.set_xticks(np.arange(len(models)) + width * (len(labels) - 1) / 2, models)
    ax.set_ylabel("seconds per CFG step")
    ax.set_title(f"U-Net CFG step, {cfg['resolution']} px, ORT fp32, {cfg['threads']} threads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "unet_batch.png", dpi=120)
    plt.close(fig)
    return paths + [out_dir / "unet_batch.png"]
