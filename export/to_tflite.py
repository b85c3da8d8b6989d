"""Export an SD pipeline (or a BK-SDM student U-Net) to a validated TFLite (LiteRT) bundle.

    python export/to_tflite.py --model builtin:sd-v1.4 --unet students/bk-small \\
        --precision int8 --out bundles/bk-small-tflite-int8

Precisions: fp32, fp16, int8 (dynamic range), int8-weight-only, w8a8 (full-integer, calibrated).
Same as ``bksdm-edge export --format tflite``; see docs/tflite.md (precisions, memory limits).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from bksdm_edge.commands.export import script_main

    return script_main("tflite", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
