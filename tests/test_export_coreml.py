"""Core ML back-end on builtin:tiny-sd with a BK-SDM-Tiny student U-Net (no mid block: Apple's converter
asserts one; ours must not): the bundle `bksdm-edge export --format coreml` writes, checked against Apple's
Swift contract (contract.py, the table in docs/coreml.md) at fp16, int8 and palettize6 with a chunked
U-Net; stored precision, sizes, chunking, split-einsum attention, and clear errors.

Core ML cannot run on Linux, so numeric checks of the converted models are the static ones (spec, stored
weights and their PSNR against PyTorch); on macOS ``load_runner`` is exercised by the shared validation.
One bundle is converted (fp16, every component, chunked U-Net); int8 and palettize6 recompress its
packages (the same ``_finish`` path as ``convert(..., "int8")`` after the PyTorch conversion), which
keeps the file to a few minutes. `python export/to_coreml.py` is tested end to end in
test_export_coreml_script.py (int8, whole U-Net).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bksdm_edge.export.base import ConvertedModel, ExportError
from bksdm_edge.export.bundle import read_manifest, verify_bundle
from bksdm_edge.export.components import COMPONENTS, ShapeConfig, UNetWrapper
from bksdm_edge.export.coreml import PRECISIONS, RESOURCES
from bksdm_edge.export.coreml import contract, environment
from bksdm_edge.export.coreml.chunking import build_unet_chunks
from bksdm_edge.export.coreml.check import static_check
from bksdm_edge.export.coreml.convert import convert, recompress
from bksdm_edge.export.coreml.package import inspect_package, package_paths, spec_io
from bksdm_edge.export.registry import get_target, precisions
from bksdm_edge.export.split_einsum import SplitEinsumAttnProcessor, apply_split_einsum
from bksdm_edge.export.tensor_io import tensor_info_from_json

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 256  # tiny-sd weights are small; compress everything above 256 elements


@pytest.fixture(scope="module")
def student_dir(tiny_model, tmp_path_factory):
    """A BK-SDM-Tiny student of the toy teacher, saved as `bksdm-edge build` does."""
    from bksdm_edge.student import build_student, save_student

    unet, report = build_student(tiny_model.unet, "bk-tiny")
    assert unet.mid_block is None
    return save_student(unet, tmp_path_factory.mktemp("student") / "bk-tiny", teacher="builtin:tiny-sd", report=report)


@pytest.fixture(scope="module")
def student_model(student_dir):
    from bksdm_edge.loading import load_model

    return load_model("builtin:tiny-sd", unet=student_dir)


@pytest.fixture(scope="module")
def fp16_bundle(student_dir, tmp_path_factory):
    """`bksdm-edge export --format coreml`, every component, chunked U-Net, as a user runs it."""
    from bksdm_edge.cli import main

    out = tmp_path_factory.mktemp("coreml") / "fp16"
    rc = main(["export", "--format", "coreml", "--model", "builtin:tiny-sd", "--unet", str(student_dir),
               "--components", "all", "--chunk-unet", "--weight-threshold", str(THRESHOLD), "--out", str(out),
               "--no-progress"])
    assert rc == 0
    return out


def _converted(bundle: Path, name: str) -> ConvertedModel:
    """The ConvertedModel of a bundle component, as its manifest describes it."""
    entry = read_manifest(bundle)["components"][name]
    return ConvertedModel(bundle / entry["file"], [], [tensor_info_from_json(t) for t in entry["inputs"]],
                          [tensor_info_from_json(t) for t in entry["outputs"]], entry["precision"], entry["extra"])


def _module(model, name):
    return get_target("coreml", "fp16").component_module(name, model)


@pytest.fixture(scope="module")
def bundles(fp16_bundle, student_model, tmp_path_factory):
    """precision -> bundle: the fp16 bundle, and copies whose packages are recompressed to int8 / palettize6."""
    out = {"fp16": fp16_bundle}
    manifest = read_manifest(fp16_bundle)
    for precision in ("int8", "palettize6"):
        dst = tmp_path_factory.mktemp("coreml") / precision
        shutil.copytree(fp16_bundle, dst, ignore=shutil.ignore_patterns("*.mlpackage"))
        for name in manifest["components"]:
            recompress(_converted(fp16_bundle, name), _module(student_model, name), precision, dst / RESOURCES,
                       options={"weight_threshold": THRESHOLD})
        out[precision] = dst
    return out


# -- the bundle and Apple's Swift contract ----------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp16", "int8", "palettize6"])
def test_every_package_matches_the_swift_contract(bundles, precision):
    root = bundles[precision]
    manifest = read_manifest(root)
    resources = root / RESOURCES
    names = sorted(p.stem for p in resources.glob("*.mlpackage"))
    assert names == ["TextEncoder", "UnetChunk1", "UnetChunk2", "VAEDecoder", "VAEEncoder"]
    assert contract.check_resources(resources, manifest) == []
    sizes = contract.bundle_sizes(manifest)
    assert sizes["B"] == 2 and sizes["D"] == 32 and (sizes["h"], sizes["w"]) == (8, 8)
    for path in resources.glob("*.mlpackage"):
        inputs, outputs = spec_io(path)
        assert {t.dtype for t in inputs + outputs} == {"float32"}, path.name  # fp16 inside, fp32 I/O
        stored = inspect_package(path)
        assert stored["stored_precision"] == PRECISIONS[precision].storage, (path.name, stored["weights"])
        assert set(stored["weights"]) <= {"fp16", PRECISIONS[precision].storage}, path.name  # nothing left fp32
    unet = manifest["components"]["unet"]
    assert [t["shape"] for t in unet["inputs"]] == [[2, 4, 8, 8], [2], [2, 32, 1, 77]]
    assert [t["shape"] for t in manifest["components"]["text_encoder"]["inputs"]] == [[1, 77]]
    assert manifest["components"]["vae_encoder"]["outputs"][0]["shape"] == [1, 8, 8, 8]  # mean | log-variance


def test_the_contract_check_catches_what_swift_would_trip_on(bundles, tmp_path):
    manifest = read_manifest(bundles["fp16"])
    resources = tmp_path / RESOURCES
    shutil.copytree(bundles["fp16"] / RESOURCES, resources)
    (resources / "merges.txt").unlink()
    shutil.rmtree(resources / "UnetChunk2.mlpackage")
    shutil.copytree(resources / "VAEDecoder.mlpackage", resources / "Decoder.mlpackage")
    problems = contract.check_resources(resources, manifest)
    assert any("merges.txt is missing" in p for p in problems)
    assert any("UnetChunk1 without its other half" in p for p in problems)
    assert any("packages Swift does not look for: ['Decoder']" in p for p in problems)
    wrong_batch = {**manifest, "image": {**manifest["image"], "batch": 1}}
    assert any("Swift's" in p and "sample" in p for p in contract.check_resources(resources, wrong_batch))


def test_static_check_compares_the_declared_io_dtypes(fp16_bundle):
    """A package whose outputs are not what the export declared (#253: fp16 outputs crashed Swift) is refused."""
    converted = _converted(fp16_bundle, "text_encoder")
    half = [replace(t, dtype="float16") for t in converted.outputs]
    problems = static_check(replace(converted, outputs=half))
    assert any("differ from the exported ones" in p for p in problems)


def test_the_bundle_is_verified_and_its_manifest_says_how_it_was_made(fp16_bundle):
    manifest = verify_bundle(fp16_bundle)
    assert manifest["format"] == "coreml" and manifest["precision"] == "fp16" and manifest["image"]["batch"] == 2
    assert manifest["coreml"]["resources"] == RESOURCES and manifest["coreml"]["chunked_unet"] is True
    assert manifest["coreml"]["min_deployment_target"] == "iOS16"
    for name in ("vocab.json", "merges.txt"):
        assert (fp16_bundle / RESOURCES / name).read_bytes() == (fp16_bundle / "tokenizer" / name).read_bytes()
    report = json.loads((fp16_bundle / "validation.json").read_text())
    assert report["passed"] and report["components"]["unet"]["numeric_checks"].startswith("skipped: Core ML")
    assert manifest["export"]["validation"]["numeric_checks"].startswith("skipped: Core ML")
    spec = __import__("coremltools").utils.load_spec(str(fp16_bundle / RESOURCES / "UnetChunk1.mlpackage"))
    meta = dict(spec.description.metadata.userDefined)
    assert meta["com.bksdm_edge.precision"] == "fp16" and meta["com.bksdm_edge.component"] == "unet"
    assert meta["com.bksdm_edge.variant"] == "bk-tiny"
    assert {f.name: f.shortDescription for f in spec.description.input}["encoder_hidden_states"]


def test_validate_re_runs_the_static_check_and_the_contract(fp16_bundle, tmp_path):
    from bksdm_edge.cli import main

    report = tmp_path / "report.json"
    assert main(["validate", "--bundle", str(fp16_bundle), "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["passed"] and data["bundle"] == [] and set(data["components"]) == {
        "text_encoder", "unet", "vae_decoder", "vae_encoder"}


def test_docs_show_the_contract_table():
    assert contract.contract_table() in (ROOT / "docs" / "coreml.md").read_text()


# -- stored precision and sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize("precision, ratio", [("int8", (0.45, 0.65)), ("palettize6", (0.33, 0.50))])
def test_compressed_precisions_shrink_the_weights(bundles, precision, ratio):
    for path in (bundles[precision] / RESOURCES).glob("*.mlpackage"):
        stored = inspect_package(path)
        fp16 = inspect_package(bundles["fp16"] / RESOURCES / path.name)
        # Bytes of the compressed tensors against the same tensors in fp16 (int8 ~1/2, 6-bit ~3/8, plus scales/LUTs).
        kind = stored["weights"][PRECISIONS[precision].storage]
        assert ratio[0] < kind["bytes"] / (2 * kind["params"]) < ratio[1], (path.name, kind)
        assert stored["weight_bytes"] < fp16["weight_bytes"], path.name


@pytest.mark.parametrize("precision", precisions("coreml"))
def test_every_registered_precision_compresses_the_vae_decoder(fp16_bundle, student_model, tmp_path, precision):
    fp16 = _converted(fp16_bundle, "vae_decoder")
    converted = fp16 if precision == "fp16" else recompress(fp16, _module(student_model, "vae_decoder"), precision,
                                                            tmp_path, options={"weight_threshold": THRESHOLD})
    assert converted.extra["stored_weights"]["stored_precision"] == PRECISIONS[precision].storage
    assert converted.extra["weight_psnr"]["min_db"] > PRECISIONS[precision].weight_psnr_floor
    assert static_check(converted) == []
    target = get_target("coreml", precision)
    assert target.DESCRIPTION.startswith(PRECISIONS[precision].description)
    assert target.tolerance("unet").min_psnr == PRECISIONS[precision].output_psnr
    if precision.startswith("palettize"):
        assert converted.extra["min_deployment_target"] == "iOS17"


def test_static_check_catches_a_wrong_precision(fp16_bundle):
    problems = static_check(replace(_converted(fp16_bundle, "vae_decoder"), precision="palettize6"))
    assert any("no lut6 weights stored" in p for p in problems)


# -- chunking ---------------------------------------------------------------------------------------------


def test_unet_chunks_compose_to_the_unet_in_pytorch(tiny_model):
    module = UNetWrapper(tiny_model.unet).eval()  # the teacher: with a mid block
    example = COMPONENTS["unet"].example_inputs(tiny_model, ShapeConfig(64, 64, 2))
    for n_up in (0, 1, 2):
        c1, c2, _ = build_unet_chunks(tiny_model.unet, n_up=n_up, example=example)
        with torch.no_grad():
            y = c2(example["encoder_hidden_states"], *c1(*example.values()))
            assert torch.allclose(y, module(*example.values()), atol=1e-5)


def test_chunked_unet_feeds_chunk1_outputs_into_chunk2(fp16_bundle):
    converted = _converted(fp16_bundle, "unet")
    assert [c["name"] for c in converted.extra["chunks"]] == ["UnetChunk1", "UnetChunk2"]
    (in1, out1), (in2, out2) = (spec_io(p) for p in package_paths(converted))
    assert [t.name for t in in1] == ["sample", "timestep", "encoder_hidden_states"]
    assert [t.name for t in out2] == ["out_sample"]
    # Swift feeds chunk 2 with chunk 1's outputs merged with the original inputs: every input must be one of them.
    available = {t.name: t.shape for t in out1} | {t.name: t.shape for t in in1}
    assert all(available.get(t.name) == t.shape for t in in2)
    assert {t.name for t in out1} <= {t.name for t in in2}
    assert any("chunking was not needed" in n for n in converted.extra["notes"])


def test_vae_encoder_outputs_apple_latent_distribution(student_model):
    module = _module(student_model, "vae_encoder")
    x = COMPONENTS["vae_encoder"].example_inputs(student_model, ShapeConfig(64, 64, 1))["sample"]
    with torch.no_grad():
        moments = module(x)
        mean = student_model.vae.encode(x).latent_dist.mean
    assert moments.shape[1] == 2 * mean.shape[1] and torch.equal(moments[:, :4], mean)


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


def test_split_einsum_accepts_apple_channels_first_text_states(student_model):
    converted, _ = apply_split_einsum(student_model.unet)
    attn = converted.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    x = torch.randn(2, 16, attn.query_dim)
    ctx = torch.randn(2, 77, attn.cross_attention_dim)
    with torch.no_grad():
        assert torch.allclose(attn(x, encoder_hidden_states=ctx),
                              attn(x, encoder_hidden_states=contract.to_apple_text_layout(ctx)), atol=1e-6)


# -- clear errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", precisions("coreml"))
def test_deployment_target_rules(precision):
    if precision.startswith("palettize"):
        assert environment.resolve_deployment_target(precision, None) == "iOS17"
        with pytest.raises(ExportError, match="needs --min-deployment-target iOS17/macOS14"):
            environment.resolve_deployment_target(precision, "macOS13")
    else:
        assert environment.resolve_deployment_target(precision, None) == "iOS16"
        assert environment.resolve_deployment_target(precision, "iOS16") == "iOS16"


def test_numpy_too_new_for_coremltools_is_a_clear_error(monkeypatch):
    real = environment.package_version
    monkeypatch.setattr(environment, "package_version",
                        lambda p: {"numpy": "2.4.1", "coremltools": "9.0"}.get(p) or real(p))
    with pytest.raises(ExportError, match=r"numpy 2.4.1.*pip install 'numpy<2.3'"):
        environment.check_environment("fp16")


def test_missing_scikit_learn_is_a_clear_error_for_palettization(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "sklearn" else real(n, *a))
    environment.check_environment("int8")  # int8 does not need it
    with pytest.raises(ExportError, match="scikit-learn, which is not installed"):
        environment.check_environment("palettize6")


def test_bad_core_ml_requests_fail_before_any_model_is_loaded():
    from bksdm_edge.export.request import ExportRequest

    for options, message in (({"attention": "flash"}, "unknown --attention"),
                             ({"min_deployment_target": "iOS16"}, "iOS17/macOS14"),
                             ({"chunk_unet": True}, "--chunk-unet needs the unet component"),
                             ({"speed": "max"}, "unknown Core ML options \\['speed'\\]")):
        with pytest.raises(ExportError, match=message):
            ExportRequest(out="b", format="coreml", precision="palettize6", components=("text_encoder",),
                          options=options)
    with pytest.raises(ExportError, match="static shapes only"):
        ExportRequest(out="b", format="coreml", dynamic=True)


def test_a_module_that_is_not_an_sd_unet_is_refused(tmp_path):
    class NotAUnet(torch.nn.Module):
        def forward(self, sample, timestep, encoder_hidden_states):
            return sample

    example = {"sample": torch.zeros(1, 4, 8, 8), "timestep": torch.zeros(1),
               "encoder_hidden_states": torch.zeros(1, 77, 32)}
    with pytest.raises(ExportError, match="no diffusers UNet2DConditionModel"):
        convert(NotAUnet(), example, ["out_sample"], tmp_path, "fp16")


# -- full size --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_size_bk_tiny_unet_converts_within_memory():
    """Runs benchmarks/coreml_conversion.py (each stage under flock /tmp/bksdm-heavy.lock in a child process)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "coreml_conversion.py")], capture_output=True,
                         text=True, timeout=3 * 3600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads((ROOT / "benchmarks/results/coreml_conversion/results.json").read_text())["rows"]
    assert {r["precision"] for r in rows} == {"fp16", "palettize6"}
    assert all(r["static_check"] == "passed" for r in rows)
