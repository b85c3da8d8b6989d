"""The ``--variant`` / ``--plan`` options, shared by ``build``, ``distill`` and ``profile``.

``--variant NAME`` picks a built-in plan (its choices come from the registry); ``--plan SPEC`` takes a
plan file (YAML/JSON, docs/plans.md), a built-in name, or a student U-Net folder (its recognised plan).
Both end up as one plan spec string that ``plans.resolve_plan`` reads.
"""

from __future__ import annotations

import argparse

from .builtin import BUILTIN_PLANS

PLAN_HELP = ("a removal plan: a plan file (.yaml/.json, see docs/plans.md), a built-in plan name "
             f"({', '.join(BUILTIN_PLANS)}) or a student U-Net folder (its plan is recognised from config.json)")


def add_plan_args(parser: argparse.ArgumentParser, *, required: bool = True, repeatable: bool = False,
                  note: str = "") -> None:
    """Add ``--variant`` and ``--plan`` (mutually exclusive unless ``repeatable``).

    Args:
        parser: the command's parser.
        required: one of the two must be given.
        repeatable: both may be given several times (``profile``); the values are collected in order.
        note: appended to both helps (what the command does without them).
    """
    choices = sorted(BUILTIN_PLANS)
    variant_help = "BK-SDM variant: " + "; ".join(f"{n} = {p.description}" for n, p in BUILTIN_PLANS.items())
    plan_help = PLAN_HELP + (f". {note}" if note else "")
    variant_help += f". {note}" if note else ""
    if repeatable:
        parser.add_argument("--variant", action="append", default=[], choices=choices,
                            help=variant_help + " (repeatable)")
        parser.add_argument("--plan", action="append", default=[], metavar="SPEC", help=plan_help + " (repeatable)")
        return
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--variant", choices=choices, help=variant_help)
    group.add_argument("--plan", metavar="SPEC", help=plan_help)


def plan_spec(args: argparse.Namespace) -> str | None:
    """The single plan spec of a command with ``add_plan_args(repeatable=False)``."""
    return args.plan or args.variant


def plan_specs(args: argparse.Namespace) -> list[str]:
    """All plan specs of a command with ``add_plan_args(repeatable=True)``, variants first."""
    return list(args.variant) + list(args.plan)
