"""Array-comparison metrics shared by export validation, the benchmarks and the quality experiments.

One definition of each, numpy only (no torch import), so every PSNR in the project means the same thing:

* ``psnr``: peak signal-to-noise ratio in dB, ``20 log10(peak / rmse)``. The peak defaults to
  ``max |reference|`` (apple/ml-stable-diffusion's definition for model outputs, which are not bounded);
  pass ``peak=255.0`` for uint8 images or ``peak=1.0`` for images in [0, 1]. Small epsilons keep it finite:
  identical arrays give a large finite number (about 200 dB at peak 1), never ``inf`` or a division error;
  callers that need to tell "identical" apart check ``np.array_equal`` themselves.
* ``cosine``: cosine similarity of the flattened arrays.
* ``error_metrics``: the four numbers a validation or conversion report records (max/mean |diff|, PSNR, cosine).
"""

from __future__ import annotations

import numpy as np

PEAK_EPS = 1e-5  # added to the peak: an all-zero reference still has a defined PSNR
RMSE_EPS = 1e-10  # added to the RMSE: identical arrays give a finite PSNR
NORM_EPS = 1e-30  # added to the product of norms: cosine of a zero array is 0, not NaN


def psnr(reference: np.ndarray, actual: np.ndarray, peak: float | None = None) -> float:
    """PSNR of ``actual`` against ``reference`` in dB.

    Args:
        reference: the ground truth (e.g. the PyTorch output), any shape.
        actual: the array compared with it, same shape.
        peak: the signal peak; default ``max |reference|``.
    """
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if reference.shape != actual.shape:
        raise ValueError(f"psnr needs arrays of one shape, got {reference.shape} and {actual.shape}")
    rmse = float(np.sqrt(np.mean((reference - actual) ** 2)))
    peak = float(np.abs(reference).max()) if peak is None else float(peak)
    return float(20 * np.log10((peak + PEAK_EPS) / (rmse + RMSE_EPS)))


def cosine(reference: np.ndarray, actual: np.ndarray) -> float:
    """Cosine similarity of the flattened arrays (1.0 = same direction)."""
    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(actual, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"cosine needs arrays of one size, got {a.size} and {b.size}")
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + NORM_EPS))


def error_metrics(reference: np.ndarray, actual: np.ndarray, peak: float | None = None) -> dict[str, float]:
    """``max_abs_diff``, ``mean_abs_diff``, ``psnr_db`` and ``cosine`` of ``actual`` against ``reference``."""
    diff = np.abs(np.asarray(reference, dtype=np.float64) - np.asarray(actual, dtype=np.float64))
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "psnr_db": psnr(reference, actual, peak),
        "cosine": cosine(reference, actual),
    }
