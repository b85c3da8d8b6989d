"""Bundle writing, manifest contents and verification (a modified or incomplete bundle is refused)."""

import json
import shutil

import pytest

from _export_helpers import tiny_bundle
from bksdm_edge.errors import OutputError
from bksdm_edge.export.bundle import REQUIRED_KEYS, BundleError, BundleWriter, verify_bundle


@pytest.fixture
def bundle_copy(tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle("fp32"), dst)
    return dst


def test_manifest_lists_every_file_with_hash_and_the_pipeline_facts():
    root = tiny_bundle("fp32")
    manifest = verify_bundle(root)
    assert manifest["complete"] is True and manifest["format"] == "onnx" and manifest["precision"] == "fp32"
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert sorted([*manifest["files"], "manifest.json"]) == sorted(on_disk)
    for rel in ("text_encoder/model.onnx", "unet/model.onnx", "vae_decoder/model.onnx", "model_index.json",
                "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt", "validation.json"):
        assert len(manifest["files"][rel]["sha256"]) == 64 and manifest["files"][rel]["size"] > 0
    unet = manifest["components"]["unet"]
    assert [i["name"] for i in unet["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert unet["inputs"][0]["shape"] == [1, 4, 8, 8] and unet["outputs"][0]["name"] == "out_sample"
    assert manifest["image"] == {"height": 64, "width": 64, "batch": 1, "dynamic": False, "vae_scale_factor": 8,
                                 "latent_channels": 4}
    assert manifest["latent_scaling_factor"] == pytest.approx(0.18215)
    assert manifest["scheduler"]["_class_name"] == "PNDMScheduler"
    assert manifest["tokenizer"]["pad_token_id"] == 49407 and manifest["tokenizer"]["bos_token_id"] == 49406
    for pkg in ("bksdm_edge", "torch", "onnx", "onnxruntime"):
        assert manifest["versions"][pkg]
    index = json.loads((root / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "OnnxRuntimeModel"]
    assert json.loads((root / "validation.json").read_text())["passed"] is True


def test_modified_file_is_refused_naming_the_file(bundle_copy):
    with open(bundle_copy / "unet" / "model.onnx", "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="unet/model.onnx does not match its sha256"):
        verify_bundle(bundle_copy)


def test_truncated_missing_and_extra_files_are_refused(bundle_copy):
    vocab = bundle_copy / "tokenizer" / "vocab.json"
    vocab.write_text(vocab.read_text()[:-10])
    with pytest.raises(BundleError, match="tokenizer/vocab.json has .* bytes"):
        verify_bundle(bundle_copy)
    vocab.unlink()
    with pytest.raises(BundleError, match="tokenizer/vocab.json listed in the manifest is missing"):
        verify_bundle(bundle_copy)


def test_unlisted_file_is_refused(bundle_copy):
    (bundle_copy / "unet" / "extra.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="not listed in the manifest: unet/extra.onnx"):
        verify_bundle(bundle_copy)


def test_incomplete_or_missing_manifest_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["complete"] = False
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not say the bundle is complete"):
        verify_bundle(bundle_copy)
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        verify_bundle(bundle_copy)


def test_writer_is_atomic(tmp_path):
    out = tmp_path / "b"
    with pytest.raises(RuntimeError):
        with BundleWriter(out) as w:
            (w.root / "a.txt").write_text("partial")
            assert not out.exists()
            raise RuntimeError("conversion failed")
    assert not out.exists() and (tmp_path / "b.failed" / "a.txt").exists()
    assert not list(tmp_path.glob(".b.tmp-*"))
    with BundleWriter(out) as w:
        (w.root / "a.txt").write_text("whole")
        w.commit({key: {} for key in REQUIRED_KEYS})
    assert verify_bundle(out)["files"]["a.txt"]["size"] == 5
    with pytest.raises(OutputError, match="already holds a bundle; pass --overwrite"):
        BundleWriter(out)


def test_validate_command_reruns_validation(tmp_path):
    from bksdm_edge.cli import main

    report = tmp_path / "report.json"
    assert main(["validate", "--bundle", str(tiny_bundle("fp32")), "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["passed"] and set(data["components"]) == {"text_encoder", "unet", "vae_decoder"}
