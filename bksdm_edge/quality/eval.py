"""Text-to-image evaluation the BK-SDM way: generate for a caption file, then FID, IS and CLIP score.

The paper's protocol (arXiv 2305.15798, and scripts/eval_scores.sh of its code): the 30K MS-COCO val2014
captions (``metadata.csv`` with columns ``file_name,text``), one image per caption at 512 px with 25 PNDM
steps, resized to 256 px; FID against the statistics of the real val2014 images at 256 px (pytorch-fid),
IS (torch-fidelity) and CLIP score = mean cosine similarity between the OpenCLIP ViT-g-14
(``laion2b_s34b_b88k``) image and caption embeddings.

Here the same steps run with library implementations:

* FID: Inception-v3 pool features from torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's port of the
  TF-FID network, the same ``pt_inception-2015-12-05`` weights pytorch-fid uses) and the Fréchet distance
  from ``bksdm_edge.metrics.frechet_distance`` (scipy.linalg.sqrtm, the pytorch-fid formula);
  reference statistics come from an ``.npz`` with ``mu``/``sigma`` (pytorch-fid's ``--save-stats`` format)
  or a folder of images.
* IS: torchmetrics' ``InceptionScore`` (10 splits).
* CLIP score: open-clip-torch, as the paper's ``eval_clip_score.py``.

A real run downloads: the FID Inception weights ``pt_inception-2015-12-05-6726825d.pth`` (about 92 MB, from
torch-fidelity's GitHub releases, on first use of the ``inception`` extractor; needs ``pip install
torch-fidelity``) and the OpenCLIP ``ViT-g-14`` / ``laion2b_s34b_b88k`` weights (about 5.5 GB from the
Hugging Face hub). torch-fidelity and open-clip-torch both need torchvision.

``feature_extractor="digits"`` swaps all three for the shipped digit scorer (FID on its penultimate features,
IS on its logits, prompt accuracy instead of CLIP score), so the whole path runs offline.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..checks import IMAGE_SUFFIXES
from ..errors import BksdmError
from ..metrics import feature_stats, frechet_distance
from .digits import digit_of_caption
from .eval_config import FEATURE_EXTRACTORS, METRICS, EvalConfig  # noqa: F401 (re-exported)


class EvalError(BksdmError, ValueError):
    """Bad evaluation inputs (caption file, reference statistics, missing metric library)."""


@dataclass(frozen=True)
class Caption:
    file_name: str
    text: str


def read_captions(path: str | Path, limit: int | None = None) -> list[Caption]:
    """Captions from a CSV (header with ``text`` or ``caption``, optional ``file_name``: the paper's
    ``metadata.csv``) or a TXT file (one caption per line). Images are named after ``file_name`` (as .png)."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"caption file {path} does not exist")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = {c.lower().strip(): c for c in reader.fieldnames or []}
            text_col = cols.get("text") or cols.get("caption")
            if text_col is None:
                raise EvalError(f"{path}: a CSV caption file needs a 'text' or 'caption' column, got {reader.fieldnames}")
            name_col = cols.get("file_name")
            rows = [(r.get(name_col) if name_col else None, r[text_col]) for r in reader]
    else:
        rows = [(None, line.strip()) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    caps = [Caption(Path(name).stem + ".png" if name else f"{i:06d}.png", text) for i, (name, text) in enumerate(rows)]
    if not caps:
        raise EvalError(f"{path} holds no captions")
    return caps[:limit] if limit else caps


def generate_images(model, captions: Sequence[Caption], out_dir: str | Path, cfg: EvalConfig, log=None) -> Path:
    """Generate one image per caption into ``out_dir/im{resolution}`` and the resized copies into
    ``out_dir/im{resize}``; existing images are kept (a run can resume). Returns the folder to score."""
    from PIL import Image

    res = cfg.resolution or model.native_resolution
    out_dir = Path(out_dir)
    gen_dir = out_dir / f"im{res}"
    gen_dir.mkdir(parents=True, exist_ok=True)
    score_dir = out_dir / f"im{cfg.resize}" if cfg.resize and cfg.resize != res else gen_dir
    score_dir.mkdir(parents=True, exist_ok=True)
    todo = [(i, c) for i, c in enumerate(captions) if not (score_dir / c.file_name).exists()]
    pipe = model.to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    t0 = time.time()
    for k in range(0, len(todo), cfg.batch):
        chunk = todo[k : k + cfg.batch]
        images = pipe(
            prompt=[c.text for _, c in chunk],
            generator=[torch.Generator().manual_seed(cfg.seed + i) for i, _ in chunk],
            num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale, height=res, width=res,
        ).images
        for (_, c), img in zip(chunk, images):
            # Atomic writes: a resumed run skips existing images, so none may be half-written.
            _save_png(img, gen_dir / c.file_name)
            if score_dir != gen_dir:
                _save_png(img.resize((cfg.resize, cfg.resize), Image.BICUBIC), score_dir / c.file_name)
        if log:
            log(f"generated {min(k + cfg.batch, len(todo))}/{len(todo)} ({time.time() - t0:.0f}s)")
    return score_dir


def _save_png(img, path: Path) -> None:
    import io

    from ..outputs import write_bytes_atomic

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


EVAL_CONFIG = "eval_config.json"
# What makes two runs' images the same: a resumed run must match on all of these.
_RESUME_KEYS = ("source", "unet", "vae", "captions", "resolution", "steps", "guidance_scale", "seed", "resize")


def claim_eval_dir(out_dir: Path, run: dict[str, Any]) -> None:
    """``out_dir`` must be new, empty, or an eval folder of the same generation settings (then it resumes).

    Writes ``eval_config.json`` (the settings) so a later run can tell. A folder of other files is refused.
    """
    from ..errors import OutputError
    from ..outputs import EVAL_RUN, claim, write_text_atomic

    claim(out_dir, (EVAL_RUN,), replace=True, flag="--out", option="--out")
    marker = out_dir / EVAL_CONFIG
    if marker.exists():
        before = json.loads(marker.read_text())
        changed = [k for k in _RESUME_KEYS if before.get(k) != run.get(k)]
        if changed:
            raise OutputError(
                f"--out {out_dir} holds images of another eval run ({', '.join(f'{k}: {before.get(k)!r} -> {run.get(k)!r}' for k in changed)}); "
                "its images would be mixed with these: choose a new --out")
    write_text_atomic(marker, json.dumps(run, indent=2) + "\n")


def load_images(paths: Sequence[Path], size: int | None = None) -> torch.Tensor:
    """Images as uint8 (N, 3, H, W); with ``size``, center-cropped to a square and resized (bicubic)."""
    from PIL import Image

    out = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        if size is not None and img.size != (size, size):
            s = min(img.size)
            left, top = (img.width - s) // 2, (img.height - s) // 2
            img = img.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
    if len({tuple(t.shape) for t in out}) > 1:
        raise EvalError("images differ in size; pass a resize so they can be batched")
    return torch.stack(out)


def image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f"{folder} is not a folder of images")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class _Scorers:
    """The feature network (FID), the classifier (IS) and, for digits, the prompt-accuracy head."""

    def __init__(self, name: str, scorer_path: str | Path | None = None):
        if name == "digits":
            from .digits import ScorerFeatures, load_scorer

            self.classifier = load_scorer(scorer_path)
            self.features = ScorerFeatures(self.classifier)
            self.logits = self.classifier
        elif name == "inception":
            try:
                from torchmetrics.image.fid import NoTrainInceptionV3
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise EvalError("the inception extractor needs torchmetrics: pip install torchmetrics") from err
            try:
                self.features = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
                self.logits = NoTrainInceptionV3(name="inception-v3-compat", features_list=["logits_unbiased"])
            except ModuleNotFoundError as err:
                raise EvalError(
                    f"the inception extractor needs torch-fidelity (and torchvision): pip install torch-fidelity "
                    f"({err}); offline, use --feature-extractor digits"
                ) from err
            self.classifier = None
        else:
            raise EvalError(f"unknown feature extractor {name!r}; choose from {FEATURE_EXTRACTORS}")


@torch.no_grad()
def _run(module, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([module(images[i : i + batch]).double() for i in range(0, len(images), batch)])


def reference_stats(ref: str | Path, scorers: _Scorers, size: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    """``mu``/``sigma`` from an .npz (pytorch-fid / clean-fid style keys) or from a folder of images."""
    ref = Path(ref)
    if ref.suffix == ".npz":
        data = np.load(ref)
        if not {"mu", "sigma"} <= set(data.files):
            raise EvalError(f"{ref} needs arrays 'mu' and 'sigma' (pytorch-fid --save-stats format), has {data.files}")
        return data["mu"], data["sigma"], f"npz:{ref}"
    files = image_files(ref)
    if len(files) < 2:
        raise EvalError(f"{ref} holds {len(files)} images; FID needs at least 2 reference images")
    mu, sigma = feature_stats(_run(scorers.features, load_images(files, size)).numpy())
    return mu, sigma, f"folder:{ref} ({len(files)} images)"


def clip_score(images: torch.Tensor, texts: Sequence[str], model_name: str, pretrained: str,
               batch: int = 16) -> float:
    """Mean cosine similarity of OpenCLIP image and text embeddings (the paper's CLIP score, not x100)."""
    try:
        import open_clip
    except Exception as err:  # open_clip imports torchvision at import time
        raise EvalError(
            f"CLIP score needs open-clip-torch with a working torchvision ({type(err).__name__}: {err}); "
            "drop it with --metrics fid,is or use --feature-extractor digits"
        ) from err
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    tokenizer = open_clip.get_tokenizer(model_name)
    model.eval()
    scores = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images[i : i + batch]]
            img = model.encode_image(torch.stack([preprocess(p) for p in pil]))
            txt = model.encode_text(tokenizer(list(texts[i : i + batch])))
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            scores.append((img * txt).sum(dim=-1))
    return float(torch.cat(scores).mean())


def score_folder(image_dir: str | Path, captions: Sequence[Caption], cfg: EvalConfig, ref: str | Path | None,
                 scorer_path: str | Path | None = None) -> dict[str, Any]:
    """FID (needs ``ref``), IS and CLIP score (or prompt accuracy for digits) of the images named in ``captions``."""
    from torchmetrics.image.inception import InceptionScore

    image_dir = Path(image_dir)
    missing = [c.file_name for c in captions if not (image_dir / c.file_name).exists()]
    if missing:
        raise EvalError(f"{len(missing)} images missing in {image_dir} (first: {missing[0]})")
    images = load_images([image_dir / c.file_name for c in captions])
    scorers = _Scorers(cfg.feature_extractor, scorer_path)
    out: dict[str, Any] = {"n_images": len(images), "feature_extractor": cfg.feature_extractor}
    if "fid" in cfg.metrics:
        if ref is None:
            raise EvalError("FID needs reference statistics: pass --ref STATS.npz or --ref IMAGE_FOLDER")
        mu_r, sigma_r, out["fid_reference"] = reference_stats(ref, scorers, cfg.resize)
        mu_g, sigma_g = feature_stats(_run(scorers.features, images).numpy())
        out["fid"] = frechet_distance(mu_g, sigma_g, mu_r, sigma_r)
    if "is" in cfg.metrics:
        splits = min(10, len(images))
        metric = InceptionScore(feature=scorers.logits, splits=splits)
        metric.update(images)
        mean, std = metric.compute()
        out["is"], out["is_std"], out["is_splits"] = float(mean), float(std), splits
    if "clip" in cfg.metrics:
        if cfg.feature_extractor == "digits":
            # The CLIP-score analogue: does the scorer read the digit the caption asks for?
            asked = [(i, digit_of_caption(c.text)) for i, c in enumerate(captions)]
            asked = [(i, d) for i, d in asked if d is not None]
            if asked:
                idx = torch.tensor([i for i, _ in asked])
                pred = _run(scorers.classifier, images[idx]).argmax(dim=1)
                out["prompt_accuracy"] = float((pred == torch.tensor([d for _, d in asked])).double().mean())
            out["prompt_accuracy_n"] = len(asked)
        else:
            out["clip_score"] = clip_score(images, [c.text for c in captions], cfg.clip_model, cfg.clip_pretrained)
            out["clip_model"] = f"open_clip:{cfg.clip_model}/{cfg.clip_pretrained}"
    return out


def evaluate(source: str, captions_path: str | Path, out_dir: str | Path, cfg: EvalConfig = EvalConfig(), *,
             unet: str | Path | None = None, vae: str | Path | None = None, ref: str | Path | None = None,
             scorer_path: str | Path | None = None, log=None) -> dict[str, Any]:
    """Generate images for a caption file with a model (and optional student U-Net) and score them.

    Args:
        source: model source for ``load_model`` (``builtin:NAME``, a diffusers folder or a hub id).
        captions_path: CSV (``file_name,text``, the paper's MS-COCO 30K metadata.csv) or TXT captions.
        out_dir: generated images (``im{resolution}``, ``im{resize}``) and ``metrics.json`` go here.
        cfg: generation and scoring settings.
        unet: optional student U-Net folder replacing the model's U-Net.
        vae: optional VAE replacing the model's (``tiny``, a ``distill-vae`` run, an AutoencoderTiny folder or hub
            id; ``bksdm_edge.tiny_vae``); None / ``teacher`` keeps it.
        ref: FID reference: ``.npz`` with ``mu``/``sigma`` or a folder of real images.
        scorer_path: digit scorer folder for ``feature_extractor="digits"`` (default: the shipped one).
    Returns the record also written to ``out_dir/metrics.json``.
    """
    from ..loading import load_model

    unknown = set(cfg.metrics) - set(METRICS)
    if unknown:
        raise EvalError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    if cfg.feature_extractor not in FEATURE_EXTRACTORS:
        raise EvalError(f"unknown feature extractor {cfg.feature_extractor!r}; choose from {FEATURE_EXTRACTORS}")
    if "fid" in cfg.metrics and ref is None:
        raise EvalError("FID needs reference statistics: pass --ref STATS.npz or --ref IMAGE_FOLDER "
                        "(or leave fid out of --metrics)")
    captions = read_captions(captions_path, cfg.limit)
    claim_eval_dir(Path(out_dir), {
        "source": source, "unet": str(unet) if unet else None,
        "vae": str(vae) if vae is not None and str(vae) != "teacher" else None,
        "captions": str(Path(captions_path).resolve()),
        **{k: v for k, v in asdict(cfg).items() if k in _RESUME_KEYS}})
    model = load_model(source, unet=unet, vae=vae)
    t0 = time.time()
    score_dir = generate_images(model, captions, out_dir, cfg, log)
    gen_s = time.time() - t0
    scores = score_folder(score_dir, captions, cfg, ref, scorer_path)
    record = {
        "source": source, "unet": str(unet) if unet else None, "vae": model.vae_source, "captions": str(captions_path),
        "n_captions": len(captions), "scored_images": str(score_dir), "config": asdict(cfg),
        "scheduler": type(model.scheduler).__name__, "generation_s": round(gen_s, 1),
        "score_s": round(time.time() - t0 - gen_s, 1), **scores,
    }
    from ..outputs import write_text_atomic

    write_text_atomic(Path(out_dir, "metrics.json"), json.dumps(record, indent=2) + "\n")
    return record


def save_reference_stats(image_dir: str | Path, out_path: str | Path, feature_extractor: str = "inception",
                         size: int | None = 256, scorer_path: str | Path | None = None) -> Path:
    """Write ``mu``/``sigma`` of a folder of real images (pytorch-fid's npz format) for later ``--ref``."""
    scorers = _Scorers(feature_extractor, scorer_path)
    mu, sigma, _ = reference_stats(image_dir, scorers, size)
    import io

    from ..outputs import write_bytes_atomic

    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma)
    return write_bytes_atomic(out_path, buf.getvalue())
