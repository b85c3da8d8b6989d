"""`python export/to_coreml.py`, as a user runs it, end to end on the toy pipeline."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_to_coreml_script_writes_apple_resources_and_a_verified_bundle(tmp_path):
    out = tmp_path / "bundle"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "export" / "to_coreml.py"), "--model", "builtin:tiny-sd", "--precision", "int8",
         "--components", "text_encoder,unet,vae_decoder", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    resources = out / "Resources"
    for name in ("TextEncoder.mlpackage", "Unet.mlpackage", "VAEDecoder.mlpackage", "vocab.json", "merges.txt"):
        assert (resources / name).exists(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["format"] == "coreml"
    from bksdm_edge.export.bundle import verify_bundle

    verify_bundle(out)
    report = (out / "validation.json").read_text()
    assert "skipped" in report or sys.platform == "darwin"  # no Core ML prediction off macOS, and it says so
