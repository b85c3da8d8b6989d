"""Cached side environments for interop tests whose tools pin packages that conflict with ours.

``side_python(name, packages)`` creates, once, a virtual environment under ``~/.cache/bksdm-edge/venvs/<name>``
that sees this environment's packages (a ``.pth`` file adds our site-packages after its own) and installs
``packages`` into it without dependencies, so only the pinned conflicting packages differ (e.g. optimum-intel
with transformers < 5.6 while we run transformers 5.x). Returns its python, or None with the reason when the
packages cannot be installed here (no registry access); the interop tests fail with that reason.

``separate_python(name, requirements)`` creates, once, a venv that shares nothing with ours, from a pinned
requirements file (e.g. optimum-onnx with transformers < 5 and its own diffusers / huggingface-hub); it is keyed by the
file's contents, so editing the pins makes a new one. Location: ``$BKSDM_VENV_CACHE`` or ``~/.cache/bksdm-edge/venvs``
(a clean CI machine creates it on the first run: a few minutes, PyPI plus the local torch wheel).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from bksdm_edge.outputs import user_cache_dir

CACHE = Path(os.environ.get("BKSDM_VENV_CACHE") or user_cache_dir() / "venvs")


def side_python(name: str, packages: tuple[str, ...], timeout: float = 900) -> tuple[Path | None, str]:
    """(python of the side venv, "") or (None, why it could not be made)."""
    key = hashlib.sha256("\n".join((sys.prefix, *packages)).encode()).hexdigest()[:10]
    root = CACHE / f"{name}-{key}"
    python = root / "bin" / "python"
    if (root / ".ready").exists():
        return python, ""
    root.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [[base, "-m", "venv", "--without-pip", str(root)]]
    for cmd in steps:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if res.returncode:
            return None, f"creating the {name} venv failed: {res.stderr[-500:]}"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "_bksdm_edge_parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    constraints = Path(__file__).parents[1] / ".ci" / "constraints.txt"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), "--upgrade",
           *(["-c", str(constraints)] if constraints.exists() else []), *packages]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode:
        return None, f"installing {' '.join(packages)} failed: {(res.stderr or res.stdout)[-800:]}"
    (root / ".ready").write_text("\n".join(packages) + "\n")
    return python, ""


def separate_python(name: str, requirements: Path, timeout: float = 1800) -> tuple[Path | None, str]:
    """(python of a separate venv with exactly ``requirements`` installed, "") or (None, the pip error).

    Created in a temporary sibling and renamed into place when complete, so an interrupted install is never taken
    for a ready venv; concurrent callers wait for each other on a lock file.
    """
    import fcntl
    import shutil

    text = requirements.read_text()
    key = hashlib.sha256("\n".join((sys.version, text)).encode()).hexdigest()[:10]
    root = CACHE / f"{name}-{key}"
    python = root / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".ready").exists():
            return python, ""
        work = CACHE / f".{name}-{key}.partial"
        shutil.rmtree(work, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        steps = ([base, "-m", "venv", str(work)],
                 [str(work / "bin" / "python"), "-m", "pip", "install", "-q", "--no-input", "-r", str(requirements)])
        for cmd in steps:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            if res.returncode:
                shutil.rmtree(work, ignore_errors=True)
                return None, f"creating the {name} venv failed ({' '.join(cmd[:4])} ...): {(res.stderr or res.stdout)[-1500:]}"
        # Only ``bin/python`` is used (``python -m``): it finds its packages from pyvenv.cfg beside it, so the
        # renamed venv works (the console scripts' shebangs keep the old path).
        work.rename(root)
        (root / ".ready").write_text(text)
        return python, ""
