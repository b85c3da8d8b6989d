"""The ``bksdm-edge`` command line: a thin layer over the library.

Each subcommand lives in ``bksdm_edge/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a function
taking the parsed arguments and returning an exit code. Subcommands are found
by module discovery, so adding one never edits this file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings

from . import __version__


from .errors import BksdmError

UserError = BksdmError  # raise from a command for bad input; printed without a traceback


def _quiet_third_party() -> None:
    # torchao (pulled in by litert-torch) and diffusers print import-time noise that hides our output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # diffusers sets its own logger's level when it first logs (after the setLevel below), from this variable:
    # without it, its import-time torchao notice reaches the console.
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", message=".*torchao.*")
    import logging

    for name in ("torchao", "torch.utils._pytree", "diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _command_modules(argv: list[str] | None) -> list[str]:
    """The command modules to import: only the one named on the command line when there is one.

    Importing every command would import torch (seconds) even for ``bksdm-edge generate``, which must
    run without PyTorch; ``bksdm-edge --help`` still lists them all.
    """
    from . import commands

    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__))
    first = next((a for a in (argv or []) if not a.startswith("-")), None)
    if first is not None and first.replace("-", "_") in names:
        return [first.replace("-", "_")]
    return names


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bksdm-edge",
        description="Compress Stable Diffusion U-Nets the BK-SDM way (arXiv 2305.15798), distil them, export them "
        "to ONNX / TFLite / Core ML bundles, benchmark them against the original SD model, and generate images.",
        epilog="Model sources (SRC): builtin:mini-sd (default), builtin:sd-v1.4, builtin:sd-v2.1-base, ... "
        "(random weights, no download), a local diffusers pipeline folder, or a hub id such as "
        "CompVis/stable-diffusion-v1-4 (needs the Hugging Face cache or network). "
        "Run `bksdm-edge COMMAND --help` for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"bksdm-edge {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import commands

    for name in _command_modules(argv):
        module = importlib.import_module(f"{commands.__name__}.{name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_third_party()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BksdmError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
