"""The ``bksdm-edge`` command line: a thin layer over the library.

Each subcommand lives in ``bksdm_edge/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a function
taking the parsed arguments and returning an exit code. Subcommands are found
by module discovery, so adding one never edits this file.

``run_entry_point`` is the one top-level handler of every entry point (this CLI,
``export/to_*.py``, ``benchmarks/run.py``): dependencies' console chatter goes to a log
(``bksdm_edge.console``), and every expected failure becomes one ``error: ...`` line with
the exit codes of ``bksdm_edge.errors`` -- no traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from typing import Callable, Sequence

from . import __version__
from .console import quiet_console, stream
from .errors import EXIT_UNEXPECTED, BksdmError, describe

UserError = BksdmError  # raise from a command for bad input; printed without a traceback

DEBUG_HELP = "show the full traceback of an error (implies --verbose)"
VERBOSE_HELP = "also show the console output of dependencies (warnings, logs, their progress bars)"


def add_console_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--verbose`` and ``--debug`` (read by ``run_entry_point``) to a parser."""
    group = parser.add_argument_group("diagnostics")
    for flag, help in (("--verbose", VERBOSE_HELP), ("--debug", DEBUG_HELP)):
        if flag not in parser._option_string_actions:  # a format may define --verbose too (Core ML: its own bars)
            group.add_argument(flag, action="store_true", help=help)
    return parser


def run_entry_point(argv: Sequence[str], parse: Callable[[list[str]], argparse.Namespace],
                    run: Callable[[argparse.Namespace], int | None]) -> int:
    """Parse ``argv`` and run the command with the shared console and error handling; returns the exit code.

    Args:
        argv: the command-line arguments (without the program name).
        parse: builds the parser and parses (argparse's own usage errors exit with code 2).
        run: runs the parsed command; returns an exit code (None means 0).
    """
    argv = list(argv)
    debug = "--debug" in argv
    verbose = debug or "--verbose" in argv
    with quiet_console(enabled=not verbose) as quiet:
        console = stream()
        try:
            args = parse(argv)  # argparse's usage errors reach the console: the quiet console routes by writer
            return int(run(args) or 0)
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
        except BaseException as exc:  # noqa: BLE001 -- the one place every failure is turned into a message
            message, code = describe(exc)
            if debug:
                traceback.print_exc(file=console)
            elif code == EXIT_UNEXPECTED:
                hint = "run with --debug for the traceback"
                if quiet is not None and quiet.has_output():
                    quiet.keep_log = True
                    hint += f"; dependency output kept in {quiet.log_path}"
                message = f"{message} ({hint})"
            print(f"error: {message}", file=console, flush=True)
            return code


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
        "Run `bksdm-edge COMMAND --help` for each command's options. Exit codes: 0 done, 2 bad input "
        "(one `error:` line naming the problem and the fix), 3 an export failed its validation, 1 an "
        "unexpected error (rerun with --debug for the traceback).",
    )
    parser.add_argument("--version", action="version", version=f"bksdm-edge {__version__}")
    add_console_flags(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import commands

    for name in _command_modules(argv):
        module = importlib.import_module(f"{commands.__name__}.{name}")
        module.register(subparsers)
    for sub in set(subparsers.choices.values()):
        add_console_flags(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parsers: list[argparse.ArgumentParser] = []

    def parse(args: list[str]) -> argparse.Namespace:
        parsers.append(build_parser(args))
        return parsers[0].parse_args(args)

    def run(args: argparse.Namespace) -> int:
        if not getattr(args, "func", None):
            parsers[0].print_help()
            return 2
        return args.func(args)

    return run_entry_point(argv, parse, run)


if __name__ == "__main__":
    sys.exit(main())
