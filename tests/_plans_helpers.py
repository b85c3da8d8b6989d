"""Helpers shared by tests/test_plans*.py."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).parents[1] / "docs" / "plans.md"


def docs_example(tmp_path) -> Path:
    """The example plan of docs/plans.md, written to a file (the docs must stay a valid plan)."""
    text = DOCS.read_text()
    block = re.search(r"```yaml\n(# my_plan\.yaml.*?)```", text, re.S)[1]
    path = tmp_path / "my_plan.yaml"
    path.write_text(block)
    return path
