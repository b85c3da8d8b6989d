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
from .rows import ColumnTypeError, coerce, empty_row

REQUIRED = ("model", "component", "backend", "precision", "device")
# What an imported row is assumed to be when the file does not say: the paper's shape, threads unknown.
IMPORT_DEFAULTS = {"batch": 1, "resolution": 512, "threads": None, "source": "imported"}


class ImportFormatError(BksdmError, ValueError):
    """An import file that does not follow the documented format."""


def import_row(values: dict[str, Any], where: str) -> dict[str, Any]:
    """One imported row: every results column (``rows.COLUMNS``), typed, with ``IMPORT_DEFAULTS`` for the gaps."""
    missing = [k for k in REQUIRED if not values.get(k)]
    if missing:
        raise ImportFormatError(f"{where}: missing {', '.join(missing)}")
    if values.get("median_s") in (None, "") and not values.get("error"):
        raise ImportFormatError(f"{where}: needs median_s (seconds) or an error")
    try:
        typed = {k: coerce(k, v) for k, v in values.items()}
    except ColumnTypeError as err:
        raise ImportFormatError(f"{where}: {err}") from None
    row = empty_row(**IMPORT_DEFAULTS)
    row.update({k: v for k, v in typed.items() if v is not None or k not in IMPORT_DEFAULTS})
    row["imported_from"] = where.split(":")[0]
    return row


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read an import file (JSON or CSV) into result rows (see the module docstring)."""
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
    return [import_row({**defaults, **r}, f"{path}:{i}") for i, r in enumerate(raw_rows, 1)]
