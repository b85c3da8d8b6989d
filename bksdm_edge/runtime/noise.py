"""A seeded Gaussian generator that numpy and the Kotlin engine reproduce exactly.

torch's and numpy's generators cannot be reimplemented on a phone at reasonable
cost, so initial latents come from this small counter-based one: SplitMix64 gives
uniform 53-bit doubles, Box-Muller turns pairs of them into normals. The same seed
then gives the same starting latents in ``bksdm-edge generate`` and in the app.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(seed: int, count: int) -> np.ndarray:
    """The first ``count`` outputs of SplitMix64 started at ``seed`` (uint64)."""
    counters = np.arange(1, count + 1, dtype=np.uint64)
    z = np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + counters * _GOLDEN  # wraps mod 2**64
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def gaussian_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 samples of ``shape`` from ``seed``.

    Args:
        seed: any integer (taken mod 2**64).
        shape: output shape, e.g. (1, 4, 64, 64).
    """
    size = int(np.prod(shape))
    pairs = (size + 1) // 2
    uniform = (splitmix64(seed, 2 * pairs) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    u1 = 1.0 - uniform[0::2]  # in (0, 1]: log is finite
    u2 = uniform[1::2]
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    normals = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).reshape(-1)
    return normals[:size].astype(np.float32).reshape(shape)
