"""Versions of Python, this toolkit and installed packages, for the records written beside every output."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Iterable


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """``{"bksdm_edge": ..., "python": ..., package: version}`` for each installed package (missing ones left out).

    Args:
        packages: distribution names as pip knows them (``torch``, ``scikit-learn``, ``litert-torch``).
    """
    from . import __version__

    out = {"bksdm_edge": __version__, "python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
