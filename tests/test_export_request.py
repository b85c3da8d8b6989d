"""``ExportRequest``: one frozen request built by every entry point, checked before any model is loaded."""

import argparse
import dataclasses
import importlib.util
from pathlib import Path

import pytest

from _export_helpers import tiny_bundle
from bksdm_edge.errors import InputError
from bksdm_edge.export.base import ExportError
from bksdm_edge.export.bundle import read_manifest
from bksdm_edge.export.cli_args import add_export_args, request_from_args
from bksdm_edge.export.registry import all_targets, format_targets, get_target
from bksdm_edge.export.request import BATCH_AXIS, Calibration, ExportRequest, Validation

ROOT = Path(__file__).resolve().parents[1]


def test_format_defaults_come_from_the_registry():
    onnx = ExportRequest(out="b")
    assert (onnx.precision, onnx.batch, onnx.components) == ("fp32", "dynamic", ("text_encoder", "unet", "vae_decoder"))
    coreml = ExportRequest(out="b", format="coreml")
    assert (coreml.precision, coreml.batch) == ("fp16", 2)  # Apple's Swift pipeline: both CFG rows in one call
    assert ExportRequest(out="b", format="tflite").precision == "fp32"
    for fmt in {f for f, _ in all_targets()}:
        assert sum(t.DEFAULT for t in format_targets(fmt)) == 1, fmt


@pytest.mark.parametrize("changes, message", [
    ({"precision": "int4"}, "choose from .*fp16.*fp32"),
    ({"components": ("unet", "refiner")}, "unknown components \\['refiner'\\]"),
    ({"components": ("unet", "unet")}, "listed twice"),
    ({"batch": 4}, "batch must be 1, 2"),
    ({"format": "tflite", "batch": "dynamic"}, "a U-Net batch axis is not possible"),
    ({"height": -64}, "height must be a positive"),
    ({"format": "tflite", "dynamic": True}, "static shapes only"),
    ({"options": {"attention": "split-einsum"}}, "onnx export takes no format options"),
    ({"validation": Validation(steps=0)}, "validation steps must be at least 1"),
])
def test_bad_requests_fail_on_construction(changes, message):
    with pytest.raises(ExportError, match=message):
        ExportRequest(out="b", **changes)


def test_request_is_frozen_and_replace_checks_again():
    request = ExportRequest(out="b", calibration=Calibration(prompts="p.txt"))
    assert isinstance(request.out, Path) and isinstance(request.calibration.prompts, Path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.batch = 2
    with pytest.raises(TypeError):
        request.options["x"] = 1
    assert request.replace(batch=2).batch == 2
    with pytest.raises(ExportError):
        request.replace(batch=3)
    assert request.to_json()["calibration"]["prompts"] == "p.txt"


def test_only_the_unet_gets_the_requested_batch(tiny_model):
    request = ExportRequest(out="b", batch=2, height=128, components=("text_encoder", "unet", "vae_decoder",
                                                                      "vae_encoder"))
    shapes = {c: request.component_shape(c, tiny_model) for c in request.components}
    assert {c: s.batch for c, s in shapes.items()} == {"text_encoder": 1, "unet": 2, "vae_decoder": 1,
                                                      "vae_encoder": 1}
    assert {(s.height, s.width) for s in shapes.values()} == {(128, 64)}  # width: the native 64 px of tiny-sd
    with pytest.raises(InputError, match="--height 100 is not a positive multiple of 64.*use 64 or 128"):
        request.replace(height=100).component_shape("unet", tiny_model)


def test_onnx_default_is_a_unet_batch_axis_traced_at_the_cfg_batch(tiny_model):
    """The ONNX default U-Net batch is an axis (benchmarks/results/unet_batch/), exported and validated at 2; other
    formats keep their static default; text encoder and VAE stay at batch 1."""
    request = ExportRequest(out="b")
    assert request.batch == BATCH_AXIS == get_target("onnx", "fp32").DEFAULT_BATCH
    assert {c: request.component_shape(c, tiny_model).batch for c in request.components} == {
        "text_encoder": 1, "unet": 2, "vae_decoder": 1}
    unet = request.target.component_options("unet", request)["dynamic_axes"]
    assert unet == {"sample": {0: "batch"}, "timestep": {0: "batch"}, "encoder_hidden_states": {0: "batch"},
                    "timestep_cond": {0: "batch"}, "out_sample": {0: "batch"}}  # timestep_cond: LCM U-Nets only
    assert "dynamic_axes" not in request.target.component_options("vae_decoder", request)
    # a static U-Net keeps a free timestep length (optimum feeds its one timestep as [1])
    static = request.replace(batch=2).target.component_options("unet", request.replace(batch=2))["dynamic_axes"]
    assert static == {"timestep": {0: "timestep_batch"}}
    assert ExportRequest(out="b", format="tflite").batch == 1


def test_batch2_bundle_has_batch1_text_encoder_and_decoder():
    manifest = read_manifest(tiny_bundle("fp32", batch=2))
    assert manifest["image"]["batch"] == 2
    batches = {c: e["inputs"][0]["shape"][0] for c, e in manifest["components"].items()}
    assert batches == {"text_encoder": 1, "unet": 2, "vae_decoder": 1}


def _script_parser(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "export" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_cli_and_script_build_the_same_request(fmt, tmp_path):
    argv = ["--model", "builtin:tiny-sd", "--precision", "fp16", "--batch", "2", "--components", "unet,vae_decoder",
            "--out", str(tmp_path / "b"), "--no-progress"]
    cli = argparse.ArgumentParser()
    add_export_args(cli)
    script = argparse.ArgumentParser()
    add_export_args(script, formats=(fmt,))
    from_cli = request_from_args(cli.parse_args(["--format", fmt, *argv]))
    assert from_cli == request_from_args(script.parse_args(argv))
    assert from_cli == ExportRequest(out=tmp_path / "b", model="builtin:tiny-sd", format=fmt, precision="fp16",
                                     batch=2, components=("unet", "vae_decoder"), progress=False)


def test_precision_help_is_made_from_the_targets():
    parser = argparse.ArgumentParser()
    add_export_args(parser)
    text = next(a.help for a in parser._actions if "--precision" in a.option_strings)
    for target in all_targets().values():
        assert f"{target.PRECISION} = {target.DESCRIPTION}" in text, target.name()
    # No measured speeds in help text or descriptions: numbers live in benchmarks/results and the docs.
    assert not any(unit in t.DESCRIPTION for t in all_targets().values() for unit in (" s ", " ms", "x faster"))


def test_calibration_count_and_memory_limit_are_checked(tmp_path):
    from bksdm_edge.export.request import Calibration, ExportRequest

    with pytest.raises(ExportError, match="--calibration-count"):
        ExportRequest(out=tmp_path / "b", precision="int8", calibration=Calibration(count=0))
    with pytest.raises(ExportError, match="--memory-limit"):
        ExportRequest(out=tmp_path / "b", memory_limit=-1)
    assert ExportRequest(out=tmp_path / "b", precision="int8", calibration=Calibration(count=None)).calibration.count is None


def test_cli_calibration_count_zero_means_every_prompt_and_memory_limit_is_gib(tmp_path):
    cli = argparse.ArgumentParser()
    add_export_args(cli)
    args = ["--format", "onnx", "--precision", "int8", "--out", str(tmp_path / "b")]
    request = request_from_args(cli.parse_args([*args, "--calibration-count", "0", "--memory-limit", "1.5"]))
    assert request.calibration.count is None and request.memory_limit == int(1.5 * 2**30)
    default = request_from_args(cli.parse_args(args))
    assert default.calibration.count == Calibration.count == 4 and default.memory_limit is None
