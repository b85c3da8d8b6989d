"""`python export/to_coreml.py`, as a user runs it, end to end on the toy pipeline; and the same request as
`bksdm-edge export --format coreml` (one library call, one bundle writer)."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from bksdm_edge.export.bundle import verify_bundle
from bksdm_edge.export.cli_args import add_export_args, request_from_args
from bksdm_edge.export.coreml.contract import check_resources
from bksdm_edge.export.coreml.package import inspect_package

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "export" / "to_coreml.py"


def test_to_coreml_script_writes_a_swift_loadable_verified_bundle(tmp_path):
    out = tmp_path / "bundle"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "builtin:tiny-sd", "--precision", "int8",
         "--components", "text_encoder,unet,vae_decoder", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "xcrun coremlcompiler compile" in proc.stdout and "unet: passed" in proc.stdout
    resources = out / "Resources"
    for name in ("TextEncoder.mlpackage", "Unet.mlpackage", "VAEDecoder.mlpackage", "vocab.json", "merges.txt"):
        assert (resources / name).exists(), name
    manifest = verify_bundle(out)
    assert manifest["complete"] is True and manifest["format"] == "coreml" and manifest["precision"] == "int8"
    assert manifest["image"]["batch"] == 2  # the format's default: both CFG rows in one U-Net call
    assert check_resources(resources, manifest) == []
    # tiny-sd's largest tensors are under the default weight threshold (2048) except the text embeddings.
    assert "int8" in inspect_package(resources / "TextEncoder.mlpackage")["weights"]
    report = json.loads((out / "validation.json").read_text())
    assert report["passed"] and report["bundle"] == []
    assert "skipped" in json.dumps(report) or sys.platform == "darwin"  # no Core ML prediction off macOS, and it says so


def test_cli_and_script_make_the_same_request(tmp_path):
    argv = ["--model", "builtin:tiny-sd", "--precision", "palettize6", "--attention", "split-einsum",
            "--compute-units", "cpu-and-ne", "--chunk-unet", "--unet-batch", "1", "--out", str(tmp_path / "b")]
    cli = argparse.ArgumentParser()
    add_export_args(cli)
    spec = importlib.util.spec_from_file_location("to_coreml", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from_cli = request_from_args(cli.parse_args(["--format", "coreml", *argv]))
    from_script = request_from_args(script.build_parser().parse_args(argv))
    assert from_cli == from_script
    assert from_cli.batch == 1 and dict(from_cli.options) == {
        "attention": "split-einsum", "compute_units": "cpu-and-ne", "min_deployment_target": "iOS17",
        "chunk_unet": True, "weight_threshold": 2048, "verbose": False}


def test_help_explains_every_option_and_bad_targets_fail_fast(tmp_path):
    help_text = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True).stdout
    help_text = " ".join(help_text.split())  # argparse wraps lines
    for option in ("--precision", "--attention", "--compute-units", "--min-deployment-target", "--chunk-unet",
                   "--components", "--unet-batch", "palettize6", "split-einsum", "xcrun coremlcompiler",
                   "float32 inputs/outputs"):
        assert option in help_text
    run = subprocess.run([sys.executable, str(SCRIPT), "--model", "builtin:tiny-sd", "--precision", "palettize6",
                          "--min-deployment-target", "iOS16", "--out", str(tmp_path / "b")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr and "iOS17/macOS14" in run.stderr
    assert not (tmp_path / "b").exists()
    onnx = subprocess.run([sys.executable, "-m", "bksdm_edge", "export", "--format", "onnx", "--attention",
                           "split-einsum", "--out", str(tmp_path / "c")], capture_output=True, text=True)
    assert onnx.returncode == 2 and "onnx export takes no format options" in onnx.stderr
