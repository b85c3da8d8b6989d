"""The export command-line options, shared by ``bksdm-edge export`` and ``export/to_{onnx,tflite,coreml}.py``.

    parser = argparse.ArgumentParser()
    add_export_args(parser, formats=("onnx",))      # --format is fixed when one format is given
    request = request_from_args(parser.parse_args())
    path = export_bundle(request)

The help text is made from the registry: each precision's line is its target's ``DESCRIPTION``,
format-specific options are the targets' ``FORMAT_OPTIONS``, and flags that no offered format uses
(``--dynamic``, ``--calibration-*``) are not offered. Measured numbers never appear here: they live in
benchmarks/results and the docs that cite them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from .registry import ALL_COMPONENTS, DEFAULT_COMPONENTS, FORMAT_MODULES, format_targets
from .request import BATCH_AXIS, BATCHES, Calibration, ExportRequest


# Format options that are the console flags every entry point has (``--verbose``): not added again per format.
CONSOLE_OPTIONS = ("verbose",)

VAE_HELP = (
    "VAE decoder (and encoder) to export: teacher (default, the model's own AutoencoderKL); a tiny TAESD-architecture "
    "decoder: a `bksdm-edge distill-vae` run folder, an AutoencoderTiny folder or hub id (e.g. madebyollin/taesd, "
    "from the local Hugging Face cache when offline), or 'tiny' (the architecture with random weights, for "
    "benchmarks). The manifest records the decoder kind and its latent scaling (latent_scaling_factor: 1.0 for a "
    "tiny decoder; in Apple's Swift pipeline set Configuration.decoderScaleFactor and encoderScaleFactor to it)."
)


def components_arg(text: str) -> tuple[str, ...]:
    """``--components``: a comma-separated list, or ``all``."""
    if text.strip() == "all":
        return ALL_COMPONENTS
    return tuple(c.strip() for c in text.split(",") if c.strip())


def precision_help(formats: Sequence[str]) -> str:
    """``--precision`` help: every offered format's precisions with their targets' descriptions."""
    parts = []
    for fmt in formats:
        targets = format_targets(fmt)
        if not targets:
            continue
        lines = "; ".join(f"{t.PRECISION} = {t.DESCRIPTION}" for t in targets)
        prefix = f"{fmt} (default {targets[0].PRECISION}): " if len(formats) > 1 else ""
        parts.append(prefix + lines)
    suffix = "" if len(formats) > 1 else f" (default: {format_targets(formats[0])[0].PRECISION})" if parts else ""
    return ". ".join(parts) + suffix


def add_export_args(parser: argparse.ArgumentParser, formats: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Add the export options to ``parser``.

    Args:
        parser: an argparse parser (or subparser).
        formats: formats to offer; with one format ``--format`` is not added (the script is format-specific).
    """
    formats = tuple(formats or FORMAT_MODULES)
    targets = [t for f in formats for t in format_targets(f)]
    parser.add_argument("--model", default="builtin:mini-sd",
                        help="model source: builtin:NAME (random weights, no download; e.g. builtin:sd-v1.4), a "
                             "diffusers pipeline folder, or a hub id in your Hugging Face cache (default: builtin:mini-sd)")
    parser.add_argument("--unet", type=Path,
                        help="student U-Net folder written by `bksdm-edge build` or `distill` (BK-SDM Base/Small/Tiny), "
                             "replacing the model's U-Net")
    parser.add_argument("--vae", default="teacher", help=VAE_HELP)
    if len(formats) > 1:
        parser.add_argument("--format", default=formats[0], choices=(*formats, "auto"),
                            help=f"export format (default: {formats[0]}); auto = the format and precision that "
                            "benchmark results found fastest on a CPU with this one's ISA (--precision is then "
                            "chosen too; see --results)")
    else:
        parser.set_defaults(format=formats[0])
    choices = list(dict.fromkeys(t.PRECISION for t in targets)) or None
    parser.add_argument("--precision", choices=choices, help=precision_help(formats))
    parser.add_argument("--components", type=components_arg, default=DEFAULT_COMPONENTS,
                        help=f"comma-separated subset of {','.join(ALL_COMPONENTS)}, or 'all' "
                             f"(default: {','.join(DEFAULT_COMPONENTS)}; vae_encoder enables image-to-image)")
    parser.add_argument("--height", type=int, help="image height in pixels, a multiple of 64 (default: the model's "
                                                   "native size, 512 for SD-v1.4)")
    parser.add_argument("--width", type=int, help="image width in pixels, a multiple of 64 (default: native size)")
    batches = ", ".join(f"{f}: {format_targets(f)[0].DEFAULT_BATCH}" for f in formats if format_targets(f))
    axis = any(t.DYNAMIC_SHAPES for t in targets)
    parser.add_argument("--batch", "--unet-batch", dest="batch", type=batch_arg, choices=BATCHES if axis else (1, 2),
                        help="the U-Net's batch: 1 (two calls per step for classifier-free guidance), 2 (the "
                             "unconditional and conditional rows in one call)"
                             + (f" or {BATCH_AXIS} (a batch axis: 1 or 2 rows per call, what optimum's pipelines "
                                "send; formats with dynamic shapes)" if axis else "")
                             + ". The text encoder and VAE are always exported at batch 1, as every SD pipeline calls "
                             f"them (default: {batches})")
    if any(t.DYNAMIC_SHAPES for t in targets):
        parser.add_argument("--dynamic", action="store_true",
                            help="dynamic batch/height/width axes instead of static shapes (ONNX; NPUs need static)")
    if any(t.NEEDS_CALIBRATION for t in targets):
        calibrated = ", ".join(sorted({t.name() for t in targets if t.NEEDS_CALIBRATION}))
        parser.add_argument("--calibration-prompts", type=Path,
                            help=f"prompt file (one per line) for static int8 calibration ({calibrated}); "
                                 "default: the packaged list")
        parser.add_argument("--calibration-steps", type=int, default=Calibration.steps,
                            help=f"denoising steps recorded per calibration prompt (default: {Calibration.steps})")
        parser.add_argument("--calibration-count", type=int, default=Calibration.count,
                            help="how many prompts of the list to record, first ones first; 0 = all (default: "
                                 f"{Calibration.count}: int8 ranges come from a trajectory's extremes, and each "
                                 "prompt is a full pipeline run)")
    parser.add_argument("--memory-limit", type=float, default=None, metavar="GIB",
                        help="RAM in GiB the export may use besides the loaded model; the export refuses before "
                             "any slow work when a conversion's estimate (docs/export.md) exceeds "
                             "it (default: the memory available at that point)")
    parser.add_argument("--out", required=True, type=Path, help="bundle folder to create (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    for fmt in formats:
        options = format_targets(fmt)[0].FORMAT_OPTIONS if format_targets(fmt) else ()
        if not options:
            continue
        title = f"{fmt} options" + (f" (with --format {fmt})" if len(formats) > 1 else "")
        group = parser.add_argument_group(title)
        for opt in options:
            if opt.key in CONSOLE_OPTIONS:
                continue  # the entry point's own flag (bksdm_edge.cli.add_console_flags) sets it
            if opt.flag:
                group.add_argument(opt.cli, dest=f"option_{opt.key}", action="store_true", default=None, help=opt.help)
            else:
                group.add_argument(opt.cli, dest=f"option_{opt.key}", choices=opt.choices, type=opt.type,
                                   metavar=None if opt.choices else opt.key.upper(), help=opt.help)
    return parser


def batch_arg(text: str) -> int | str:
    """``--batch``: a number of rows, or ``dynamic`` (a batch axis)."""
    return text if text == BATCH_AXIS else int(text)


def request_from_args(args: argparse.Namespace) -> ExportRequest:
    """The ``ExportRequest`` of parsed options (checked on construction, before any model is loaded)."""
    options = {k[len("option_"):]: v for k, v in vars(args).items() if k.startswith("option_") and v is not None}
    targets = format_targets(args.format)
    for key in CONSOLE_OPTIONS:  # e.g. --verbose also shows coremltools' own bars and warnings
        if getattr(args, key, False) and targets and any(o.key == key for o in targets[0].FORMAT_OPTIONS):
            options[key] = True
    prompts = getattr(args, "calibration_prompts", None)
    return ExportRequest(
        out=args.out, model=args.model, unet=args.unet, vae=args.vae, format=args.format, precision=args.precision,
        components=tuple(args.components), height=args.height, width=args.width, batch=args.batch,
        dynamic=getattr(args, "dynamic", False),
        calibration=Calibration(prompts=prompts, steps=getattr(args, "calibration_steps", Calibration.steps),
                                count=getattr(args, "calibration_count", Calibration.count) or None),
        overwrite=args.overwrite, progress=not args.no_progress, options=options,
        memory_limit=int(args.memory_limit * 2**30) if getattr(args, "memory_limit", None) is not None else None,
    )
