"""``bksdm-edge export``: export, validate and bundle an SD model (ONNX, TFLite, Core ML)."""

from __future__ import annotations


def register(subparsers) -> None:
    from ..export.cli_args import add_export_args

    p = subparsers.add_parser(
        "export",
        help="export the text encoder, U-Net and VAE to a validated ONNX/TFLite/Core ML bundle",
        description="Convert each component, validate it against PyTorch (seeded inputs and a real denoising "
        "trajectory: names, shapes, then values), and write the bundle atomically with a manifest of sha256 "
        "hashes. A failed validation exits with code 3 and leaves OUT.failed/ (never a complete bundle).",
    )
    add_export_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..export.cli_args import request_from_args
    from ..export.pipeline import export_bundle, export_summary

    path = export_bundle(request_from_args(args))
    print("\n".join(export_summary(path)))
    return 0
