"""The digit scorer (a small CNN shipped in ``bksdm_edge/weights/digit-scorer``) and the digit scores.

``prompt_accuracy`` is the CLIP-score analogue (the fraction of images classified as the digit the prompt
asked for); ``digit_frechet_distance`` is the FID analogue (the FID formula on the scorer's 64-d penultimate
features); ``score_digits`` gives both, per digit too, against the held-out real digits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...metrics import feature_stats, frechet_distance
from .data import heldout_reference

SCORER_SIZE = 16  # the scorer sees every image as 16x16 grayscale, whatever its resolution


def to_scorer_input(images: torch.Tensor) -> torch.Tensor:
    """Any (N, C, H, W) image batch (uint8 0-255 or float 0-1, gray or RGB) -> (N, 1, 16, 16) float in [0, 1]."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (SCORER_SIZE, SCORER_SIZE):
        x = F.interpolate(x, size=(SCORER_SIZE, SCORER_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x


class DigitScorer(nn.Module):
    """A small CNN digit classifier. ``features`` (64-d, penultimate) feeds the Fréchet distance."""

    num_features = 64

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, self.num_features)
        self.head = nn.Linear(self.num_features, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = to_scorer_input(images) * 2 - 1
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) for any image batch accepted by ``to_scorer_input``."""
        return self.head(self.features(images))


class ScorerFeatures(nn.Module):
    """The scorer's penultimate features as a feature extractor (torchmetrics' FID takes it as ``feature=``)."""

    def __init__(self, scorer: DigitScorer):
        super().__init__()
        self.scorer = scorer
        self.num_features = scorer.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scorer.features(images)


def load_scorer(path: str | Path | None = None) -> DigitScorer:
    """Load the digit scorer (default: the one shipped in ``bksdm_edge/weights/digit-scorer``)."""
    from importlib import resources

    from safetensors.torch import load_file

    root = Path(path) if path is not None else Path(str(resources.files("bksdm_edge") / "weights" / "digit-scorer"))
    scorer = DigitScorer()
    scorer.load_state_dict(load_file(str(root / "scorer.safetensors")))
    return scorer.eval()


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([fn(images[i : i + batch]) for i in range(0, len(images), batch)])


def prompt_accuracy(images: torch.Tensor, digits: Sequence[int], scorer: DigitScorer | None = None) -> float:
    """Fraction of ``images`` (N, C, H, W; uint8 or float in [0, 1]) that the scorer classifies as ``digits``."""
    scorer = scorer or load_scorer()
    pred = _batched(scorer, images).argmax(dim=1)
    return float((pred == torch.as_tensor(list(digits))).float().mean())


def digit_frechet_distance(images: torch.Tensor, reference: torch.Tensor, scorer: DigitScorer | None = None) -> float:
    """Fréchet distance between the scorer features of ``images`` and of ``reference`` images."""
    scorer = scorer or load_scorer()
    a = _batched(scorer.features, images).numpy()
    b = _batched(scorer.features, reference).numpy()
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def score_digits(images: torch.Tensor, digits: Sequence[int], scorer: DigitScorer | None = None,
                 resolution: int = 32) -> dict[str, Any]:
    """Prompt accuracy (overall and per digit) and Fréchet distance to the held-out real digits."""
    scorer = scorer or load_scorer()
    pred = _batched(scorer, images).argmax(dim=1)
    want = torch.as_tensor(list(digits))
    per_digit = {d: float((pred[want == d] == d).float().mean()) for d in range(10) if (want == d).any()}
    return {
        "prompt_accuracy": float((pred == want).float().mean()),
        "per_digit_accuracy": per_digit,
        "frechet_distance": digit_frechet_distance(images, heldout_reference(resolution), scorer),
        "n_images": len(want),
    }

