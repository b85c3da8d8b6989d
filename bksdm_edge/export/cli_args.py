"""The export command-line options, shared by ``bksdm-edge export`` and ``export/to_{onnx,tflite,coreml}.py``.

    parser = argparse.ArgumentParser()
    add_export_args(parser, formats=("onnx",))      # --format is fixed when one format is given
    args = parser.parse_args()
    path = export_bundle(**export_kwargs(args))
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from .registry import ALL_COMPONENTS, DEFAULT_COMPONENTS, FORMAT_MODULES, get_target, precisions

PRECISION_HELP = (
    "fp32 = reference; fp16 = half weights/math, overflow-prone ops kept fp32. ONNX int8 choices: "
    "int8 = recommended: static QDQ (calibrated on real pipeline inputs) on the U-Net/VAE convolutions with "
    "attention/linear MatMuls left float, dynamic int8 for the text encoder (BK-SDM-Tiny U-Net, 512 px, 2 CPU "
    "threads: 1.44x faster than ORT fp32); int8-static = QDQ on every Conv/MatMul (2.4x SLOWER than fp32 on "
    "CPU: Q/DQ over the attention probabilities); int8-dynamic = weight-only/dynamic quantize_dynamic, no "
    "calibration, 4x smaller but also SLOWER than fp32 for the conv-heavy U-Net (ORT's ConvInteger path). "
    "Other formats list their own precisions."
)


def _components(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def add_export_args(parser: argparse.ArgumentParser, formats: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Add the export options to ``parser``.

    Args:
        parser: an argparse parser (or subparser).
        formats: formats to offer; with one format ``--format`` is not added (the script is format-specific).
    """
    formats = tuple(formats or FORMAT_MODULES)
    parser.add_argument("--model", default="builtin:mini-sd",
                        help="model source: builtin:NAME, diffusers pipeline folder or hub id (default: builtin:mini-sd)")
    parser.add_argument("--unet", type=Path, help="student U-Net folder (bksdm-edge build/distill) replacing the model's")
    if len(formats) > 1:
        parser.add_argument("--format", default=formats[0], choices=formats, help="export format")
    else:
        parser.set_defaults(format=formats[0])
    choices = sorted({p for f in formats for p in precisions(f)}) or None
    parser.add_argument("--precision", default="fp32", choices=choices, help=PRECISION_HELP)
    parser.add_argument("--components", type=_components, default=list(DEFAULT_COMPONENTS),
                        help=f"comma-separated subset of {','.join(ALL_COMPONENTS)} (default: {','.join(DEFAULT_COMPONENTS)})")
    parser.add_argument("--height", type=int, help="image height (default: the model's native size)")
    parser.add_argument("--width", type=int, help="image width (default: the model's native size)")
    parser.add_argument("--batch", type=int, default=1, choices=(1, 2),
                        help="exported batch: 1 (two calls per step for CFG) or 2 (uncond+cond in one call)")
    parser.add_argument("--dynamic", action="store_true",
                        help="dynamic batch/height/width axes instead of static shapes (ONNX; NPUs need static)")
    parser.add_argument("--calibration-prompts", type=Path,
                        help="prompt file (one per line) for static int8 calibration (default: packaged list)")
    parser.add_argument("--calibration-steps", type=int, default=4, help="denoising steps recorded per prompt")
    parser.add_argument("--out", required=True, type=Path, help="bundle folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def add_export_arguments(parser, format: str | None = None, formats: Sequence[str] | None = None):
    """Alias of ``add_export_args`` taking a single ``format``."""
    return add_export_args(parser, formats=(format,) if format else formats)


def export_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``export_bundle`` from parsed options."""
    get_target(args.format, args.precision)  # a clear error before loading any model
    return dict(
        model_src=args.model, unet=args.unet, format=args.format, precision=args.precision,
        components=args.components, height=args.height, width=args.width, batch=args.batch, dynamic=args.dynamic,
        calibration_prompts=args.calibration_prompts, calibration_steps=args.calibration_steps, out=args.out,
        overwrite=args.overwrite, progress=not args.no_progress,
    )
