"""The committed golden vectors (read by the Kotlin engine's tests) are current."""

from __future__ import annotations

import json

from bksdm_edge.runtime.golden import GOLDEN_DIR, write_golden
from bksdm_edge.runtime.tokenizer import ClipTokenizer


def test_golden_files_are_current(tmp_path):
    written = write_golden(tmp_path)
    stale = []
    for path in written:
        rel = path.relative_to(tmp_path)
        committed = GOLDEN_DIR / rel
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            stale.append(str(rel))
    assert not stale, (
        f"golden vectors out of date: {stale}; regenerate with `python -m bksdm_edge.runtime.golden` "
        "and commit android_demo/engine/src/test/resources/golden/"
    )
    extra = {p.relative_to(GOLDEN_DIR) for p in GOLDEN_DIR.rglob("*") if p.is_file()}
    extra -= {p.relative_to(tmp_path) for p in written}
    assert not extra, f"files in {GOLDEN_DIR} that the generator no longer writes: {sorted(map(str, extra))}"


def test_vocabulary_subset_reproduces_every_golden_encoding():
    golden = json.loads((GOLDEN_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    for case in golden["cases"]:
        tok = ClipTokenizer.from_files(
            GOLDEN_DIR / golden["vocab"], GOLDEN_DIR / golden["merges"], pad_token_id=case["pad_token_id"]
        )
        assert tok.encode(case["prompt"]) == case["ids"], case["prompt"]
