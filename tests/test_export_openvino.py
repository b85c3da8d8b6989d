"""OpenVINO export: every registered precision through the shared validation, the bundle layout optimum-intel
loads, the torch-free runtime (f32/bf16), and generate's parity with the ONNX bundle."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from _export_helpers import (_model, convert_and_validate, seeded_feeds, tiny_bundle, tiny_ov_bundle,  # noqa: E402
                             tiny_real_inputs)
from bksdm_edge.export import openvino as ov_backend  # noqa: E402
from bksdm_edge.export.bundle import BundleError  # noqa: E402
from bksdm_edge.export.components import COMPONENTS, ShapeConfig  # noqa: E402
from bksdm_edge.export.pipeline import ExportRequest, export_bundle  # noqa: E402
from bksdm_edge.export.registry import get_target, precisions  # noqa: E402
from bksdm_edge.metrics import psnr  # noqa: E402

ROOT = Path(__file__).parents[1]
SHAPE = ShapeConfig(height=64, width=64)
PROMPT = "a photo of a red car"
# Every component at fp32; the reduced precisions on the components whose recipe differs (the text encoder is
# weight-only in int8, the U-Net and VAE decoder fully quantized).
COMPONENTS_TESTED = {"fp32": list(COMPONENTS), "int8": ["text_encoder", "unet", "vae_decoder"]}


@pytest.fixture(scope="module")
def real_inputs():
    """Seeded and trajectory validation sets and a small calibration set (1 prompt x 2 steps) for every component."""
    return tiny_real_inputs(SHAPE.height)


@pytest.mark.parametrize("precision", precisions("openvino"))
def test_every_component_exports_and_validates(precision, tiny_model, real_inputs, tmp_path):
    import openvino as ov

    target = get_target("openvino", precision)
    failures = []
    for name in COMPONENTS_TESTED.get(precision, ["text_encoder", "unet"]):
        converted, report = convert_and_validate(target, name, tiny_model, real_inputs[name], tmp_path / name)
        # optimum-intel's layout: openvino_model.xml/.bin and the source's config.json per component folder.
        assert sorted(f.name for f in converted.files) == ["config.json", "openvino_model.bin", "openvino_model.xml"]
        assert all(isinstance(d, int) for t in converted.inputs for d in t.shape), "static shapes by default"
        failures += report.failures
        model = ov.Core().read_model(str(converted.path))
        _check_recipe(precision, name, model)
    assert not failures, failures


def _check_recipe(precision: str, component: str, model) -> None:
    """What each precision stores: int8 weight constants, FakeQuantize only where activations are quantized,
    fp16 weights for fp16, and attention (SDPA) left float by the int8 recipe."""
    types = [op.get_type_name() for op in model.get_ops()]
    const_types = {op.get_element_type().get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant"}
    fully_quantized = precision == "int8" and component != "text_encoder"
    assert ("FakeQuantize" in types) == fully_quantized, (precision, component)
    if precision.startswith("int8"):
        assert {"i8", "u8"} & const_types, "int8 weights are stored as 8-bit constants"
    if precision == "fp16":
        assert "f16" in const_types
    if precision == "fp32":
        assert not {"f16", "i8", "u8"} & const_types
    if fully_quantized and component == "unet":
        sdpa = [op for op in model.get_ops() if op.get_type_name() == "ScaledDotProductAttention"]
        assert sdpa, "OpenVINO fuses attention into ScaledDotProductAttention"
        for op in sdpa:  # Q (input 0) is not quantized: attention stays float
            assert op.input(0).get_source_output().get_node().get_type_name() != "FakeQuantize"


def test_attention_quantized_on_request(tiny_model, real_inputs, tmp_path):
    import openvino as ov

    spec = COMPONENTS["unet"]
    converted = ov_backend.convert(spec.module(tiny_model), spec.example_inputs(tiny_model, SHAPE), spec.output_names,
                                   tmp_path, "int8", calibration=real_inputs["unet"].calibration,
                                   options={"quantization": "ptq", "attention": "int8"})
    assert converted.extra["attention"] == "int8" and converted.extra["float_attention_ops"] == 0
    model = ov.Core().read_model(str(converted.path))
    sdpa = [op for op in model.get_ops() if op.get_type_name() == "ScaledDotProductAttention"]
    assert any(op.input(0).get_source_output().get_node().get_type_name() == "FakeQuantize" for op in sdpa)


def test_memory_refusal_before_any_work(tiny_model, tmp_path):
    from bksdm_edge.export.memory import MemoryRefused

    spec = COMPONENTS["unet"]
    with pytest.raises(MemoryRefused, match=r"OpenVINO int8 conversion of a .*M-parameter model needs about .* GiB"):
        ov_backend.convert(spec.module(tiny_model), spec.example_inputs(tiny_model, SHAPE), spec.output_names,
                           tmp_path / "unet", "int8", options={"quantization": "ptq", "memory_limit_bytes": 2**20})
    assert not (tmp_path / "unet").exists(), "nothing is written before the check"


def test_export_refuses_before_recording_when_the_estimate_does_not_fit(tmp_path):
    """The shared pre-flight (memory.check_export_memory) knows OpenVINO's estimate: refused before any input is
    recorded, nothing written."""
    from bksdm_edge.export.memory import MemoryRefused

    request = ExportRequest(out=tmp_path / "b", model="builtin:tiny-sd", format="openvino", precision="int8",
                            memory_limit=2**20, progress=False)
    with pytest.raises(MemoryRefused, match="OpenVINO int8 conversion of a"):
        export_bundle(request, model=_model())
    assert not (tmp_path / "b").exists()


def test_every_full_size_conversion_is_estimated_under_16_gb():
    """The 16 GB rule (issue 19): the SD-v1.4 U-Net (the largest component, 860M parameters) converts at every
    precision within 16 GiB, the built module included; the estimate is fitted above measured peaks."""
    from bksdm_edge.export.memory import GIB, weight_bytes

    sd14_unet = 859_520_964
    for precision in ov_backend.MEMORY:
        total = ov_backend.memory_estimate(sd14_unet, precision).total + weight_bytes(sd14_unet)
        assert total <= 16 * GIB, (precision, total / GIB)


def test_static_ir_is_reshapeable_to_the_cfg_batch(tiny_model, tmp_path):
    """The IR declares static shapes, yet reshapes (optimum-intel sends batch 2 to the U-Net under CFG)."""
    import openvino as ov

    spec = COMPONENTS["unet"]
    converted = ov_backend.convert(spec.module(tiny_model), spec.example_inputs(tiny_model, SHAPE), spec.output_names,
                                   tmp_path, "fp32")
    assert converted.inputs[0].shape == (1, 4, 8, 8)
    model = ov.Core().read_model(str(converted.path))
    model.reshape({"sample": [2, 4, 16, 8], "timestep": [2], "encoder_hidden_states": [2, 77, 32]})
    inputs = spec.example_inputs(tiny_model, ShapeConfig(height=128, width=64, batch=2))
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled({k: v.numpy() for k, v in inputs.items()})[0]
    import torch

    with torch.no_grad():
        ref = spec.module(tiny_model)(*inputs.values()).numpy()
    assert out.shape == (2, 4, 16, 8) and np.allclose(out, ref, atol=1e-4)


def test_runner_precision_threads_and_execution_info(tmp_path):
    bundle = ov_bundle("fp32")
    path = bundle / "unet" / "openvino_model.xml"
    run_f32 = ov_backend.load_runner(path, threads=1)
    info = ov_backend.execution_info(run_f32.compiled)
    assert info["inference_precision"] == "f32" and info["threads"] == 1
    assert any(k.startswith("Convolution:") for k in info["kernels"]), info
    with pytest.raises(Exception, match="inference precision 'fp8'"):
        ov_backend.load_runner(path, inference_precision="fp8")
    if ov_backend.cpu_has_bf16():
        info = ov_backend.execution_info(ov_backend.load_runner(path, inference_precision="bf16").compiled)
        assert info["inference_precision"] == "bf16"
        assert "bf16" in info["runtime_precisions"], info


def test_node_times_split_a_step_by_layer_type_and_unet_block(tmp_path):
    """The profile behind cpu-full's "where the time goes": per-node times of the last call, by type and block."""
    path = ov_bundle("fp32") / "unet" / "openvino_model.xml"
    plain = ov_backend.load_runner(path, threads=1)
    plain(seeded_feeds(plain.compiled.inputs))
    assert ov_backend.node_times(plain) == []  # per-node timing is off unless asked for
    run = ov_backend.load_runner(path, threads=1, profile=True)
    run(seeded_feeds(run.compiled.inputs))
    nodes = ov_backend.node_times(run)
    assert nodes and nodes == sorted(nodes, key=lambda n: -n["seconds"])
    blocks = ov_backend.time_by(nodes, "block")
    assert {"down_blocks.0", "up_blocks.0"} <= set(blocks), blocks
    assert sum(ov_backend.time_by(nodes, "type").values()) == pytest.approx(sum(n["seconds"] for n in nodes))
    assert "Convolution" in ov_backend.time_by(nodes, "type")


# --------------------------------------------------------------------------------------------------------------
# bundles


def ov_bundle(precision: str = "fp32") -> Path:
    return tiny_ov_bundle(precision)


def test_bundle_manifest_layout_and_tamper_refusal(tmp_path):
    from bksdm_edge.generate import BundlePipeline

    bundle = ov_bundle("fp32")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == "openvino" and manifest["complete"]
    assert manifest["components"]["unet"]["file"] == "unet/openvino_model.xml"
    for c in ("text_encoder", "unet", "vae_decoder"):
        assert {f"{c}/openvino_model.xml", f"{c}/openvino_model.bin", f"{c}/config.json"} <= set(manifest["files"])
        variants = manifest["components"][c]["extra"]["runtime_validation"]
        assert set(variants) == {"bf16"}
        assert variants["bf16"]["checked"] == ov_backend.cpu_has_bf16()
    index = json.loads((bundle / "model_index.json").read_text())
    assert index["_class_name"] == "OVStableDiffusionPipeline" and index["unet"] == ["optimum", "OVModelUnet"]
    # A modified weight file is refused before anything loads.
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    with open(copy / "unet" / "openvino_model.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match="unet/openvino_model.bin"):
        BundlePipeline(copy)


def test_generate_matches_the_onnx_bundle_without_torch(tmp_path):
    """generate from the OpenVINO fp32 bundle (f32) gives the ONNX fp32 bundle's image (>= 40 dB), torch-free."""
    from PIL import Image

    code = (
        "import sys\n"
        "from bksdm_edge.generate import generate\n"
        f"for fmt, b in (('ov', {str(ov_bundle('fp32'))!r}), ('onnx', {str(tiny_bundle('fp32'))!r})):\n"
        f"    generate(b, {PROMPT!r}, {str(tmp_path)!r} + f'/{{fmt}}.png', steps=4, seed=3, threads=2,\n"
        "             inference_precision='f32' if fmt == 'ov' else None)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
    ov_img, onnx_img = (np.asarray(Image.open(tmp_path / f"{f}.png")).astype(np.float32) / 255 for f in ("ov", "onnx"))
    assert ov_img.shape == (64, 64, 3)
    value = psnr(onnx_img, ov_img, peak=1.0)
    assert value >= 40.0, f"OpenVINO vs ONNX image PSNR {value:.1f} dB"


def test_inference_precision_choice(tmp_path, monkeypatch):
    """auto chooses among f32 and the variants that passed the bundle's validation and this CPU runs (measured when
    several: tests/test_generate_auto.py); named choices are checked; the CLI takes --inference-precision and
    --threads."""
    from bksdm_edge.cli import main
    from bksdm_edge.errors import BksdmError
    from bksdm_edge.generate import BundlePipeline, choose_runtime

    target = get_target("openvino", "fp32")
    passed = {"extra": {"runtime_validation": {"bf16": {"checked": True, "passed": True}}}}
    failed = {"extra": {"runtime_validation": {"bf16": {"checked": True, "passed": False, "failures": ["cosine"]}}}}
    unchecked = {"extra": {"runtime_validation": {"bf16": {"checked": False, "why": "no bf16"}}}}
    comps = lambda unet: {"text_encoder": passed, "unet": unet, "vae_decoder": passed}  # noqa: E731
    monkeypatch.setattr(target, "runtime_variant_unavailable", classmethod(lambda cls, v: None))
    asked = []

    def fastest(settings):
        asked.append(settings)
        return "bf16", "measured"

    choice = choose_runtime(target, comps(passed), fastest=fastest)
    assert (choice.name, choice.options, choice.reason) == ("bf16", {"inference_precision": "bf16"}, "measured")
    assert asked == [["f32", "bf16"]]
    no_measure = lambda settings: pytest.fail("measured with one eligible setting")  # noqa: E731
    assert choose_runtime(target, comps(failed), fastest=no_measure).name == "f32"
    choice = choose_runtime(target, comps(unchecked), fastest=no_measure)
    assert choice.name == "f32" and "bf16: not validated" in choice.reason
    choice = choose_runtime(target, comps(passed), "f32", fastest=no_measure)
    assert (choice.name, choice.options, choice.reason) == ("f32", {}, "as asked")
    with pytest.raises(BksdmError, match="failed its bf16 validation"):
        choose_runtime(target, comps(failed), "bf16")
    with pytest.raises(BksdmError, match="no inference precision 'fp8'"):
        choose_runtime(target, comps(passed), "fp8")
    with pytest.raises(BksdmError, match="no inference precision 'bf16'"):  # ONNX has one setting
        choose_runtime(get_target("onnx", "fp32"), comps(passed), "bf16")
    assert choose_runtime(get_target("onnx", "fp32"), comps(passed), fastest=no_measure).name is None
    monkeypatch.setattr(target, "runtime_variant_unavailable", classmethod(lambda cls, v: "no bf16 units"))
    choice = choose_runtime(target, comps(passed), fastest=no_measure)
    assert choice.name == "f32" and choice.reason == "auto: the only one eligible; bf16: no bf16 units"
    with pytest.raises(BksdmError, match="cannot run with inference precision bf16 here: no bf16 units"):
        choose_runtime(target, comps(passed), "bf16")
    monkeypatch.undo()

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pipe = BundlePipeline(ov_bundle("fp32"), threads=1)
    assert pipe.runtime in ("f32", "bf16") and pipe.runtime_reason.startswith("auto")
    assert main(["generate", "--bundle", str(ov_bundle("fp32")), "--prompt", PROMPT, "--steps", "2", "--threads", "1",
                 "--inference-precision", "f32", "--out", str(tmp_path / "a.png")]) == 0
    assert main(["generate", "--bundle", str(ov_bundle("fp32")), "--prompt", PROMPT, "--steps", "2",
                 "--inference-precision", "fp8", "--out", str(tmp_path / "b.png")]) == 2
    assert not (tmp_path / "b.png").exists()


# --------------------------------------------------------------------------------------------------------------
# interop: optimum-intel loads our bundle as it is


@pytest.mark.interop
def test_optimum_intel_loads_the_bundle_and_runs_two_steps(tmp_path):
    """``OVStableDiffusionPipeline.from_pretrained(bundle)`` in a side venv (optimum-intel pins transformers<5.6),
    2 steps with guidance 7.5 (the CFG batch 2 reaches our static batch-1 U-Net through optimum's reshape).
    A CI step of its own with the optimum-onnx test (``make test-interop``): about a minute, most of it the tools."""
    from _aux_venv import side_python

    python, why = side_python("optimum-intel", OPTIMUM_INTEL_PACKAGES)
    # Not a skip: this step exists to prove the claim; a venv that cannot be made is a failure to look at.
    assert python is not None, why
    for precision in ("fp32", "int8"):
        script = tmp_path / "load.py"
        script.write_text(OPTIMUM_INTEL_SCRIPT)
        res = subprocess.run([str(python), str(script), str(ov_bundle(precision))], capture_output=True, text=True,
                             timeout=600, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
        line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
        assert res.returncode == 0 and line, (precision, res.stderr[-3000:])
        result = json.loads(line[0][7:])
        assert result["shape"] == [64, 64, 3] and result["finite"] and result["std"] > 0.01, (precision, result)


# optimum-intel 2.2.0 and the versions it works with (transformers < 5.6, huggingface-hub < 1.22, and the diffusers /
# datasets that still import with that hub); everything else comes from this environment.
OPTIMUM_INTEL_PACKAGES = ("optimum-intel==2.2.0", "optimum==2.3.0", "transformers==5.5.4", "huggingface-hub==1.21.0",
                          "tokenizers==0.22.2", "httpx==0.28.1", "httpcore==1.0.9", "diffusers==0.38.0",
                          "datasets==4.4.1")
OPTIMUM_INTEL_SCRIPT = """
import json, sys
import numpy as np
from optimum.intel import OVStableDiffusionPipeline

pipe = OVStableDiffusionPipeline.from_pretrained(sys.argv[1])
image = pipe("a photo of a red car", num_inference_steps=2, guidance_scale=7.5, height=64, width=64,
             output_type="np").images[0]
print("RESULT " + json.dumps({"shape": list(image.shape), "finite": bool(np.isfinite(image).all()),
                              "std": float(image.std())}))
"""
