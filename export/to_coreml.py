"""Export a Stable Diffusion pipeline (or a BK-SDM student U-Net) to Core ML, laid out for Apple's Swift package.

    python export/to_coreml.py --model builtin:sd-v1.4 --unet students/bk-tiny \\
        --precision palettize6 --attention split-einsum --compute-units cpu-and-ne --out bundles/bk-tiny-coreml

The bundle's Resources/ folder holds TextEncoder, Unet (or UnetChunk1/UnetChunk2), VAEDecoder
(and VAEEncoder) .mlpackage files plus vocab.json and merges.txt. On a Mac, compile them once:

    for p in OUT/Resources/*.mlpackage; do xcrun coremlcompiler compile "$p" OUT/Resources/; done

then run Apple's CLI: swift run StableDiffusionSample "a photo of a cat" --resource-path OUT/Resources
--compute-units cpuAndNeuralEngine --output-path out/. Details and the benchmark recipe: docs/coreml.md.
Core ML models run only on macOS/iOS; on Linux the export is checked statically (saved spec, stored
weight precision, PSNR of the stored weights against PyTorch) and the report says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRECISIONS = {
    "fp16": "float16 weights and compute (Apple's default; runs on iOS 16 / macOS 13)",
    "int8": "int8 weights, linear symmetric per output channel (about 1/2 of fp16); iOS 16 / macOS 13",
    "palettize8": "8-bit k-means palettized weights (about 1/2 of fp16); needs iOS 17 / macOS 14",
    "palettize6": "6-bit k-means palettized weights (about 3/8 of fp16, Apple's usual choice for iPhone); "
                  "needs iOS 17 / macOS 14",
    "palettize4": "4-bit k-means palettized weights (about 1/4 of fp16; visible quality loss); needs iOS 17 / macOS 14",
}


def build_parser() -> argparse.ArgumentParser:
    from bksdm_edge.export.coreml import COMPUTE_UNITS, DEPLOYMENT_TARGETS
    from bksdm_edge.export.coreml_bundle import component_list

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:mini-sd",
                   help="model source: builtin:NAME (random weights, no download; e.g. builtin:sd-v1.4), a local "
                        "diffusers pipeline folder, or a hub id in your Hugging Face cache (default: builtin:mini-sd)")
    p.add_argument("--unet", type=Path,
                   help="student U-Net folder written by `bksdm-edge build` or `distill` (BK-SDM Base/Small/Tiny), "
                        "replacing the model's U-Net; a missing mid block (Small, Tiny) is fine")
    p.add_argument("--precision", default="fp16", choices=list(PRECISIONS),
                   help="how weights are stored; compute is always fp16. "
                        + "; ".join(f"{k}: {v}" for k, v in PRECISIONS.items()) + " (default: fp16)")
    p.add_argument("--attention", default="original", choices=["original", "split-einsum"],
                   help="original: diffusers' attention, best on the GPU (--compute-units cpu-and-gpu). "
                        "split-einsum: Apple's Neural Engine layout (channels-first (B, C, 1, S) tensors, 1x1 convs, "
                        "one einsum per head); same numbers in PyTorch, much faster on the ANE (default: original)")
    p.add_argument("--components", type=component_list, default=("text_encoder", "unet", "vae_decoder"),
                   help="comma-separated subset of text_encoder,unet,vae_decoder,vae_encoder, or 'all'. Apple's Swift "
                        "pipeline needs the first three; vae_encoder (VAEEncoder) enables image-to-image "
                        "(default: text_encoder,unet,vae_decoder)")
    p.add_argument("--height", type=int, help="image height in pixels, a multiple of 64 (default: the model's "
                                               "native size, 512 for SD-v1.4)")
    p.add_argument("--width", type=int, help="image width in pixels, a multiple of 64 (default: native size)")
    p.add_argument("--unet-batch", type=int, default=2, choices=(1, 2),
                   help="U-Net batch. Apple's Swift pipeline always passes 2 rows (unconditional + conditional for "
                        "classifier-free guidance); use 1 only for your own runtime (default: 2). The text encoder "
                        "and VAE always take batch 1, as Swift calls them")
    p.add_argument("--compute-units", default="all", choices=list(COMPUTE_UNITS),
                   help="the hardware you intend to run on: all, cpu-and-ne (Neural Engine; pair with "
                        "--attention split-einsum), cpu-and-gpu (pair with original), cpu-only. Core ML picks the "
                        "units when the model is loaded, so this is recorded in the package metadata and used for "
                        "validation on a Mac; pass the same to Apple's CLI (--compute-units) (default: all)")
    p.add_argument("--min-deployment-target", choices=list(DEPLOYMENT_TARGETS),
                   help="oldest OS that must load the models. Default: iOS16 (what Apple's Swift package needs) for "
                        "fp16/int8, iOS17 for palettized weights, which iOS16/macOS13 cannot load (asking for them "
                        "with palettization is an error)")
    p.add_argument("--chunk-unet", action="store_true",
                   help="split the U-Net into UnetChunk1/UnetChunk2 packages of about equal weight size, as Apple "
                        "does for U-Nets over 1 GB on iPhone/iPad (the Neural Engine loads at most ~1 GB per "
                        "model); Swift finds and chains the chunks automatically")
    p.add_argument("--weight-threshold", type=int, default=2048,
                   help="weights with fewer elements stay fp16 when compressing (coremltools' default: 2048)")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to create (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--verbose", action="store_true", help="show coremltools' progress bars and warnings")
    return p


def main(argv=None) -> int:
    args_probe = argv if argv is not None else sys.argv[1:]
    if "--verbose" not in args_probe:
        os.environ.setdefault("TQDM_DISABLE", "1")  # coremltools prints a progress bar per MIL pass
    from bksdm_edge.cli import _quiet_third_party
    from bksdm_edge.errors import BksdmError

    _quiet_third_party()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from bksdm_edge.export.coreml_bundle import config_from_args, export_coreml_bundle

        path = export_coreml_bundle(config_from_args(args))
    except BksdmError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(f"bundle written to {path}")
    print(f"on a Mac: for p in {path}/Resources/*.mlpackage; do xcrun coremlcompiler compile \"$p\" "
          f"{path}/Resources/; done   (see docs/coreml.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
