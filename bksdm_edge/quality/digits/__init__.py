"""A small text-to-image teacher trained on scikit-learn's handwritten digits, and a digit scorer.

No real Stable Diffusion checkpoint or LAION/COCO data can be downloaded where this project is built, so the
toolkit trains its own teacher: ``sklearn.datasets.load_digits`` (1,797 8x8 images, bundled with scikit-learn)
upscaled to 32 px, captioned "a handwritten digit seven" and the like. The teacher (``builtin:mini-sd-digits``)
has the SD-v1 layout (an AutoencoderKL, a CLIP-architecture text encoder read through the real CLIP tokenizer,
and a U-Net with CrossAttnDown x3 + DownBlock2D, a cross-attention mid block and UpBlock2D + CrossAttnUp x3), so
every BK-SDM variant, the distiller and the exporters apply to it unchanged.

The digit scorer is a small CNN trained once on the same training split. It gives the two quality numbers of
this scale: ``prompt_accuracy`` (the fraction of generated images classified as the digit the prompt asked
for; the CLIP-score analogue) and a Fréchet distance on its penultimate features against the held-out real
digits (the FID analogue).

One module per job:

- ``data``: the digits, the fixed split, upscaling, captions, the image-folder writer (distillation data);
- ``scorer``: the scorer network, loading it, and the scores (prompt accuracy, Fréchet distance);
- ``evaluation``: generating digit images from a diffusers pipeline or an exported bundle, image PSNR
  between the two, grids, and ``evaluate_model`` (scores + Markdown + grid of a model).

Training the teacher and the scorer is a one-off experiment and lives beside its script,
``benchmarks/mini_sd/teacher_training.py`` (docs/quality.md says how it was done). Everything is re-exported
here, so ``from bksdm_edge.quality import digits; digits.score_digits(...)`` works.
"""

from ...metrics import feature_stats, frechet_distance
from .data import (
    CAPTION_TEMPLATES,
    DIGIT_WORDS,
    HOLDOUT_FRACTION,
    SPLIT_SEED,
    DigitsSplit,
    caption,
    digit_of_caption,
    eval_prompts,
    heldout_reference,
    load_digit_split,
    upscale,
    write_digits_imagefolder,
)
from .evaluation import (
    DigitEvalConfig,
    evaluate_model,
    generate_bundle_digits,
    generate_digits,
    image_grid,
    image_psnr,
    initial_latents,
    load_trained,
    versions,
)
from .scorer import (
    SCORER_SIZE,
    DigitScorer,
    ScorerFeatures,
    digit_frechet_distance,
    load_scorer,
    prompt_accuracy,
    score_digits,
    to_scorer_input,
)

__all__ = [
    "CAPTION_TEMPLATES", "DIGIT_WORDS", "HOLDOUT_FRACTION", "SCORER_SIZE", "SPLIT_SEED", "DigitEvalConfig",
    "DigitScorer", "DigitsSplit", "ScorerFeatures", "caption", "digit_frechet_distance", "digit_of_caption",
    "eval_prompts", "evaluate_model", "feature_stats", "frechet_distance", "generate_bundle_digits",
    "generate_digits", "heldout_reference", "image_grid", "image_psnr", "initial_latents", "load_digit_split",
    "load_scorer", "load_trained", "prompt_accuracy", "score_digits", "to_scorer_input", "upscale", "versions",
    "write_digits_imagefolder",
]
