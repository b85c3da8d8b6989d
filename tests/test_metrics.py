"""bksdm_edge.metrics against reference implementations (torchmetrics' PSNR, scipy's cosine distance)."""

import numpy as np
import pytest
import torch

from bksdm_edge import metrics


def _pair(seed=0, shape=(2, 4, 8, 8), noise=0.05):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(shape).astype(np.float32)
    return ref, (ref + noise * rng.standard_normal(shape)).astype(np.float32)


def test_psnr_matches_torchmetrics_with_default_and_explicit_peak():
    from torchmetrics.functional.image import peak_signal_noise_ratio

    ref, out = _pair()
    peak = float(np.abs(ref).max())
    expected = float(peak_signal_noise_ratio(torch.from_numpy(out).double(), torch.from_numpy(ref).double(),
                                             data_range=peak))
    assert metrics.psnr(ref, out) == pytest.approx(expected, abs=1e-3)
    img_ref = np.random.default_rng(1).integers(0, 256, (3, 32, 32)).astype(np.uint8)
    img_out = np.clip(img_ref.astype(int) + np.random.default_rng(2).integers(-3, 4, img_ref.shape), 0, 255)
    expected = float(peak_signal_noise_ratio(torch.from_numpy(img_out).double(), torch.from_numpy(img_ref).double(),
                                             data_range=255.0))
    assert metrics.psnr(img_ref, img_out, peak=255.0) == pytest.approx(expected, abs=1e-3)


def test_psnr_is_finite_for_identical_and_zero_arrays():
    ref, _ = _pair()
    same = metrics.psnr(ref, ref)
    assert np.isfinite(same) and same > 150
    assert np.isfinite(metrics.psnr(np.zeros(4), np.zeros(4)))
    assert metrics.psnr(ref, ref + 1.0) < metrics.psnr(ref, ref + 0.1)
    with pytest.raises(ValueError, match="one shape"):
        metrics.psnr(np.zeros(3), np.zeros(4))


def test_cosine_matches_scipy():
    from scipy.spatial.distance import cosine as cosine_distance

    ref, out = _pair(noise=0.5)
    assert metrics.cosine(ref, out) == pytest.approx(1 - cosine_distance(ref.ravel(), out.ravel()), abs=1e-9)
    assert metrics.cosine(ref, -ref) == pytest.approx(-1.0)
    assert metrics.cosine(np.zeros(5), np.ones(5)) == 0.0


def test_error_metrics_and_export_validation_use_the_same_definitions():
    from bksdm_edge.export import validation

    ref, out = _pair()
    m = metrics.error_metrics(ref, out)
    assert m["max_abs_diff"] == pytest.approx(float(np.abs(ref - out).max()))
    assert m["mean_abs_diff"] == pytest.approx(float(np.abs(ref - out).mean()))
    assert m["psnr_db"] == metrics.psnr(ref, out) and m["cosine"] == metrics.cosine(ref, out)
    # Export validation reports the same numbers (one PSNR in the project).
    from bksdm_edge.export.registry import Tolerance

    reported, broken = validation.compare(ref, out, Tolerance(min_psnr=10.0, min_cosine=0.9))
    assert reported == m and broken == []
