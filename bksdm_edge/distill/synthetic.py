"""A tiny synthetic image-caption folder (coloured shapes) in the paper's LAION layout, for tests and demos.

    python -m bksdm_edge.distill.synthetic OUT_DIR --rows 64 --size 96
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

COLORS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
    "purple": (140, 50, 180), "white": (245, 245, 245), "black": (15, 15, 15), "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")


def draw_shape(size: tuple[int, int], shape: str, color, background, rng: np.random.Generator):
    """One RGB PIL image with a single shape at a random position and scale."""
    from PIL import Image, ImageDraw

    w, h = size
    image = Image.new("RGB", (w, h), background)
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.2, 0.4) * min(w, h)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=color)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    return image


def make_synthetic_folder(out: str | Path, rows: int = 32, size: int = 96, seed: int = 0,
                          aspect: float = 1.25) -> Path:
    """Write ``rows`` PNGs and a ``metadata.jsonl`` (``file_name``, ``text``) into ``out``.

    Images are ``aspect`` times wider than tall (so resize and crop are exercised); captions name the
    shape and both colours, e.g. "a red circle on a blue background".
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLORS)
    with open(out / "metadata.jsonl", "w") as meta:
        for i in range(rows):
            shape = SHAPES[rng.integers(len(SHAPES))]
            fg, bg = rng.choice(len(names), size=2, replace=False)
            image = draw_shape((round(size * aspect), size), shape, COLORS[names[fg]], COLORS[names[bg]], rng)
            file_name = f"{i:05d}.png"
            image.save(out / file_name)
            meta.write(json.dumps({"file_name": file_name,
                                   "text": f"a {names[fg]} {shape} on a {names[bg]} background"}) + "\n")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--size", type=int, default=96, help="image height in pixels (width is 1.25x)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(make_synthetic_folder(args.out, args.rows, args.size, args.seed))


if __name__ == "__main__":
    main()
