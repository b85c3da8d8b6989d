"""The digit scorer, the Fréchet distance and the digits teacher's training script (two-step smoke test)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from bksdm_edge.quality import digits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scorer():
    return digits.load_scorer()


@pytest.fixture(scope="module")
def heldout():
    split = digits.load_digit_split()
    return digits.upscale(split.test_images, 32), split.test_labels


def test_split_is_fixed_and_disjoint():
    a, b = digits.load_digit_split(), digits.load_digit_split()
    assert torch.equal(a.test_images, b.test_images)
    assert len(a.train_labels) + len(a.test_labels) == 1797
    assert len(a.test_labels) == 360
    train = {t.numpy().tobytes() for t in a.train_images}
    assert sum(t.numpy().tobytes() in train for t in a.test_images) < 5  # the raw data has a few duplicates


def test_scorer_accuracy_on_heldout_real_digits(scorer, heldout):
    images, labels = heldout
    assert digits.prompt_accuracy(images, labels.tolist(), scorer) > 0.95
    # The same images as uint8 at another size (what a pipeline returns) score the same way.
    as_uint8 = (torch.nn.functional.interpolate(images, size=64, mode="bilinear") * 255).round().to(torch.uint8)
    assert digits.prompt_accuracy(as_uint8, labels.tolist(), scorer) > 0.95


def test_prompt_accuracy_counts_wrong_digits(scorer, heldout):
    images, labels = heldout
    assert digits.prompt_accuracy(images, ((labels + 1) % 10).tolist(), scorer) < 0.05


def test_frechet_distance_zero_for_identical_sets(scorer, heldout):
    images, _ = heldout
    assert digits.digit_frechet_distance(images, images, scorer) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_grows_with_shift(scorer, heldout):
    images, _ = heldout
    half_a, half_b = images[::2], images[1::2]
    same = digits.digit_frechet_distance(half_a, half_b, scorer)
    shifted = digits.digit_frechet_distance(torch.roll(half_a, 6, dims=-1), half_b, scorer)
    noise = digits.digit_frechet_distance(torch.rand_like(half_a), half_b, scorer)
    assert 0 < same < shifted < noise


def test_frechet_distance_matches_torchmetrics(scorer, heldout):
    """Our scipy formula against torchmetrics' FID (same features plugged in as a custom extractor)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    images, _ = heldout
    real, fake = images[:180], torch.roll(images[180:], 3, dims=-2)
    metric = FrechetInceptionDistance(feature=digits.ScorerFeatures(scorer))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    ours = digits.digit_frechet_distance(fake, real, scorer)
    assert ours == pytest.approx(float(metric.compute()), rel=1e-3)


def test_frechet_distance_closed_form():
    mu = np.array([1.0, 2.0])
    sigma1, sigma2 = np.diag([4.0, 9.0]), np.diag([1.0, 1.0])
    # diagonal Gaussians: ||mu||^2 + sum (sqrt(a) - sqrt(b))^2
    expected = 5.0 + (2 - 1) ** 2 + (3 - 1) ** 2
    assert digits.frechet_distance(mu, sigma1, np.zeros(2), sigma2) == pytest.approx(expected)
    with pytest.raises(ValueError):
        digits.frechet_distance(mu, sigma1, np.zeros(3), np.eye(3))


def test_digit_of_caption():
    assert digits.digit_of_caption("a handwritten digit seven") == 7
    assert digits.digit_of_caption("The digit 3, handwritten.") == 3
    assert digits.digit_of_caption("a cat on a mat") is None
    assert digits.digit_of_caption("one or two") is None
    assert [digits.digit_of_caption(p) for p in digits.eval_prompts()] == list(range(10))


def _load_script(name):
    path = ROOT / "benchmarks" / "mini_sd" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_mini_sd_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_teacher_two_step_smoke(tmp_path):
    """The training script end to end with two steps per stage and tiny batches; then load and sample."""
    import json

    from bksdm_edge.builtins import BUILTINS

    script = _load_script("train_teacher")
    rc = script.main([
        "--out", str(tmp_path / "w"), "--scorer-out", str(tmp_path / "s"), "--no-score",
        "--scorer-steps", "2", "--text-steps", "2", "--vae-steps", "2", "--unet-steps", "2", "--vae-batch", "4", "--unet-batch", "4",
        "--log-every", "1", "--threads", "1",
    ])
    assert rc == 0
    record = json.loads((tmp_path / "w" / "train_config.json").read_text())
    assert record["config"]["unet_steps"] == 2 and record["command"]
    assert {p.name for p in (tmp_path / "w").iterdir()} >= {"unet.safetensors", "vae.safetensors",
                                                           "text_encoder.safetensors"}
    model = digits.load_trained(BUILTINS["mini-sd-digits"], tmp_path / "w")
    # The VAE rescale makes latents unit-variance under the spec's scaling factor.
    x = digits.upscale(digits.load_digit_split().train_images[:64], 32) * 2 - 1
    with torch.no_grad():
        z = model.vae.encode(x).latent_dist.mean * model.vae.config.scaling_factor
        assert 0.7 < float(z.std()) < 1.4
    pipe = model.to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    imgs, asked = digits.generate_digits(pipe, digits.DigitEvalConfig(seeds=1, steps=2, batch=10), 32)
    assert imgs.shape == (10, 3, 32, 32) and imgs.dtype == torch.uint8 and asked == list(range(10))
    scorer = digits.load_scorer(tmp_path / "s")
    assert 0.0 <= digits.score_digits(imgs, asked, scorer)["prompt_accuracy"] <= 1.0


def test_shipped_teacher_loads_as_builtin():
    from bksdm_edge.loading import load_model

    model = load_model("builtin:mini-sd-digits")
    cfg = model.unet.config
    assert list(cfg.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert cfg.mid_block_type == "UNetMidBlock2DCrossAttn" and cfg.layers_per_block == 2
    assert model.vae_scale_factor == 2 and model.unet.config.sample_size == 16


def test_image_psnr_counts_identical_images_and_pools_the_rest():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    out = ref.copy()
    out[2, 0, 0, 0] ^= 1  # one pixel differs by 1: MSE = 1/192 -> 10*log10(255^2*192)
    res = digits.image_psnr(ref, out)
    assert res["identical_images"] == 3 and res["psnr_images"] == 4
    assert res["psnr_db_min"] == pytest.approx(10 * np.log10(255.0**2 * 192), abs=1e-3)
    assert res["psnr_db_pooled"] == pytest.approx(10 * np.log10(255.0**2 * 192 * 4), abs=1e-3)
    assert digits.image_psnr(ref, ref)["psnr_db_pooled"] == float("inf")


def test_frechet_distance_of_singular_covariances_is_silent_and_exact():
    """Dead ReLU features (always 0) make the covariances singular: no scipy warning, the trace formula holds."""
    import warnings

    rng = np.random.default_rng(0)
    a, b = np.maximum(rng.standard_normal((50, 16)), 0), np.maximum(rng.standard_normal((360, 16)) * 2, 0)
    a[:, :3] = 0
    stats_a, stats_b = digits.feature_stats(a), digits.feature_stats(b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fd = digits.frechet_distance(*stats_a, *stats_b)
    (mu1, s1), (mu2, s2) = stats_a, stats_b
    tr_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()  # torchmetrics' formulation
    assert fd == pytest.approx(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt, rel=1e-9)
