"""Evaluation settings as data, importable without torch (``bksdm-edge eval --help`` and its input checks)."""

from __future__ import annotations

from dataclasses import dataclass

FEATURE_EXTRACTORS = ("inception", "digits")
METRICS = ("fid", "is", "clip")


@dataclass(frozen=True)
class EvalConfig:
    """Generation and scoring settings; the defaults are the paper's protocol."""

    resolution: int | None = 512  # generation size; None: the model's default resolution
    resize: int | None = 256  # images are resized to this before scoring (None: as generated)
    steps: int = 25
    guidance_scale: float = 7.5
    batch: int = 4
    seed: int = 0  # image i uses seed + i
    limit: int | None = None  # only the first N captions
    feature_extractor: str = "inception"
    metrics: tuple[str, ...] = METRICS
    clip_model: str = "ViT-g-14"
    clip_pretrained: str = "laion2b_s34b_b88k"
