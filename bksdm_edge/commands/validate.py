"""``bksdm-edge validate``: re-run the shared validation of an existing bundle."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "validate",
        help="verify a bundle's hashes and re-run its validation against the PyTorch source model",
        description="Checks every file against the manifest, reloads the source model named in the manifest, and "
        "compares each exported component with PyTorch on seeded and real-trajectory inputs. Exit code 3 on "
        "failure. The bundle is not modified.",
    )
    p.add_argument("--bundle", required=True, type=Path, help="bundle folder")
    p.add_argument("--model", help="override the source model recorded in the manifest")
    p.add_argument("--report", type=Path, help="write the validation report (JSON) here")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import checks

    checks.bundle_folder(args.bundle)
    checks.output_file(args.report, "--report", suffixes=(".json",), what="report")

    from ..export.pipeline import validate_bundle

    model = None
    if args.model:
        from ..export.bundle import read_manifest
        from ..loading import load_model

        model = load_model(args.model, unet=read_manifest(args.bundle)["source"].get("unet"))
    report = validate_bundle(args.bundle, model=model, report_path=args.report)
    print(report.summary())
    print(f"{args.bundle}: validation passed")
    return 0
