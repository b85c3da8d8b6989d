"""``bksdm-edge export``: export, validate and bundle an SD model (ONNX, TFLite, Core ML, OpenVINO).

``export/to_onnx.py`` and ``export/to_tflite.py`` are this command with the format fixed (``script_main``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    from ..export.cli_args import add_export_args

    p = subparsers.add_parser(
        "export",
        help="export the text encoder, U-Net and VAE to a validated ONNX/TFLite/Core ML/OpenVINO bundle",
        description="Convert each component, validate it against PyTorch (seeded inputs and a real denoising "
        "trajectory: names, shapes, then values), and write the bundle atomically with a manifest of sha256 "
        "hashes. A failed validation exits with code 3 and leaves OUT.failed/ (never a complete bundle). "
        "--overwrite replaces only a bundle that bksdm-edge wrote (an ordinary folder is never deleted).",
    )
    add_export_args(p)
    p.add_argument("--results", type=Path, action="append", default=[], metavar="DIR",
                   help="--format auto: benchmark results (folders of results.json) to rank from "
                   "(default: the repository's benchmarks/results)")
    p.set_defaults(func=run)


def check_args(args) -> None:
    """Every export option that can be checked without loading the model (the export scripts run this command)."""
    from .. import checks

    checks.resolution(args.model, args.height, args.width, flags=("--height", "--width"))
    checks.unet_folder(args.unet, "--unet")
    checks.vae_source(args.vae, "--vae")
    checks.output_dir(args.out, "--out")
    if getattr(args, "calibration_prompts", None) is not None:
        checks.text_file(args.calibration_prompts, "--calibration-prompts", what="prompt file")
    checks.at_least(getattr(args, "calibration_steps", None), 1, "--calibration-steps")


def run(args) -> int:
    from ..export.cli_args import request_from_args
    from ..export.pipeline import export_bundle

    check_args(args)
    if args.format == "auto":
        return run_auto(args)
    _summary(export_bundle(request_from_args(args)))
    return 0


def run_auto(args) -> int:
    """Export with the fastest measured format/precision for this CPU; the next one when a validation fails."""
    from ..bench.recommend import Candidate, plan
    from ..errors import BksdmError, ValidationFailed
    from ..export.cli_args import request_from_args
    from ..export.pipeline import export_bundle

    paths, where = plan(args.results)
    if not paths:
        raise BksdmError("--format auto: no export format can run here (install an extra: onnx, openvino, tflite)")
    print(f"--format auto: {where}; fastest first:")
    for c in paths:
        print(f"  {c.describe() if isinstance(c, Candidate) else ' '.join(c)}")
    # One export per format/precision (its run-time settings, e.g. OpenVINO bf16, are the bundle's own choice).
    targets = list(dict.fromkeys((c.format, c.precision) if isinstance(c, Candidate) else c for c in paths))
    for i, (args.format, args.precision) in enumerate(targets):
        print(f"exporting {args.format} {args.precision}")
        try:
            _summary(export_bundle(request_from_args(args)))
            return 0
        except ValidationFailed as err:
            if i == len(targets) - 1:
                raise
            print(f"{args.format} {args.precision} failed its validation ({str(err).splitlines()[0]}); "
                  "trying the next")
    return 3


def _summary(path) -> None:
    from ..export.pipeline import export_summary

    print("\n".join(export_summary(path)))


def script_parser(format: str, description: str) -> argparse.ArgumentParser:
    """The parser of ``export/to_<format>.py``: the export options with ``--format`` fixed, and the console flags."""
    from ..cli import add_console_flags
    from ..export.cli_args import add_export_args

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_console_flags(add_export_args(parser, formats=(format,)))


def script_main(format: str, description: str, argv=None) -> int:
    """``export/to_<format>.py``: the export command with ``--format`` fixed."""
    from ..cli import run_entry_point

    return run_entry_point(sys.argv[1:] if argv is None else argv,
                           lambda args: script_parser(format, description).parse_args(args), run)
