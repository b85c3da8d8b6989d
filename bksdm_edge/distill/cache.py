"""Cache of VAE latent moments and text embeddings, so training skips the VAE encoder and text encoder.

Layout of a cache folder (written to a temp folder, then renamed, so a cache is complete or absent):
    cache.json          teacher, resolution, crop/flip settings, row count, data fingerprint, captions
    moments.npy         (N, 2*C, h, w) VAE posterior mean and log-variance of each center-cropped image
    moments_flip.npy    the same for the horizontally flipped image (when built with flips)
    text.npy            (N, L, D) text-encoder hidden states of each caption

The posterior *moments* are cached rather than a sampled latent, so training still draws a fresh
latent every step exactly as the uncached path does (same generator, same numbers in float32).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..outputs import atomic_dir
from ..errors import BksdmError
from .config import DataConfig
from .data import ImageCaptionDataset, RowSet, draw_augment, load_rows, tokenize

CACHE_FORMAT = 1
CACHE_META = "cache.json"


class CacheError(BksdmError, ValueError):
    """A latent cache that does not fit the run; the message says how to rebuild it."""


@dataclass
class LatentCache:
    """An opened cache folder (arrays are memory-mapped, so workers share pages)."""

    path: Path
    meta: dict[str, Any]
    moments: np.ndarray
    moments_flip: np.ndarray | None
    text: np.ndarray

    def __len__(self) -> int:
        return self.meta["num_rows"]


def _meta_key(teacher: str, config: DataConfig, fingerprint: str | None) -> dict[str, Any]:
    return {"teacher": teacher, "resolution": config.resolution, "center_crop": config.center_crop,
            "data_fingerprint": fingerprint}


def open_cache(path: str | Path) -> LatentCache:
    """Open a cache folder written by ``build_cache``."""
    path = Path(path)
    meta_path = path / CACHE_META
    if not meta_path.exists():
        raise CacheError(f"{path} is not a latent cache (no {CACHE_META}); build one with `bksdm-edge cache-latents`")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != CACHE_FORMAT:
        raise CacheError(f"{path} has cache format {meta.get('format')}, this version reads {CACHE_FORMAT}; rebuild it")
    flip = path / "moments_flip.npy"
    return LatentCache(
        path=path,
        meta=meta,
        moments=np.load(path / "moments.npy", mmap_mode="r"),
        moments_flip=np.load(flip, mmap_mode="r") if flip.exists() else None,
        text=np.load(path / "text.npy", mmap_mode="r"),
    )


def check_cache(cache: LatentCache, teacher: str, config: DataConfig, fingerprint: str | None) -> None:
    """Raise ``CacheError`` unless ``cache`` was built for this teacher, data and preprocessing."""
    want = _meta_key(teacher, config, fingerprint)
    problems = [
        f"{k}: cache has {cache.meta.get(k)!r}, run wants {v!r}"
        for k, v in want.items()
        if v is not None and cache.meta.get(k) != v
    ]
    if not config.center_crop:
        problems.append("random crops cannot be cached (the cache stores center crops); drop --random-crop")
    if config.random_flip and cache.moments_flip is None:
        problems.append("the cache has no flipped latents but the run flips; rebuild with flips or pass --no-flip")
    if problems:
        raise CacheError(
            f"The latent cache {cache.path} does not fit this run: " + "; ".join(problems)
            + ". Rebuild it with `bksdm-edge cache-latents` or point --cache-dir elsewhere."
        )


def encode_moments(vae, pixel_values: torch.Tensor) -> torch.Tensor:
    """VAE posterior parameters (mean and log-variance, concatenated on channels) of a pixel batch."""
    return vae.encode(pixel_values.to(device=vae.device, dtype=vae.dtype)).latent_dist.parameters


def encode_text(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    return text_encoder(input_ids.to(text_encoder.device), return_dict=False)[0]


def build_cache(
    model,
    rowset: RowSet,
    config: DataConfig,
    out: str | Path,
    *,
    teacher: str,
    batch_size: int = 16,
    progress: bool = True,
) -> LatentCache:
    """Encode every row once and write the cache folder ``out`` atomically.

    Args:
        model: an ``SDModel`` with ``vae``, ``text_encoder`` and ``tokenizer`` (on the device to encode on).
        rowset: checked rows from ``data.load_rows``.
        config: resolution, crop and flip settings; ``random_flip`` also caches the flipped images.
        out: cache folder; must not exist.
        teacher: the teacher's source string, recorded so training can check the cache fits.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if out.exists():
        raise CacheError(f"{out} already exists; remove it or choose another --cache-dir")
    if not config.center_crop:
        raise CacheError("random crops cannot be cached (the cache stores center crops)")
    dtype = {"float32": np.float32, "float16": np.float16}[config.cache_dtype]
    # A temporary sibling renamed into place: a cache is complete or absent, and a failed encode leaves nothing.
    with atomic_dir(out) as tmp:
        dataset = ImageCaptionDataset(rowset, config, model.tokenizer, seed=0)
        n = len(rowset)
        arrays: dict[str, np.ndarray] = {}
        started = time.perf_counter()
        with torch.no_grad():
            for start in tqdm(range(0, n, batch_size), desc="caching latents", unit="batch", disable=not progress):
                idx = list(range(start, min(n, start + batch_size)))
                ids = tokenize(model.tokenizer, [rowset.rows[i].caption for i in idx])
                parts = {"text": encode_text(model.text_encoder, ids)}
                parts["moments"] = encode_moments(model.vae, torch.stack([dataset.item(i, flip=False) for i in idx]))
                if config.random_flip:
                    parts["moments_flip"] = encode_moments(
                        model.vae, torch.stack([dataset.item(i, flip=True) for i in idx])
                    )
                for name, value in parts.items():
                    if name not in arrays:
                        arrays[name] = np.lib.format.open_memmap(
                            tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=(n, *value.shape[1:])
                        )
                    arrays[name][idx[0] : idx[-1] + 1] = value.float().cpu().numpy().astype(dtype)
        for array in arrays.values():
            array.flush()
        del arrays
        meta = {
            "format": CACHE_FORMAT,
            **_meta_key(teacher, config, rowset.fingerprint),
            "flips": config.random_flip,
            "dtype": config.cache_dtype,
            "num_rows": n,
            "skipped_rows": len(rowset.skipped),
            "source": rowset.source,
            "scaling_factor": model.vae.config.scaling_factor,
            "seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / CACHE_META).write_text(json.dumps(meta, indent=1))
    return open_cache(out)


class CachedDataset(torch.utils.data.Dataset):
    """Cache rows -> {"moments", "text_embeds", "index"} with the same seeded flips as ``ImageCaptionDataset``."""

    def __init__(self, cache: LatentCache, random_flip: bool, seed: int):
        self.cache, self.random_flip, self.seed = cache, random_flip, seed

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, epoch = key
        flip, _, _ = draw_augment(self.seed, epoch, index)
        moments = self.cache.moments_flip if (flip and self.random_flip) else self.cache.moments
        return {
            "moments": torch.from_numpy(np.array(moments[index], dtype=np.float32)),
            "text_embeds": torch.from_numpy(np.array(self.cache.text[index], dtype=np.float32)),
            "index": index,
        }


def cache_latents(teacher: str, config: DataConfig, out: str | Path, *, device: str = "cpu", batch_size: int = 16,
                  dtype: torch.dtype = torch.float32, progress: bool = True) -> LatentCache:
    """Load the teacher's VAE and text encoder, check the rows of ``config.source`` and build the cache at ``out``."""
    from ..loading import load_model

    rowset = load_rows(config)
    model = load_model(teacher, components=("vae", "text_encoder", "tokenizer"), dtype=dtype)
    model.vae.to(device)
    model.text_encoder.to(device)
    return build_cache(model, rowset, config, out, teacher=teacher, batch_size=batch_size, progress=progress)
