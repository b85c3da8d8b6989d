"""The committed golden vectors (read by the Kotlin engine's tests) are current."""

from __future__ import annotations

import json

from _export_helpers import tiny_bundle
from bksdm_edge.export.bundle import verify_bundle
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


def _keys(value, skip=("extra", "versions", "files")):
    """The key structure of a JSON value (dict keys recursively, a list by its first element)."""
    if isinstance(value, dict):
        return {k: _keys(v) for k, v in value.items() if k not in skip}
    if isinstance(value, list) and value and isinstance(value[0], (dict, list)):
        return [_keys(value[0])]
    return None


def test_golden_bundle_manifest_has_the_structure_of_a_real_export():
    """The Kotlin engine parses golden/bundle/manifest.json (written by the real manifest builder on a fake
    model); it must have every key, in every nested object, that a real tiny ONNX export's manifest has."""
    golden = verify_bundle(GOLDEN_DIR / "bundle")  # complete, every file listed with its sha256
    real = verify_bundle(tiny_bundle("fp32", batch="dynamic"))  # the ONNX default: a U-Net batch axis
    assert _keys(golden) == _keys(real)
    assert golden["components"].keys() == real["components"].keys()
    for name, entry in real["components"].items():
        assert golden["components"][name]["inputs"] == entry["inputs"], name
        assert golden["components"][name]["outputs"] == entry["outputs"], name
