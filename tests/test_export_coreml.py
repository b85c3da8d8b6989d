"""Core ML back-end on builtin:tiny-sd: conversion of every component, stored precision, sizes, chunking,
split-einsum attention against diffusers' attention, and clear errors.

Core ML cannot run on Linux, so numeric checks of the converted models are the static ones (spec, stored
weights and their PSNR against PyTorch); on macOS ``load_runner`` is exercised by the shared validation.
Each component is converted once at fp16; int8 and palettize6 recompress that package (same code path
as ``convert(..., "int8")`` after the PyTorch conversion), which keeps the file under a few minutes.
"""

from __future__ import annotations

import pytest
import torch

from bksdm_edge.export import coreml
from bksdm_edge.export.base import ExportError
from bksdm_edge.export.components import COMPONENTS, ShapeConfig, UNetWrapper
from bksdm_edge.export.registry import precisions
from bksdm_edge.export.split_einsum import SplitEinsumAttnProcessor, apply_split_einsum

SHAPE = ShapeConfig(height=64, width=64)
THRESHOLD = 256  # tiny-sd weights are small; compress everything above 256 elements


@pytest.fixture(scope="module")
def student(tiny_model):
    """BK-SDM-Tiny of the toy teacher: no mid block (Apple's converter asserts one; ours must not)."""
    from bksdm_edge.student import build_student

    unet, _ = build_student(tiny_model.unet, "bk-tiny")
    assert unet.mid_block is None
    return unet.eval()


def _component(tiny_model, student, name):
    if name == "unet":
        module = UNetWrapper(student).eval()
    else:
        module = COMPONENTS[name].module(tiny_model)
    batch = 2 if name == "unet" else 1
    return module, COMPONENTS[name].example_inputs(tiny_model, ShapeConfig(64, 64, batch))


@pytest.fixture(scope="module")
def fp16_exports(tiny_model, student, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml")
    result = {}
    for name in COMPONENTS:
        module, example = _component(tiny_model, student, name)
        result[name] = (module, coreml.convert(module, example, COMPONENTS[name].output_names, out / name, "fp16",
                                               options={"weight_threshold": THRESHOLD}))
    return result


# -- conversion, stored precision, sizes -------------------------------------------------------------------


def test_every_component_converts_at_fp16_with_apple_names(fp16_exports):
    expected_inputs = {
        "text_encoder": [("input_ids", (1, 77), "float32")],
        "unet": [("sample", (2, 4, 8, 8), "float32"), ("timestep", (2,), "float32"),
                 ("encoder_hidden_states", (2, 32, 1, 77), "float32")],
        "vae_decoder": [("z", (1, 4, 8, 8), "float32")],
        "vae_encoder": [("image", (1, 3, 64, 64), "float32")],
    }
    for name, (_module, converted) in fp16_exports.items():
        assert converted.path.name == f"{coreml.APPLE_NAMES[name]}.mlpackage"
        assert [(t.name, tuple(t.shape), t.dtype) for t in converted.inputs] == expected_inputs[name]
        assert [t.name for t in converted.outputs] == list(COMPONENTS[name].output_names)
        assert converted.extra["stored_weights"]["stored_precision"] == "fp16"
        assert converted.extra["weight_psnr"]["min_db"] > 60  # fp16 rounding only
        assert coreml.static_check(converted) == []
    unet = fp16_exports["unet"][1]
    assert unet.inputs[2].layout == "NC1S"
    spec = __import__("coremltools").utils.load_spec(str(unet.path))
    meta = dict(spec.description.metadata.userDefined)
    assert meta["com.bksdm_edge.precision"] == "fp16" and meta["com.bksdm_edge.component"] == "unet"
    assert "com.bksdm_edge.version" in meta
    assert {f.name: f.shortDescription for f in spec.description.input}["encoder_hidden_states"]


@pytest.mark.parametrize("precision, stored, ratio", [("int8", "int8", (0.45, 0.65)),
                                                      ("palettize6", "lut6", (0.33, 0.50))])
def test_compressed_precisions_store_the_requested_weights_and_shrink(fp16_exports, tmp_path, precision, stored,
                                                                      ratio):
    for name, (module, fp16) in fp16_exports.items():
        converted = coreml.recompress(fp16, module, precision, tmp_path / name, options={"weight_threshold": THRESHOLD})
        sw = converted.extra["stored_weights"]
        assert sw["stored_precision"] == stored, name
        assert coreml.static_check(converted) == [], name
        # Bytes of the compressed tensors against the same tensors in fp16 (int8 ~1/2, 6-bit ~3/8, plus scales/LUTs).
        kind = sw["weights"][stored]
        assert ratio[0] < kind["bytes"] / (2 * kind["params"]) < ratio[1], (name, kind)
        assert sw["weight_bytes"] < fp16.extra["stored_weights"]["weight_bytes"], name
        assert converted.extra["weight_psnr"]["min_db"] > coreml.WEIGHT_PSNR_FLOOR[precision]
        if precision.startswith("palettize"):
            assert converted.extra["min_deployment_target"] == "iOS17"


@pytest.mark.parametrize("precision", precisions("coreml"))
def test_every_registered_precision_compresses_the_vae_decoder(fp16_exports, tmp_path, precision):
    module, fp16 = fp16_exports["vae_decoder"]
    converted = fp16 if precision == "fp16" else coreml.recompress(fp16, module, precision, tmp_path,
                                                                   options={"weight_threshold": THRESHOLD})
    assert converted.extra["stored_weights"]["stored_precision"] == coreml.EXPECTED_STORAGE[precision]
    assert coreml.static_check(converted) == []


def test_static_check_catches_a_wrong_precision(fp16_exports):
    from dataclasses import replace

    _module, fp16 = fp16_exports["vae_decoder"]
    problems = coreml.static_check(replace(fp16, precision="palettize6"))
    assert any("no lut6 weights stored" in p for p in problems)


# -- chunking ---------------------------------------------------------------------------------------------


def test_unet_chunks_compose_to_the_unet_in_pytorch(tiny_model):
    module = UNetWrapper(tiny_model.unet).eval()  # the teacher: with a mid block
    example = COMPONENTS["unet"].example_inputs(tiny_model, ShapeConfig(64, 64, 2))
    for n_up in (0, 1, 2):
        c1, c2, _ = coreml.build_unet_chunks(tiny_model.unet, n_up=n_up, example=example)
        with torch.no_grad():
            y = c2(example["encoder_hidden_states"], *c1(*example.values()))
            assert torch.allclose(y, module(*example.values()), atol=1e-5)


def test_chunked_unet_specs_feed_chunk1_outputs_into_chunk2(tiny_model, student, tmp_path):
    module, example = _component(tiny_model, student, "unet")
    converted = coreml.convert(module, example, ["out_sample"], tmp_path, "fp16", options={"chunk_unet": True})
    assert [c["name"] for c in converted.extra["chunks"]] == ["UnetChunk1", "UnetChunk2"]
    in1, out1 = coreml.spec_io(tmp_path / "UnetChunk1.mlpackage")
    in2, out2 = coreml.spec_io(tmp_path / "UnetChunk2.mlpackage")
    assert [t.name for t in in1] == ["sample", "timestep", "encoder_hidden_states"]
    assert [t.name for t in out2] == ["out_sample"]
    # Swift feeds chunk 2 with chunk 1's outputs merged with the original inputs: every input must be one of them.
    available = {t.name: t.shape for t in out1} | {t.name: t.shape for t in in1}
    assert all(available.get(t.name) == t.shape for t in in2)
    assert {t.name for t in out1} <= {t.name for t in in2}
    assert any("chunking was not needed" in n for n in converted.extra["notes"])
    assert coreml.static_check(converted) == []


# -- split-einsum attention -------------------------------------------------------------------------------


def test_split_einsum_equals_each_attention_module(tiny_model):
    from diffusers.models.attention_processor import Attention

    converted, count = apply_split_einsum(tiny_model.unet)
    assert count == sum(isinstance(m, Attention) for m in tiny_model.unet.modules())
    originals = dict(tiny_model.unet.named_modules())
    g = torch.Generator().manual_seed(0)
    for name, attn in converted.named_modules():
        if not isinstance(attn, Attention):
            continue
        assert isinstance(attn.processor, SplitEinsumAttnProcessor) and isinstance(attn.to_q, torch.nn.Conv2d)
        ref = originals[name]
        x = torch.randn(2, 16, ref.query_dim, generator=g)
        ctx = torch.randn(2, 77, ref.cross_attention_dim, generator=g) if ref.is_cross_attention else None
        with torch.no_grad():
            assert torch.allclose(attn(x, encoder_hidden_states=ctx), ref(x, encoder_hidden_states=ctx), atol=1e-5)


@pytest.mark.parametrize("name", ["unet", "vae_decoder", "vae_encoder"])
def test_split_einsum_equals_the_whole_model(tiny_model, name):
    module = COMPONENTS[name].module(tiny_model)
    example = COMPONENTS[name].example_inputs(tiny_model, ShapeConfig(64, 64, 2))
    converted, _ = apply_split_einsum(module)
    with torch.no_grad():
        assert torch.allclose(converted(*example.values()), module(*example.values()), atol=1e-5)
    # The original is untouched (a copy was converted).
    assert not any(isinstance(getattr(m, "processor", None), SplitEinsumAttnProcessor) for m in module.modules())


def test_split_einsum_accepts_apple_channels_first_text_states(student):
    converted, _ = apply_split_einsum(student)
    attn = converted.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    x = torch.randn(2, 16, attn.query_dim)
    ctx = torch.randn(2, 77, attn.cross_attention_dim)
    with torch.no_grad():
        assert torch.allclose(attn(x, encoder_hidden_states=ctx),
                              attn(x, encoder_hidden_states=coreml.to_apple_text_layout(ctx)), atol=1e-6)


# -- clear errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", precisions("coreml"))
def test_deployment_target_rules(precision):
    if precision.startswith("palettize"):
        assert coreml.resolve_deployment_target(precision, None) == "iOS17"
        with pytest.raises(ExportError, match="needs --min-deployment-target iOS17/macOS14"):
            coreml.resolve_deployment_target(precision, "macOS13")
    else:
        assert coreml.resolve_deployment_target(precision, None) == "iOS16"
        assert coreml.resolve_deployment_target(precision, "iOS16") == "iOS16"


def test_numpy_too_new_for_coremltools_is_a_clear_error(monkeypatch):
    real = coreml._version
    monkeypatch.setattr(coreml, "_version", lambda p: {"numpy": "2.4.1", "coremltools": "9.0"}.get(p) or real(p))
    with pytest.raises(ExportError, match=r"numpy 2.4.1.*pip install 'numpy<2.3'"):
        coreml.check_environment("fp16")


def test_missing_scikit_learn_is_a_clear_error_for_palettization(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "sklearn" else real(n, *a))
    coreml.check_environment("int8")  # int8 does not need it
    with pytest.raises(ExportError, match="scikit-learn, which is not installed"):
        coreml.check_environment("palettize6")


def test_a_module_that_is_not_an_sd_unet_is_refused(tmp_path):
    class NotAUnet(torch.nn.Module):
        def forward(self, sample, timestep, encoder_hidden_states):
            return sample

    example = {"sample": torch.zeros(1, 4, 8, 8), "timestep": torch.zeros(1),
               "encoder_hidden_states": torch.zeros(1, 77, 32)}
    with pytest.raises(ExportError, match="no diffusers UNet2DConditionModel"):
        coreml.convert(NotAUnet(), example, ["out_sample"], tmp_path, "fp16")


def test_cli_help_explains_every_option_and_bad_targets_fail_fast(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "export" / "to_coreml.py"
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True).stdout
    for option in ("--precision", "--attention", "--compute-units", "--min-deployment-target", "--chunk-unet",
                   "--components", "--unet-batch", "palettize6", "split-einsum", "xcrun coremlcompiler"):
        assert option in help_text
    run = subprocess.run([sys.executable, str(script), "--model", "builtin:tiny-sd", "--precision", "palettize6",
                          "--min-deployment-target", "iOS16", "--out", str(tmp_path / "b")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr and "iOS17/macOS14" in run.stderr
    assert not (tmp_path / "b").exists()


# -- full size --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_size_bk_tiny_unet_converts_within_memory():
    """Runs benchmarks/coreml_conversion.py (each stage under flock /tmp/bksdm-heavy.lock in a child process)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(root / "benchmarks" / "coreml_conversion.py")], capture_output=True,
                         text=True, timeout=3 * 3600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads((root / "benchmarks/results/coreml_conversion/results.json").read_text())["rows"]
    assert {r["precision"] for r in rows} == {"fp16", "palettize6"}
    assert all(r["static_check"] == "passed" for r in rows)
