"""Why TFLite w8a8 calibrates the VAE decoder on the latent prior too: decoder recipes side by side.

The decoder of one model is converted to fp32 once; each recipe (ai-edge-quantizer) is applied to that
flatbuffer, calibrated on one of three sample sets, and compared with PyTorch on the export's own
validation sets (seeded prior latents ``seeded:N`` and the recorded trajectory's final latent):

- ``cal``: the final latents of the calibration runs (what w8a8 used before issue 18);
- ``prior``: draws from the VAE's latent prior, N(0, 1) / scaling_factor (``inputs.latent_prior_samples``);
- ``cal+prior``: both (what ``export_bundle`` feeds the decoder now).

    python benchmarks/tflite_w8a8_decoder.py --model builtin:mini-sd [--unet STUDENT] [--size 128] [--out DIR]

Results: ``benchmarks/results/tflite_w8a8/decoder_recipes_<model>.json`` and ``.md`` (one row per recipe:
PSNR/cosine per set, CPU seconds per decode with 2 threads).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bksdm_edge.bench.machine import machine_info, machine_markdown  # noqa: E402

# recipe name -> (weight bits, activation bits or None for no static activations, keep GroupNorm float, sample set)
RECIPES = {
    "w8a8 / cal": ("static", 8, False, "cal"),
    "w8a8 / prior": ("static", 8, False, "prior"),
    "w8a8 / cal+prior (shipped)": ("static", 8, False, "cal+prior"),
    "w8a8, GroupNorm float / cal": ("static", 8, True, "cal"),
    "w8a8, GroupNorm float / cal+prior": ("static", 8, True, "cal+prior"),
    "w8a16 / cal": ("static", 16, False, "cal"),
    "w8a16 / cal+prior": ("static", 16, False, "cal+prior"),
    "int8 weight-only": ("weight_only", None, False, None),
}


def _recipe(kind: str, abits: int | None, groupnorm_float: bool):
    from ai_edge_quantizer import recipe, recipe_manager, qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    if kind == "weight_only":
        return recipe.weight_only_wi8_afp32()
    rm = recipe_manager.RecipeManager()
    rm.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                         activation_num_bits=abits, weight_num_bits=8, algorithm_key=AlgorithmName.MIN_MAX_UNIFORM_QUANT)
    if groupnorm_float:
        rm.add_quantization_config(regex=".*GroupNorm.*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                   op_config=None, algorithm_key=AlgorithmName.NO_QUANTIZE)
    return rm.get_quantization_recipe()


def run(model_src: str, unet: str | None, size: int, prompts: int) -> dict:
    import numpy as np
    import torch
    from ai_edge_quantizer import calibrator, quantizer

    from bksdm_edge.export import tflite
    from bksdm_edge.export.components import COMPONENTS
    from bksdm_edge.export.inputs import prepare_inputs
    from bksdm_edge.export.request import Calibration, ShapeConfig, Validation
    from bksdm_edge.export.tensor_io import from_runner_outputs, to_runner_inputs
    from bksdm_edge.loading import load_model
    from bksdm_edge.metrics import cosine, psnr

    model = load_model(model_src, unet=unet)
    shape = ShapeConfig(height=size, width=size)
    prepared = prepare_inputs(model, {"vae_decoder": shape}, validation=Validation(),
                              calibration=Calibration(count=prompts), calibrate=["vae_decoder"], seeds=(0, 1, 2))
    inputs = prepared["vae_decoder"]
    half = len(inputs.calibration) // 2  # recorded final latents first, then as many prior draws
    feeds = {"cal": inputs.calibration[:half], "prior": inputs.calibration[half:], "cal+prior": inputs.calibration}
    # How far the calibration runs' final latents sit from the prior (the seeded sets are prior draws).
    scale = {k: round(float(np.std([x["latent_sample"] for x in v])), 3) for k, v in feeds.items() if k != "cal+prior"}
    spec = COMPONENTS["vae_decoder"]
    module = spec.module(model)
    with torch.no_grad():
        refs = {s.name: module(torch.from_numpy(s.inputs["latent_sample"])).numpy() for s in inputs.validation}
    rows = []
    with tempfile.TemporaryDirectory() as work:
        fp32 = tflite.convert(module, inputs.example, spec.output_names, Path(work) / "fp32", "fp32").path
        for name, (kind, abits, gn_float, feed) in RECIPES.items():
            q = quantizer.Quantizer(str(fp32), _recipe(kind, abits, gn_float))
            t0 = time.process_time()
            qsvs = None
            if q.need_calibration:
                calib = calibrator.Calibrator(q._float_model_buffer, num_threads=2,
                                              mode=calibrator.CalibrationMode.CALIBRATION_PROFILER_BASED,
                                              qsv_update_func=tflite._union_min_max)
                signature = next(iter(calib._tfl_interpreter.get_signature_list()))
                calib.calibrate({signature: feeds[feed]}, q._recipe_manager)
                qsvs = calib.get_model_qsvs()
            out = Path(work) / "q.tflite"
            with tflite._quantize_large_conv_weights():
                q.quantize(qsvs, serialize_to_path=str(out), enable_progress_report=False)
            ins, outs = tflite.describe(out, spec.input_names, spec.output_names)
            runner = tflite.load_runner(out, threads=2)
            row = {"recipe": name, "calibration": feed, "samples": len(feeds[feed]) if feed else 0,
                   "quantize_cpu_s": round(time.process_time() - t0, 1), "sets": {}}
            t1 = time.process_time()
            for s in inputs.validation:
                y = from_runner_outputs(outs, runner(to_runner_inputs(ins, [s.inputs["latent_sample"]])))[0]
                row["sets"][s.name] = {"psnr_db": round(psnr(refs[s.name], y), 1), "cosine": round(cosine(refs[s.name], y), 4)}
            row["decode_cpu_s"] = round((time.process_time() - t1) / len(inputs.validation), 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
            out.unlink()
    return {"model": model_src, "unet": unet, "size": size, "calibration_prompts": prompts, "latent_std": scale,
            "rows": rows}


def write_report(result: dict, info: dict, path: Path) -> None:
    sets = list(result["rows"][0]["sets"])
    lines = [f"# TFLite VAE-decoder recipes: {result['model']} at {result['size']} px", "", machine_markdown(info), "",
             f"Command: `python benchmarks/tflite_w8a8_decoder.py --model {result['model']} --size {result['size']}`. "
             "PSNR dB / cosine against PyTorch on the export's validation sets (seeded: prior latents; trajectory: "
             "the recorded run's final latent). Decode CPU s: one decode, 2 threads.", "",
             f"Standard deviation of the decoder's calibration latents: {result['latent_std']} (cal: the calibration "
             "runs' final latents; prior: N(0, 1) / scaling_factor, as the seeded sets).", "",
             "| recipe | calibrated on | " + " | ".join(sets) + " | decode CPU s |",
             "|---|---|" + "---:|" * (len(sets) + 1)]
    for r in result["rows"]:
        cells = [f"{r['sets'][s]['psnr_db']} / {r['sets'][s]['cosine']}" for s in sets]
        lines.append(f"| {r['recipe']} | {r['calibration'] or '-'} ({r['samples']}) | " + " | ".join(cells)
                     + f" | {r['decode_cpu_s']} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:mini-sd")
    parser.add_argument("--unet", default=None)
    parser.add_argument("--size", type=int, default=None, help="image size in px (default: the builtin's)")
    parser.add_argument("--prompts", type=int, default=4, help="calibration prompts (the export's default: 4)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/tflite_w8a8")
    args = parser.parse_args(argv)
    if args.size is None:
        from bksdm_edge.builtins import BUILTINS

        args.size = BUILTINS[args.model.split(":", 1)[1]].default_resolution
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.model, args.unet, args.size, args.prompts)
    info = machine_info()
    stem = "decoder_recipes_" + args.model.split(":", 1)[-1].replace("/", "_")
    (args.out / f"{stem}.json").write_text(json.dumps({"machine": info, **result}, indent=1))
    write_report(result, info, args.out / f"{stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
