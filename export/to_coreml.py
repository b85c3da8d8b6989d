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

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    from bksdm_edge.export.cli_args import add_export_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_export_args(parser, formats=("coreml",))


def main(argv=None) -> int:
    from bksdm_edge.cli import _quiet_third_party
    from bksdm_edge.errors import BksdmError

    _quiet_third_party()
    args = build_parser().parse_args(argv)
    try:
        from bksdm_edge.export.cli_args import request_from_args
        from bksdm_edge.export.pipeline import export_bundle, export_summary

        path = export_bundle(request_from_args(args))
    except BksdmError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print("\n".join(export_summary(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
