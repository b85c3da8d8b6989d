"""Digits data: scikit-learn's handwritten digits, the fixed train/held-out split, upscaling and the captions.

The split is the one the teacher and the scorer were trained on: 80/20 stratified with a fixed seed; the
held-out 20% (360 images) is never trained on and is the reference set of the Fréchet distance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Training captions vary a little; evaluation always uses the first template.
CAPTION_TEMPLATES = (
    "a handwritten digit {word}",
    "a photo of the handwritten number {word}",
    "the digit {word}, handwritten",
    "a drawing of the number {word}",
)
HOLDOUT_FRACTION = 0.2
SPLIT_SEED = 0


def caption(digit: int, template: int = 0) -> str:
    """The caption for ``digit`` (0-9) with caption template number ``template``."""
    return CAPTION_TEMPLATES[template].format(word=DIGIT_WORDS[digit])


def eval_prompts() -> list[str]:
    """The 10 evaluation prompts, digit 0 to 9."""
    return [caption(d) for d in range(10)]


def digit_of_caption(text: str) -> int | None:
    """The digit a caption asks for (a number word or a single numeral), or None if it names none or several."""
    words = [w.strip(".,;:!?\"'()") for w in text.lower().split()]
    found = {DIGIT_WORDS.index(w) for w in words if w in DIGIT_WORDS}
    found |= {int(w) for w in words if len(w) == 1 and w.isdigit()}
    return found.pop() if len(found) == 1 else None


@dataclass(frozen=True)
class DigitsSplit:
    """Digit images as float tensors in [0, 1], shape (N, 1, 8, 8), with labels (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_digit_split() -> DigitsSplit:
    """scikit-learn's digits, split 80/20 stratified with a fixed seed (the held-out 20% is never trained on)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = data.images.astype(np.float32) / 16.0  # ink is 16 in the raw data: white digit on black
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, data.target, test_size=HOLDOUT_FRACTION, stratify=data.target, random_state=SPLIT_SEED
    )
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return DigitsSplit(
        as_tensor(x_tr)[:, None], as_tensor(y_tr).long(), as_tensor(x_te)[:, None], as_tensor(y_te).long()
    )


def upscale(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, 8, 8) digits in [0, 1] -> (N, 3, size, size) RGB in [0, 1] (bicubic, clamped)."""
    big = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return big.expand(-1, 3, -1, -1).contiguous()


def write_digits_imagefolder(out: str | Path, resolution: int) -> int:
    """Write the digits training split as an image folder with ``metadata.jsonl`` (the paper's LAION layout:
    ``file_name`` + ``text``, captions cycling through ``CAPTION_TEMPLATES``); returns the number of images."""
    from PIL import Image

    split = load_digit_split()
    images = (upscale(split.train_images, resolution) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metadata.jsonl", "w") as meta:
        for i, (img, label) in enumerate(zip(images, split.train_labels.tolist())):
            name = f"{i:05d}.png"
            Image.fromarray(img).save(out / name)
            meta.write(json.dumps({"file_name": name, "text": caption(label, i % len(CAPTION_TEMPLATES))}) + "\n")
    return len(images)


def heldout_reference(image_size: int = 32) -> torch.Tensor:
    """The held-out real digits (360 images) as (N, 3, size, size) float in [0, 1]: the FD reference set."""
    return upscale(load_digit_split().test_images, image_size)

