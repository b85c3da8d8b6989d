"""Environment and argument checks that run before any model is loaded, and the Core ML runtime's reach.

- ``check_environment(precision)``: coremltools present and new enough, known-bad package combinations
  (numpy >= 2.3 with coremltools 9), scikit-learn for palettization; one message listing every problem.
- ``resolve_deployment_target(precision, requested)``: the target to convert for, refusing one too old.
- ``runtime_unavailable()``: why Core ML prediction cannot run here (it needs macOS).
- ``quiet_coremltools(verbose)``: coremltools' loggers and per-pass progress bars off during a conversion.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass

from ..base import ExportError

# Deployment target -> (coremltools target attribute, the OS "generation" used to compare targets).
DEPLOYMENT_TARGETS: dict[str, tuple[str, int]] = {
    "iOS16": ("iOS16", 16), "macOS13": ("macOS13", 16),
    "iOS17": ("iOS17", 17), "macOS14": ("macOS14", 17),
    "iOS18": ("iOS18", 18), "macOS15": ("macOS15", 18),
}
GENERATION_NAMES = {16: "iOS 16 / macOS 13", 17: "iOS 17 / macOS 14", 18: "iOS 18 / macOS 15"}

# --compute-units -> coremltools ComputeUnit name.
COMPUTE_UNITS: dict[str, str] = {
    "all": "ALL", "cpu-and-ne": "CPU_AND_NE", "cpu-and-gpu": "CPU_AND_GPU", "cpu-only": "CPU_ONLY",
}
ATTENTIONS = ("original", "split-einsum")
MIN_COREMLTOOLS = "8.0"


@dataclass(frozen=True)
class IncompatibleVersions:
    """A package version range that does not work with a coremltools version range."""

    package: str
    package_versions: str  # PEP 440 specifier
    coremltools_versions: str
    why: str
    fix: str


KNOWN_INCOMPATIBLE = (
    IncompatibleVersions(
        "numpy", ">=2.3", "<=9.0",
        "coremltools {ct} cannot convert traced PyTorch models with numpy {v} (it fails with \"only 0-dimensional "
        "arrays can be converted to Python scalars\")",
        "pip install 'numpy<2.3'",
    ),
    IncompatibleVersions(
        "torch", "<2.1", ">=0", "the diffusers models and the PyTorch frontend of coremltools {ct} need torch >= 2.1 "
        "(found {v})", "pip install 'torch>=2.1'",
    ),
)


def package_version(package: str) -> str | None:
    """The installed version of ``package`` (None when it is not installed)."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_environment(precision: str) -> dict[str, str]:
    """Raise ``ExportError`` if this Python environment cannot do a Core ML export at ``precision``.

    Returns the versions that were checked (recorded in the bundle).
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    from .precisions import get_precision

    row = get_precision(precision)
    ct_version = package_version("coremltools")
    if ct_version is None:
        raise ExportError("Core ML export needs coremltools: pip install 'coremltools>=8.0'")
    if Version(ct_version) < Version(MIN_COREMLTOOLS):
        raise ExportError(f"coremltools {ct_version} is too old for weight compression; "
                          f"pip install 'coremltools>={MIN_COREMLTOOLS}'")
    versions = {"coremltools": ct_version}
    problems = []
    for rule in KNOWN_INCOMPATIBLE:
        v = package_version(rule.package)
        if v is None:
            continue
        versions[rule.package] = v
        if Version(v) in SpecifierSet(rule.package_versions) and Version(ct_version) in SpecifierSet(
            rule.coremltools_versions
        ):
            problems.append(f"{rule.why.format(ct=ct_version, v=v)}. Fix: {rule.fix}")
    if row.needs_sklearn:
        if importlib.util.find_spec("sklearn") is None:
            problems.append(
                f"--precision {precision} clusters weights with k-means from scikit-learn, which is not installed. "
                "Fix: pip install scikit-learn"
            )
        else:
            versions["scikit-learn"] = package_version("scikit-learn") or "?"
    if problems:
        raise ExportError("Core ML export cannot run in this environment:\n  - " + "\n  - ".join(problems))
    return versions


def resolve_deployment_target(precision: str, requested: str | None) -> str:
    """The deployment target to convert for; refuses one too old for the precision."""
    from .precisions import get_precision

    row = get_precision(precision)
    if requested is None:
        return row.min_target
    if requested not in DEPLOYMENT_TARGETS:
        raise ExportError(f"Unknown --min-deployment-target {requested!r}; choose from {', '.join(DEPLOYMENT_TARGETS)}")
    needed = DEPLOYMENT_TARGETS[row.min_target][1]
    if DEPLOYMENT_TARGETS[requested][1] < needed:
        raise ExportError(
            f"--precision {precision} needs --min-deployment-target {row.min_target}/"
            f"{_macos_of(needed)} or newer (palettized weights are decompressed on the Neural Engine only from "
            f"{GENERATION_NAMES[needed]}); got {requested}. Use --precision int8 or fp16 for {requested}, or raise "
            "the target."
        )
    return requested


def newer_target(a: str, b: str) -> str:
    """The newer of two deployment targets."""
    return a if DEPLOYMENT_TARGETS[a][1] >= DEPLOYMENT_TARGETS[b][1] else b


def _macos_of(generation: int) -> str:
    return next(k for k, (_, g) in DEPLOYMENT_TARGETS.items() if g == generation and k.startswith("macOS"))


def runtime_unavailable() -> str | None:
    """Why Core ML models cannot run here (None on macOS with coremltools' native module)."""
    if sys.platform != "darwin":
        return f"Core ML prediction needs macOS (this machine runs {sys.platform})"
    if importlib.util.find_spec("coremltools.libcoremlpython") is None:
        return "coremltools was installed without its native Core ML module (libcoremlpython)"
    return None


@contextlib.contextmanager
def quiet_coremltools(verbose: bool = False):
    """coremltools' warnings and its per-pass progress bars off (unless ``verbose``) for the duration.

    Its progress bars are tqdm bars on ``sys.stderr``, created per MIL pass; tqdm reads ``TQDM_DISABLE``
    only when it is first imported, so the bars are sent to a null stream instead. Errors still raise.
    """
    if verbose:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("coremltools", "coremltools.models", "coremltools.converters")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
