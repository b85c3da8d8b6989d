"""Export an SD pipeline (or a BK-SDM student U-Net) to a validated TFLite (LiteRT) bundle.

    python export/to_tflite.py --model builtin:sd-v1.4 --unet students/bk-small \\
        --precision int8 --out bundles/bk-small-tflite-int8

Precisions: fp32, fp16, int8 (dynamic range), int8-weight-only, w8a8 (full-integer, calibrated).
Same as ``bksdm-edge export --format tflite``; see docs/tflite.md (precisions, memory limits).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from bksdm_edge.errors import BksdmError
    from bksdm_edge.export.cli_args import add_export_args, request_from_args
    from bksdm_edge.export.pipeline import export_bundle

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = add_export_args(parser, formats=("tflite",)).parse_args(argv)
    try:
        print(export_bundle(request_from_args(args)))
    except BksdmError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
