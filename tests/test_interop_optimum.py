"""Our ONNX bundles in the tools users already have: optimum's ORT pipeline (the real optimum-onnx 0.1.0) and
diffusers' configs.

- The optimum tests (marker ``interop``) run ``ORTDiffusionPipeline.from_pretrained(bundle, export=False)`` in a
  separate venv (optimum-onnx pins transformers < 5; ours is 5.x), created once from the pinned
  ``tests/data/interop/optimum-onnx.txt`` and cached (``tests/_aux_venv.py``). They are a CI step of their own
  (``make test-interop``, run by ``.ci/run`` after the default suite): creating the venv on a clean machine takes
  minutes and needs the package registry, which the default suite's 15-minute budget and offline runs do not have.
- The config test runs in the default suite: every component folder's ``config.json`` is exactly what
  ``StableDiffusionPipeline.save_pretrained`` writes for the source model.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

import pytest

from _export_helpers import ROOT as EXPORTS, _model

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "data" / "interop" / "optimum-onnx.txt"
SIZE = 64  # builtin:tiny-sd's native size

# Runs in optimum's venv: load each bundle as optimum documents it, 2 steps with and without guidance; record the
# batch of every U-Net call (the CFG batch must reach our U-Net) and the image.
OPTIMUM_SCRIPT = """
import json, sys
import numpy as np, torch
from optimum.onnxruntime import ORTDiffusionPipeline

for bundle in sys.argv[1:]:
    pipe = ORTDiffusionPipeline.from_pretrained(bundle, export=False)
    batches = []
    run = pipe.unet.session.run
    def counted(names, feeds, *a, **k):
        batches.append(int(feeds["sample"].shape[0]))
        return run(names, feeds, *a, **k)
    pipe.unet.session.run = counted
    result = {"bundle": bundle, "pipeline": type(pipe).__name__, "runs": []}
    for guidance in ((7.5,) if bundle.endswith("-b2") else (7.5, 1.0)):
        batches.clear()
        image = pipe("a photo of a red car", num_inference_steps=2, guidance_scale=guidance, height=%(size)d,
                     width=%(size)d, output_type="np", generator=torch.Generator().manual_seed(0)).images
        result["runs"].append({"guidance": guidance, "shape": list(image.shape), "unet_batches": list(batches),
                               "finite": bool(np.isfinite(image).all()), "std": float(image.std())})
    print("RESULT " + json.dumps(result), flush=True)
""" % {"size": SIZE}


@functools.lru_cache(maxsize=None)
def default_bundle(name: str) -> Path:
    """``bksdm-edge export --format onnx`` with no shape flags (the default U-Net batch), of tiny-sd or its
    BK-SDM-Tiny student (no mid block); ``fp32-b2`` is the static ``--batch 2`` bundle."""
    from bksdm_edge.export.pipeline import ExportRequest, export_bundle

    model = _model()
    precision, batch = {"fp32": ("fp32", None), "int8": ("int8", None), "bk-tiny": ("fp32", None),
                        "fp32-b2": ("fp32", 2)}[name]
    if name == "bk-tiny":
        from dataclasses import replace

        from bksdm_edge.student import build_student

        unet, _ = build_student(model.unet, "bk-tiny")
        assert unet.mid_block is None
        model = replace(model, unet=unet, info={**model.info, "student": {"variant": "bk-tiny"}})
    components = ("text_encoder", "unet", "vae_decoder") + (("vae_encoder",) if name == "fp32" else ())
    return export_bundle(ExportRequest(out=EXPORTS / f"interop-{name}", model="builtin:tiny-sd", precision=precision,
                                       batch=batch, components=components, progress=False), model=model)


@pytest.fixture(scope="module")
def optimum_python():
    from _aux_venv import separate_python

    python, why = separate_python("optimum-onnx", REQUIREMENTS)
    # Not a skip: this step exists to prove the claim; a venv that cannot be made is a failure to look at.
    assert python is not None, why
    return python


@pytest.mark.interop
def test_optimum_runs_our_onnx_bundles_with_guidance(optimum_python, tmp_path):
    """fp32, int8 and a BK-SDM-Tiny student bundle with the default shapes, and a static ``--batch 2`` bundle:
    optimum's ``ORTStableDiffusionPipeline`` loads each as it is and runs 2 steps; with guidance 7.5 the U-Net gets
    the CFG batch of 2 in one call, without guidance batch 1 (the static batch-2 bundle only with guidance); the
    fp32 bundle has the VAE encoder too (optimum loads it as its ORTVaeEncoder)."""
    names = ("fp32", "int8", "bk-tiny", "fp32-b2")
    bundles = {str(default_bundle(n)): n for n in names}
    # The static batch-2 U-Net: batch 2 rows, and a free timestep length (optimum feeds the one timestep as [1]).
    unet = json.loads((default_bundle("fp32-b2") / "manifest.json").read_text())["components"]["unet"]
    shapes = {t["name"]: t["shape"] for t in unet["inputs"]}
    assert shapes["sample"][0] == 2 and shapes["encoder_hidden_states"][0] == 2 and isinstance(shapes["timestep"][0], str)
    script = tmp_path / "run_optimum.py"
    script.write_text(OPTIMUM_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {"HF_HUB_OFFLINE": "1"}
    res = subprocess.run([str(optimum_python), str(script), *bundles], capture_output=True, text=True, timeout=900,
                         env=env, cwd=tmp_path)
    results = {bundles[r["bundle"]]: r for r in
               (json.loads(line[len("RESULT "):]) for line in res.stdout.splitlines() if line.startswith("RESULT "))}
    failed_at = next((n for n in names if n not in results), None)
    assert res.returncode == 0 and not failed_at, f"optimum failed on the {failed_at} bundle:\n{res.stderr[-4000:]}"
    for name, result in results.items():
        assert result["pipeline"] == "ORTStableDiffusionPipeline", name
        for run in result["runs"]:
            assert run["shape"] == [1, SIZE, SIZE, 3] and run["finite"], (name, run)
            assert run["std"] > 0.01, f"{name}: a constant image {run}"
        # guided: both CFG rows in one call per U-Net evaluation (PNDM evaluates 3 times for 2 steps); unguided: one row
        guided = result["runs"][0]["unet_batches"]
        assert set(guided) == {2} and len(guided) >= 2, (name, result["runs"][0])
        if name != "fp32-b2":
            assert set(result["runs"][1]["unet_batches"]) == {1}, (name, result["runs"][1])


def test_default_onnx_bundle_has_a_unet_batch_axis_and_batch1_text_encoder_and_decoder():
    manifest = json.loads((default_bundle("fp32") / "manifest.json").read_text())
    assert manifest["image"]["batch"] == "dynamic"
    comps = manifest["components"]
    unet = {t["name"]: t["shape"] for t in comps["unet"]["inputs"] + comps["unet"]["outputs"]}
    assert {n: s[0] for n, s in unet.items()} == {"sample": "batch", "timestep": "batch",
                                                  "encoder_hidden_states": "batch", "out_sample": "batch"}
    assert all(isinstance(d, int) for s in unet.values() for d in s[1:])  # only the batch is free
    for name in ("text_encoder", "vae_decoder"):
        assert all(isinstance(d, int) for t in comps[name]["inputs"] for d in t["shape"]), name
        assert comps[name]["inputs"][0]["shape"][0] == 1, name


def test_component_configs_are_what_diffusers_writes(tmp_path):
    """Every component folder holds the config.json that ``StableDiffusionPipeline.save_pretrained`` writes for the
    source model (VAE decoder and encoder: the VAE's), the scheduler folder its scheduler_config.json, and the
    tokenizer folder loads as the pipeline's tokenizer."""
    from transformers import CLIPTokenizer

    from bksdm_edge.loading import load_model

    bundle = default_bundle("fp32")
    model = load_model("builtin:tiny-sd")
    model.to_pipeline().save_pretrained(tmp_path / "diffusers")
    read = lambda p: json.loads(p.read_text())  # noqa: E731
    for component, source in (("unet", "unet"), ("text_encoder", "text_encoder"), ("vae_decoder", "vae"),
                              ("vae_encoder", "vae")):
        assert read(bundle / component / "config.json") == read(tmp_path / "diffusers" / source / "config.json"), component
    assert read(bundle / "scheduler" / "scheduler_config.json") == read(
        tmp_path / "diffusers" / "scheduler" / "scheduler_config.json")
    ours = CLIPTokenizer.from_pretrained(bundle / "tokenizer")
    assert ours("a red car", padding="max_length", max_length=77).input_ids == model.tokenizer(
        "a red car", padding="max_length", max_length=77).input_ids
    assert ours.model_max_length == 77
    index = read(bundle / "model_index.json")
    assert index["_class_name"] == "ORTStableDiffusionPipeline"
    assert index["scheduler"] == ["diffusers", type(model.scheduler).__name__]
    assert {k for k, v in index.items() if v == ["diffusers", "OnnxRuntimeModel"]} == {"text_encoder", "unet",
                                                                                       "vae_decoder", "vae_encoder"}


def test_vae_encoder_gives_the_latent_distribution_optimum_wraps():
    """optimum's ORTVaeEncoder turns a ``latent_parameters`` output (mean and log-variance) into the
    DiagonalGaussianDistribution that img2img samples from; ours is that, checked against diffusers."""
    import numpy as np
    import torch

    from bksdm_edge.export.onnx import load_runner

    model = _model()
    bundle = default_bundle("fp32")
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = load_runner(bundle / "vae_encoder" / "model.onnx")({"sample": image.numpy()})
    assert list(out) == ["latent_parameters"]
    with torch.no_grad():
        dist = model.vae.encode(image).latent_dist
    np.testing.assert_allclose(out["latent_parameters"], dist.parameters.numpy(), atol=1e-4)
