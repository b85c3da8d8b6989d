"""Text-to-image from an exported bundle, without PyTorch.

The bundle is verified (hashes, completeness) before anything is loaded; runners come
from the export registry, so every format whose back-end can run here works (ONNX via
onnxruntime, TFLite via LiteRT). Tokenizer, schedulers and image helpers are the numpy
ones of ``bksdm_edge.runtime``; the loop mirrors diffusers' ``StableDiffusionPipeline``
so that the same initial latents give the same image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import BksdmError
from .export.bundle import verify_bundle
from .export.registry import get_target
from .export.tensor_io import from_runner_outputs, tensor_info_from_json, to_runner_inputs
from .runtime import ClipTokenizer, classifier_free_guidance, decoder_output_to_rgb, gaussian_noise, latents_for_decoder
from .runtime import scheduler_from_config


@dataclass
class _Component:
    """A loaded bundle component that takes and returns canonical arrays, splitting rows to its batch."""

    name: str
    run_raw: Callable
    inputs: list
    outputs: list

    @property
    def batch(self) -> int | None:
        b = self.inputs[0].shape[0]
        return b if isinstance(b, int) else None

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        rows = arrays[0].shape[0]
        step = self.batch or rows
        padded = -rows % step  # e.g. one latent through a batch-2 decoder: repeat the last row, drop its output
        if padded:
            arrays = tuple(np.concatenate([a, np.repeat(a[-1:], padded, axis=0)]) for a in arrays)
        parts = []
        for i in range(0, rows + padded, step):
            feeds = to_runner_inputs(self.inputs, [a[i : i + step] for a in arrays])
            parts.append(from_runner_outputs(self.outputs, self.run_raw(feeds))[0])
        return np.concatenate(parts)[:rows]


class BundlePipeline:
    """A verified bundle, loaded: ``pipe(prompt, ...) -> (RGB uint8 HWC image, initial latents)``."""

    def __init__(self, bundle: str | Path, *, threads: int | None = None):
        self.root = Path(bundle)
        self.manifest = verify_bundle(self.root)
        target = get_target(self.manifest["format"], self.manifest["precision"])
        why = target.runtime_unavailable()
        if why:
            raise BksdmError(f"cannot run a {target.name()} bundle here: {why}")
        missing = [c for c in ("text_encoder", "unet", "vae_decoder") if c not in self.manifest["components"]]
        if missing:
            raise BksdmError(f"{self.root} has no {', '.join(missing)}; text-to-image needs text_encoder, unet and "
                             "vae_decoder")
        self.components: dict[str, _Component] = {}
        for name in ("text_encoder", "unet", "vae_decoder"):
            entry = self.manifest["components"][name]
            self.components[name] = _Component(
                name, target.load_runner(self.root / entry["file"]),
                [tensor_info_from_json(t) for t in entry["inputs"]],
                [tensor_info_from_json(t) for t in entry["outputs"]],
            )
        self.tokenizer = ClipTokenizer.from_bundle(self.root, self.manifest["tokenizer"])

    def latent_shape(self) -> tuple[int, ...]:
        img = self.manifest["image"]
        f = img["vae_scale_factor"]
        return (1, img["latent_channels"], img["height"] // f, img["width"] // f)

    def __call__(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        steps: int = 25,
        guidance: float = 7.5,
        seed: int = 0,
        scheduler: str | None = None,
        latents: np.ndarray | None = None,
        progress: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Generate one image.

        Args:
            prompt, negative_prompt: text (the negative prompt is the unconditional branch of CFG).
            steps: denoising steps. guidance: CFG scale (<= 1 disables CFG, as in diffusers).
            seed: seed of the portable Gaussian noise (``runtime.noise``) used when ``latents`` is None.
            scheduler: ``pndm``, ``ddim``, ``euler``, ``dpm++`` or None for the bundle's own.
            latents: initial noise (1, C, h, w), before multiplying by the scheduler's init sigma
                (diffusers' ``latents=`` argument).
        Returns (image HWC uint8, the initial latents used).
        """
        m = self.manifest
        te, unet, dec = (self.components[c] for c in ("text_encoder", "unet", "vae_decoder"))
        cfg = guidance > 1.0
        # 1. Text embeddings: [negative, prompt] rows, as diffusers concatenates them.
        texts = [negative_prompt, prompt] if cfg else [prompt]
        ids = np.array([self.tokenizer.encode(t) for t in texts], dtype=np.int64)
        embeds = te(ids)
        # 2. Initial latents.
        if latents is None:
            latents = gaussian_noise(seed, self.latent_shape())
        latents = np.asarray(latents, dtype=np.float32)
        if latents.shape != self.latent_shape():
            raise BksdmError(f"initial latents have shape {latents.shape}, this bundle needs {self.latent_shape()}")
        sched = scheduler_from_config(m["scheduler"], scheduler)
        sched.set_timesteps(steps)
        x = latents * np.float32(sched.init_noise_sigma)
        # 3. Denoising loop.
        timesteps = list(sched.timesteps)
        if progress:
            from tqdm.auto import tqdm

            timesteps = tqdm(timesteps, desc="denoising", leave=False)
        for t in timesteps:
            model_in = np.concatenate([x] * len(texts))
            model_in = sched.scale_model_input(model_in, t)
            tt = np.full((len(texts),), t, dtype=np.float32)
            noise = unet(model_in, tt, embeds)
            noise = classifier_free_guidance(noise[:1], noise[1:], guidance) if cfg else noise
            x = sched.step(noise, t, x)
        # 4. Decode.
        z = latents_for_decoder(x, m["latent_scaling_factor"], m.get("vae_decoder_input_scaled", False))
        image = dec(z)
        return decoder_output_to_rgb(image, m.get("vae_decoder_output_range", (-1, 1))), latents


def generate(
    bundle: str | Path,
    prompt: str,
    out: str | Path | None = None,
    *,
    latents_in: str | Path | None = None,
    latents_out: str | Path | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Generate one image from a bundle; save it as PNG to ``out`` when given.

    Args:
        bundle: bundle folder (verified before loading).
        prompt: the text prompt.
        out: PNG path to write.
        latents_in / latents_out: .npy file to read / write the initial latents.
        kwargs: ``BundlePipeline.__call__`` options (negative_prompt, steps, guidance, seed, scheduler).
    Returns the image as an HWC uint8 array.
    """
    pipe = BundlePipeline(bundle)
    latents = np.load(latents_in) if latents_in else None
    image, used = pipe(prompt, latents=latents, **kwargs)
    if latents_out:
        np.save(latents_out, used)
    if out:
        from PIL import Image

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out)
    return image
