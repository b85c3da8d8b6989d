"""Golden vectors for the Kotlin engine, written from the numpy runtime's own code paths.

``python -m bksdm_edge.runtime.golden --out DIR`` writes:

- ``tokenizer.json``: token ids for a fixed prompt set (long, Unicode, empty, special
  tokens, ...) with both pad conventions (SD-v1 pad 49407, SD-v2 pad 0 = "!");
- ``tokenizer/vocab.json`` + ``tokenizer/merges.txt``: the part of CLIP's vocabulary
  those prompts touch. Every merge that the BPE looked up and found is kept, in rank
  order, so BPE over the subset takes exactly the same merges as over the full files;
- ``schedulers.json``: for each scheduler and config, timesteps, sigmas, the alpha
  products at the timesteps and init_noise_sigma for 1, 2, 10, 25 and 50 steps, and
  full runs (1 and 10 steps) on seeded inputs with every intermediate sample; a
  scheduler that draws noise (LCM) takes it from ``NoiseStream(noise_seed)``; LCM also
  runs on the config of a distillation with 25 solver steps (1, 2, 4, 8 steps);
- ``bundle/``: a fake bundle whose ``manifest.json`` comes from the real manifest builder
  (``bundle_golden``), for the engine's manifest parsing and bundle verification;
- ``image.json``: classifier-free guidance, the LCM guidance embedding, latent
  unscaling, decoder output -> RGB, the portable Gaussian noise (also drawn in
  consecutive pieces of one stream), and the decoder kinds (``vae.kind`` of the manifest:
  SD's AutoencoderKL decodes latents / 0.18215, a tiny TAESD decoder latents / 1.0; no
  kind means AutoencoderKL; an unknown kind is refused).

Floats are written as the shortest decimal that round-trips their float32 value, so
the files are byte-for-byte reproducible and small. Regenerate them into
``android_demo/engine/src/test/resources/golden/`` after changing the runtime;
``tests/test_golden_vectors.py`` fails while they are stale.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from bksdm_edge.runtime.image import (
    VAE_DECODER_KINDS,
    classifier_free_guidance,
    decoder_output_to_rgb,
    guidance_scale_embedding,
    latents_for_decoder,
    vae_decoder_kind,
)
from bksdm_edge.runtime.noise import NoiseStream, gaussian_noise
from bksdm_edge.runtime.schedulers import SCHEDULERS, scheduler_from_config
from bksdm_edge.runtime.tokenizer import ClipTokenizer
from bksdm_edge.tokenizer_files import write_clip_tokenizer_files

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "android_demo" / "engine" / "src" / "test" / "resources" / "golden"
FORMAT_VERSION = 1

PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "A Red Car, Parked In Front Of A House. 4K, HDR!!!",
    "",
    "   \t\n ",
    "hello!! world! ... ??? ;-) (((masterpiece))) [best quality] {x|y} <lora:z:0.8>",
    "It's a dog's life, they'll've said; we're I'M you'd",
    "café crème brûlée, naïve façade, Ångström, Ελληνικά ΟΔΟΣ, İstanbul, straße",
    "東京の夜景、富士山 and 서울 타워 with 北京烤鸭",
    "a cat 🐱 wearing sunglasses 😎🕶️ and a 👩🏽‍🚀 flag 🇫🇷",
    "numbers 2024 3.14159 1,000,000 and 0x1F",
    "a\u3000b\u00a0c\u2003d\u200be\u0085f\x1cg",
    "e\u0301 vs \u00e9 (NFC), ﬁ ligature, Ⅻ roman, ² superscript",
    "x<|endoftext|>y<|startoftext|>z <|ENDOFTEXT|>",
    "&amp; &lt;html&gt; stays literal",
    "supercalifragilisticexpialidocious " * 20,
    "a very long prompt, " + ", ".join(f"detail number {i}" for i in range(60)),
]
PAD_IDS = (49407, 0)

SD_V1_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "trained_betas": None,
}
SCHEDULER_CONFIGS = {
    "sd-v1": SD_V1_SCHEDULER,
    "sd-v2-v": {**SD_V1_SCHEDULER, "prediction_type": "v_prediction"},
    "trailing-linear": {
        **SD_V1_SCHEDULER,
        "timestep_spacing": "trailing",
        "steps_offset": 0,
        "beta_schedule": "linear",
        "clip_sample": True,
    },
}
# The latent scaling each decoder kind is exported with (the VAE config's scaling_factor).
DECODER_SCALING = {"autoencoder-kl": 0.18215, "autoencoder-tiny": 1.0}
TIMESTEP_STEPS = (1, 2, 10, 25, 50)
RUN_STEPS = (1, 10)
RUN_SHAPE = (1, 4, 2, 2)
# The LCMScheduler a `distill --objective lcm --num-ddim-timesteps 25` run writes (only LCM reads these keys).
LCM_CONFIGS = {
    "lcm-ddim25": {**SD_V1_SCHEDULER, "_class_name": "LCMScheduler", "original_inference_steps": 25,
                   "timestep_scaling": 10.0, "set_alpha_to_one": True},
}
LCM_TIMESTEP_STEPS = (1, 2, 4, 8)
LCM_RUN_STEPS = (1, 4)


def _f(x: float) -> float:
    """The shortest decimal that round-trips ``x``'s float32 value."""
    return float(str(np.float32(x)))


def _floats(a: Iterable[float] | np.ndarray) -> list[float]:
    return [_f(v) for v in np.asarray(a, dtype=np.float64).reshape(-1)]


def _dump(header: dict[str, Any], cases: list[dict[str, Any]]) -> str:
    """JSON with one case per line: reproducible and readable in a diff."""
    head = json.dumps(header, ensure_ascii=True, separators=(",", ":"))[:-1]
    lines = [json.dumps(c, ensure_ascii=True, separators=(",", ":")) for c in cases]
    return head + ',"cases":[\n' + ",\n".join(lines) + "\n]}\n"


def tokenizer_golden(tmp_dir: Path) -> tuple[str, str, str]:
    """Return (tokenizer.json, vocab.json subset, merges.txt subset) contents."""
    cases, used_merges, used_tokens = [], set(), set()
    for pad_id in PAD_IDS:
        files = write_clip_tokenizer_files(tmp_dir / f"pad{pad_id}", pad_token="<|endoftext|>" if pad_id else "!")
        tok = ClipTokenizer.from_files(files / "vocab.json", files / "merges.txt", pad_token_id=pad_id)
        for prompt in PROMPTS:
            used_tokens.update(tok.tokenize(prompt, used_merges))
            cases.append({"pad_token_id": pad_id, "prompt": prompt, "ids": tok.encode(prompt)})
        used_tokens.update(tok.special_tokens)
    vocab = {t: i for t, i in tok.vocab.items() if t in used_tokens}
    merges = [m for m in tok.merge_ranks if m in used_merges]  # dict order = rank order
    header = {
        "format_version": FORMAT_VERSION,
        "vocab": "tokenizer/vocab.json",
        "merges": "tokenizer/merges.txt",
        "max_length": tok.max_length,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    vocab_text = json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1])), ensure_ascii=True, indent=0) + "\n"
    merges_text = "#version: 0.2 (subset for the golden prompts)\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return _dump(header, cases), vocab_text, merges_text


def _config(config_name: str) -> dict[str, Any]:
    return {**SCHEDULER_CONFIGS, **LCM_CONFIGS}[config_name]


def _schedule_case(name: str, config_name: str, steps: int) -> dict[str, Any]:
    s = scheduler_from_config(_config(config_name), name)
    s.set_timesteps(steps)
    case = {
        "scheduler": name,
        "config": config_name,
        "num_inference_steps": steps,
        "timesteps": [_f(t) if s.timesteps.dtype.kind == "f" else int(t) for t in s.timesteps],
        "init_noise_sigma": _f(s.init_noise_sigma),
        "alphas_cumprod_at_timesteps": _floats(s.alphas_cumprod[np.asarray(s.timesteps).astype(np.int64)]),
    }
    if hasattr(s, "sigmas"):
        case["sigmas"] = _floats(s.sigmas)
    return case


def _run_case(name: str, config_name: str, steps: int, seed: int) -> dict[str, Any]:
    s = scheduler_from_config(_config(config_name), name)
    s.set_timesteps(steps)
    generator = NoiseStream(seed) if s.draws_noise else None
    rng = np.random.default_rng(seed)
    sample = (rng.standard_normal(RUN_SHAPE) * s.init_noise_sigma).astype(np.float32)
    case: dict[str, Any] = {
        "scheduler": name,
        "config": config_name,
        "num_inference_steps": steps,
        "shape": list(RUN_SHAPE),
        "initial_sample": _floats(sample),
        "timesteps": [_f(t) if s.timesteps.dtype.kind == "f" else int(t) for t in s.timesteps],
        **({"noise_seed": str(seed)} if generator is not None else {}),
        "model_outputs": [],
        "model_inputs": [],
        "samples": [],
    }
    for t in s.timesteps:
        x_in = s.scale_model_input(sample, t)
        model_out = rng.standard_normal(RUN_SHAPE).astype(np.float32)
        sample = s.step(model_out, t, sample, generator=generator)
        case["model_inputs"].append(_floats(x_in))
        case["model_outputs"].append(_floats(model_out))
        case["samples"].append(_floats(sample))
    return case


def schedulers_golden() -> str:
    """Return schedulers.json contents."""
    cases = []
    for name in sorted(SCHEDULERS):
        for config_name in SCHEDULER_CONFIGS:
            for steps in TIMESTEP_STEPS:
                cases.append({"kind": "schedule", **_schedule_case(name, config_name, steps)})
            for steps in RUN_STEPS:
                seed = 7919 * steps + 31 * len(name) + len(config_name)
                cases.append({"kind": "run", **_run_case(name, config_name, steps, seed)})
    for config_name in LCM_CONFIGS:
        for steps in LCM_TIMESTEP_STEPS:
            cases.append({"kind": "schedule", **_schedule_case("lcm", config_name, steps)})
        for steps in LCM_RUN_STEPS:
            cases.append({"kind": "run", **_run_case("lcm", config_name, steps, 104729 + steps)})
    header = {"format_version": FORMAT_VERSION, "configs": {**SCHEDULER_CONFIGS, **LCM_CONFIGS}}
    return _dump(header, cases)


def image_golden() -> str:
    """Return image.json contents."""
    rng = np.random.default_rng(2024)
    cases = []

    uncond = rng.standard_normal(12).astype(np.float32)
    cond = rng.standard_normal(12).astype(np.float32)
    for g in (1.0, 7.5):
        out = classifier_free_guidance(uncond, cond, g)
        cases.append({"kind": "cfg", "guidance_scale": g, "uncond": _floats(uncond), "cond": _floats(cond),
                      "out": _floats(out)})

    # LCM guidance embeddings: w = guidance_scale - 1, the U-Net's time_cond_proj_dim (odd: zero-padded).
    for w, dim in ((0.0, 8), (3.0, 256), (7.5, 256), (15.0, 256), (1.25, 7)):
        cases.append({"kind": "guidance_embedding", "w": w, "dim": dim,
                      "out": _floats(guidance_scale_embedding(w, dim))})

    latents = rng.standard_normal((1, 4, 2, 2)).astype(np.float32)
    for scaled in (False, True):
        out = latents_for_decoder(latents, 0.18215, decoder_input_scaled=scaled)
        cases.append({"kind": "latents_for_decoder", "scaling_factor": 0.18215, "decoder_input_scaled": scaled,
                      "latents": _floats(latents), "out": _floats(out)})

    h, w = 3, 4
    decoded = (rng.standard_normal((1, 3, h, w)) * 0.8).astype(np.float32)
    decoded.reshape(-1)[:6] = [-1.0, 1.0, 0.0, -1.5, 2.0, 1.0 / 255.0]  # edges, clipping, a near-tie
    for lo, hi in ((-1.0, 1.0), (0.0, 1.0)):
        rgb = decoder_output_to_rgb(decoded, (lo, hi))
        cases.append({"kind": "rgb", "output_range": [lo, hi], "shape": [1, 3, h, w], "decoded": _floats(decoded),
                      "rgb_hwc": rgb.reshape(-1).tolist()})

    for seed, shape in ((0, (1, 4, 2, 2)), (42, (7,)), (2**63 + 12345, (1, 4, 2, 2))):
        cases.append({"kind": "noise", "seed": str(seed), "shape": list(shape),
                      "out": _floats(gaussian_noise(seed, shape))})
    # One stream drawn in pieces (odd sizes cut Box-Muller pairs): initial latents, then per-step noise.
    stream, sizes = NoiseStream(2024), (5, 1, 8, 3)
    cases.append({"kind": "noise_stream", "seed": "2024", "sizes": list(sizes),
                  "out": [_floats(stream.normal((n,))) for n in sizes]})

    # Decoder kinds: the manifest's "vae" entry -> the kind, and the decoder input of the same latents per kind.
    latents = (rng.standard_normal((1, 4, 2, 2)) * 1.3).astype(np.float32)
    for manifest_vae in [None, *({"kind": k} for k in VAE_DECODER_KINDS)]:
        kind = vae_decoder_kind({} if manifest_vae is None else {"vae": manifest_vae})
        scale = DECODER_SCALING[kind]
        cases.append({"kind": "vae_decoder", "manifest_vae": manifest_vae, "vae_kind": kind, "scaling_factor": scale,
                      "decoder_input_scaled": False, "latents": _floats(latents),
                      "out": _floats(latents_for_decoder(latents, scale))})
    cases.append({"kind": "vae_decoder", "manifest_vae": {"kind": "autoencoder-vq"}, "vae_kind": None})
    return _dump({"format_version": FORMAT_VERSION}, cases)


# The fake bundle of ``bundle_golden``: the I/O of builtin:tiny-sd's ONNX fp32 export (64 px, hidden size 32; the
# U-Net with the ONNX default batch axis, a dynamic dimension the engine reads as null).
GOLDEN_BUNDLE_IO = {
    "text_encoder": ([("input_ids", (1, 77), "int32", None)], [("last_hidden_state", (1, 77, 32), "float32", None)]),
    "unet": ([("sample", ("batch", 4, 8, 8), "float32", "NCHW"), ("timestep", ("batch",), "float32", None),
              ("encoder_hidden_states", ("batch", 77, 32), "float32", None)],
             [("out_sample", ("batch", 4, 8, 8), "float32", "NCHW")]),
    "vae_decoder": ([("latent_sample", (1, 4, 8, 8), "float32", "NCHW")],
                    [("sample", (1, 3, 64, 64), "float32", "NCHW")]),
}


def bundle_golden(tmp_dir: Path, vocab: str, merges: str) -> dict[str, str]:
    """``bundle/``: a fake ONNX bundle of builtin:tiny-sd whose ``manifest.json`` is written by the real
    manifest builder (``export/manifest.py``) and ``bundle.write_manifest``, so the Kotlin engine's manifest
    parsing is tested against what the Python exporter writes. Model files are placeholders (the engine's
    verification hashes them); ``tests/test_golden_vectors.py`` checks that the manifest has the keys of a
    real tiny export's. Returns relative path -> text."""
    from bksdm_edge.export.base import ConvertedModel, TensorInfo
    from bksdm_edge.export.bundle import MANIFEST, component_entry, write_manifest
    from bksdm_edge.export.manifest import ModelFacts, build_manifest
    from bksdm_edge.export.request import ExportRequest
    from bksdm_edge.tiny_vae import TEACHER, VAE_KINDS, vae_entry

    root = tmp_dir / "bundle"
    files = {f"{c}/model.onnx": f"placeholder for the {c} model of the golden bundle\n" for c in GOLDEN_BUNDLE_IO}
    files |= {"tokenizer/vocab.json": vocab, "tokenizer/merges.txt": merges}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8", newline="\n")
    request = ExportRequest(out=root, model="builtin:tiny-sd", unet=Path("students/bk-tiny"), format="onnx",
                            precision="fp32", progress=False)
    components = {}
    for name, (ins, outs) in GOLDEN_BUNDLE_IO.items():
        converted = ConvertedModel(root / f"{name}/model.onnx", [], [TensorInfo(*t) for t in ins],
                                   [TensorInfo(*t) for t in outs], "fp32")
        components[name] = component_entry(converted, root)
    facts = ModelFacts(family="sd-v1", variant="bk-tiny", vae_scale_factor=8, latent_channels=4,
                       latent_scaling_factor=0.18215, scheduler=SD_V1_SCHEDULER, pad_token="<|endoftext|>",
                       vae=vae_entry(VAE_KINDS["autoencoder-kl"], TEACHER, 1_000_000))
    manifest = build_manifest(
        request, request.target, facts, height=64, width=64, max_length=77, components=components,
        validation={"prompt": request.validation.prompt, "steps": request.validation.steps, "passed": True,
                    "numeric_checks": "run"},
        calibration=None, versions={"bksdm_edge": "golden"},
    )
    manifest["created"] = "2000-01-01T00:00:00Z"  # fixed, so the file is reproducible
    write_manifest(root, manifest, complete=True)
    return {f"bundle/{rel}": text for rel, text in files.items()} | {
        f"bundle/{MANIFEST}": (root / MANIFEST).read_text(encoding="utf-8")}


def write_golden(out_dir: str | Path) -> list[Path]:
    """Write every golden file under ``out_dir`` and return their paths.

    Args:
        out_dir: target folder (created); ``GOLDEN_DIR`` is where the committed copy lives.
    """
    out = Path(out_dir)
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tokens, vocab, merges = tokenizer_golden(Path(tmp))
        bundle = bundle_golden(Path(tmp), vocab, merges)
    contents = {
        "tokenizer.json": tokens,
        "tokenizer/vocab.json": vocab,
        "tokenizer/merges.txt": merges,
        "schedulers.json": schedulers_golden(),
        "image.json": image_golden(),
        **bundle,
    }
    paths = []
    for rel, text in contents.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR, help=f"output folder (default: {GOLDEN_DIR})")
    args = parser.parse_args(argv)
    for path in write_golden(args.out):
        print(path)


if __name__ == "__main__":
    main()
