"""Export an SD pipeline (or a BK-SDM student U-Net) to a validated ONNX bundle (optimum's diffusion layout).

    python export/to_onnx.py --model builtin:sd-v1.4 --unet students/bk-small \\
        --precision int8 --out bundles/bk-small-onnx-int8

Same as ``bksdm-edge export --format onnx``; see docs/bundle_format.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from bksdm_edge.commands.export import script_main

    return script_main("onnx", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
