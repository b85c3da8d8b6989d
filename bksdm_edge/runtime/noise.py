"""A seeded Gaussian generator that numpy and the Kotlin engine reproduce exactly.

torch's and numpy's generators cannot be reimplemented on a phone at reasonable
cost, so noise comes from this small counter-based one: SplitMix64 gives uniform
53-bit doubles, Box-Muller turns pairs of them into normals (the cosine one first).
A seed defines one endless stream of normals; ``NoiseStream`` hands out consecutive
pieces of it, as a ``torch.Generator`` does for diffusers:

- the initial latents are the first ``C·h·w`` normals of the stream (``gaussian_noise``);
- a stochastic scheduler (LCM re-noises between steps) draws its noise for step k
  from the same stream right after them, in step order.

The same seed then gives the same image in ``bksdm-edge generate`` and in the app.
When the initial latents are given instead of drawn, the stream starts at its first
value for the scheduler's noise (diffusers, too, draws nothing for given latents).
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(seed: int, count: int, first: int = 1) -> np.ndarray:
    """SplitMix64 outputs number ``first`` .. ``first + count - 1`` (1-based) started at ``seed`` (uint64)."""
    counters = np.arange(first, first + count, dtype=np.uint64)
    z = np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + counters * _GOLDEN  # wraps mod 2**64
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _normals(seed: int, start: int, size: int) -> np.ndarray:
    """Normals ``start`` .. ``start + size - 1`` of the stream of ``seed`` (float64)."""
    first_pair, end_pair = start // 2, (start + size + 1) // 2
    pairs = end_pair - first_pair
    uniform = (splitmix64(seed, 2 * pairs, first=2 * first_pair + 1) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    u1 = 1.0 - uniform[0::2]  # in (0, 1]: log is finite
    u2 = uniform[1::2]
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    normals = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).reshape(-1)
    offset = start - 2 * first_pair
    return normals[offset : offset + size]


class NoiseStream:
    """Consecutive standard normals of one seed's stream; each ``normal`` call continues where the last ended.

    Args:
        seed: any integer (taken mod 2**64).
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.position = 0

    def normal(self, shape: tuple[int, ...]) -> np.ndarray:
        """The next ``prod(shape)`` normals as float32 of ``shape``."""
        size = int(np.prod(shape))
        out = _normals(self.seed, self.position, size)
        self.position += size
        return out.astype(np.float32).reshape(shape)


def gaussian_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 samples of ``shape`` from ``seed``: the start of its stream.

    Args:
        seed: any integer (taken mod 2**64).
        shape: output shape, e.g. (1, 4, 64, 64).
    """
    return NoiseStream(seed).normal(shape)
