"""Rows measured elsewhere (Core ML on a Mac, an iPhone through Xcode, a phone app), imported into a report.

Format (benchmarks/README.md): JSON ``{"defaults": {...}, "rows": [{...}, ...]}`` or a plain list of rows,
or a CSV with a header; each row needs ``model``, ``component``, ``backend``, ``precision``, ``device`` and
``median_s`` (or ``error``); any other column of the results schema may be given.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..errors import BksdmError

REQUIRED = ("model", "component", "backend", "precision", "device")
NUMERIC = {"median_s", "p90_s", "min_s", "mean_s", "cold_s", "first_run_s", "load_s", "peak_rss_mb",
           "peak_gpu_mb", "size_mb", "baseline_rss_mb"}
INTEGER = {"batch", "resolution", "threads", "repeats", "warmup", "steps"}


class ImportFormatError(BksdmError, ValueError):
    """An import file that does not follow the documented format."""


def _coerce(row: dict[str, Any], where: str) -> dict[str, Any]:
    missing = [k for k in REQUIRED if not row.get(k)]
    if missing:
        raise ImportFormatError(f"{where}: missing {', '.join(missing)}")
    if row.get("median_s") in (None, "") and not row.get("error"):
        raise ImportFormatError(f"{where}: needs median_s (seconds) or an error")
    clean: dict[str, Any] = {}
    for k, v in row.items():
        if v == "" or v is None:
            clean[k] = None
        elif k in NUMERIC:
            clean[k] = float(v)
        elif k in INTEGER:
            clean[k] = int(float(v))
        else:
            clean[k] = v
    clean.setdefault("batch", 1)
    clean.setdefault("resolution", 512)
    clean.setdefault("threads", None)
    clean.setdefault("source", "imported")
    clean.setdefault("error", None)
    clean["imported_from"] = where.split(":")[0]
    return clean


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read an import file (JSON or CSV) into result rows (see the module docstring)."""
    from .runner import base_row

    path = Path(path)
    if not path.exists():
        raise ImportFormatError(f"import file {path} does not exist")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            raw_rows, defaults = list(csv.DictReader(f)), {}
    else:
        doc = json.loads(path.read_text())
        if isinstance(doc, list):
            raw_rows, defaults = doc, {}
        else:
            raw_rows, defaults = doc.get("rows", []), doc.get("defaults", {})
    rows = []
    for i, r in enumerate(raw_rows, 1):
        merged = {**defaults, **r}
        row = base_row_from(merged, base_row)
        row.update(_coerce(merged, f"{path}:{i}"))
        rows.append(row)
    return rows


def base_row_from(values: dict[str, Any], base_row) -> dict[str, Any]:
    """An empty result row with the schema's columns (filled by the caller)."""
    from types import SimpleNamespace

    fields = ("model", "component", "backend", "precision", "batch", "resolution", "threads", "device",
              "repeats", "warmup", "source")
    # ``steps`` (denoising steps of a whole ``generate`` run) is optional in imported rows.
    return base_row(SimpleNamespace(**{k: values.get(k) for k in fields}, run_steps=values.get("steps")))
