"""Export a Stable Diffusion pipeline (or a BK-SDM student U-Net) to Core ML, laid out for Apple's Swift package.

    python export/to_coreml.py --model builtin:sd-v1.4 --unet students/bk-tiny \\
        --precision palettize6 --attention split-einsum --compute-units cpu-and-ne --out bundles/bk-tiny-coreml

Same as `bksdm-edge export --format coreml` (one library call, one bundle writer). The bundle's
Resources/ folder holds TextEncoder, Unet (or UnetChunk1/UnetChunk2), VAEDecoder (and VAEEncoder)
.mlpackage files plus vocab.json and merges.txt, with float16 weights/compute and float32 inputs and
outputs, as Apple's Swift StableDiffusion package expects (contract: docs/coreml.md). On a Mac, compile
them once:

    for p in OUT/Resources/*.mlpackage; do xcrun coremlcompiler compile "$p" OUT/Resources/; done

then run Apple's CLI: swift run StableDiffusionSample "a photo of a cat" --resource-path OUT/Resources
--compute-units cpuAndNeuralEngine --output-path out/. Core ML models run only on macOS/iOS; on Linux the
export is checked statically (saved spec against Swift's contract, stored weight precision, PSNR of the
stored weights against PyTorch) and the report says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_parser():
    from bksdm_edge.commands.export import script_parser

    return script_parser("coreml", __doc__)


def main(argv=None) -> int:
    from bksdm_edge.commands.export import script_main

    return script_main("coreml", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
