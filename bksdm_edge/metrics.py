"""Array-comparison metrics shared by export validation, the benchmarks and the quality experiments.

One definition of each, numpy only (no torch import), so every PSNR in the project means the same thing:

* ``psnr``: peak signal-to-noise ratio in dB, ``20 log10(peak / rmse)``. The peak defaults to
  ``max |reference|`` (apple/ml-stable-diffusion's definition for model outputs, which are not bounded);
  pass ``peak=255.0`` for uint8 images or ``peak=1.0`` for images in [0, 1]. Small epsilons keep it finite:
  identical arrays give a large finite number (about 200 dB at peak 1), never ``inf`` or a division error;
  callers that need to tell "identical" apart check ``np.array_equal`` themselves.
* ``cosine``: cosine similarity of the flattened arrays.
* ``error_metrics``: the four numbers a validation or conversion report records (max/mean |diff|, PSNR, cosine).
* ``feature_stats`` / ``frechet_distance``: the FID formula on any features (Inception for ``bksdm-edge eval``,
  the digit scorer's for the digits teacher).
"""

from __future__ import annotations

import warnings

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


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


SQRTM_MAX_RESIDUAL = 1e-3  # relative ||R R - A|| above which the square root is recomputed with an offset


def _sqrtm(a: np.ndarray) -> tuple[np.ndarray, float]:
    """scipy's matrix square root and its relative residual.

    Covariances of fewer samples than feature dimensions, or of features that are always zero (ReLU units that
    never fire), are singular; scipy then warns that the root "might be inaccurate". Whether it is, the
    residual says: the caller checks it instead of printing a warning that is almost always harmless.
    """
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(a)
    if not np.isfinite(root).all():
        return root, float("inf")
    norm = float(np.linalg.norm(a)) or 1.0
    return root, float(np.linalg.norm(root @ root - a) / norm)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between two Gaussians (the FID formula), with scipy.linalg.sqrtm.

    ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)); as in pytorch-fid, a tiny diagonal offset is added when the
    square root of the product is not usable (non-finite, or off by more than ``SQRTM_MAX_RESIDUAL``), and the
    imaginary part left by rounding is dropped.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    covmean, residual = _sqrtm(s1 @ s2)
    if residual > SQRTM_MAX_RESIDUAL:
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean, _ = _sqrtm((s1 + offset) @ (s2 + offset))
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean), 0.0))
