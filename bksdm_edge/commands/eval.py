"""``bksdm-edge eval``: generate images for a caption file and compute FID, IS and CLIP score (paper protocol)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DOWNLOADS = (
    "A real run (--feature-extractor inception) downloads the FID Inception-v3 weights "
    "pt_inception-2015-12-05-6726825d.pth (~92 MB, torch-fidelity's GitHub release; pip install torch-fidelity) "
    "for FID and IS, and for CLIP score the OpenCLIP ViT-g-14 / laion2b_s34b_b88k weights (~5.5 GB, Hugging Face "
    "hub; pip install open-clip-torch). Both libraries need torchvision. --feature-extractor digits downloads "
    "nothing: FID and IS use the shipped digit scorer and CLIP score becomes prompt accuracy."
)


def register(subparsers) -> None:
    from ..quality.eval_config import FEATURE_EXTRACTORS, EvalConfig

    d = EvalConfig()
    p = subparsers.add_parser(
        "eval",
        help="generate images for captions and compute FID / IS / CLIP score",
        description="Generate one image per caption (CSV with file_name,text columns such as the paper's MS-COCO "
        "30K val2014 metadata.csv, or a TXT file with one caption per line) and score them the BK-SDM way: "
        "512 px, 25 PNDM steps (the model's scheduler), resized to 256 px; FID against --ref (an .npz with "
        "mu/sigma in pytorch-fid's --save-stats format, or a folder of real images), IS (torchmetrics) and "
        "CLIP score (mean cosine similarity, OpenCLIP ViT-g-14). " + DOWNLOADS,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="builtin:mini-sd-digits", help="model source")
    p.add_argument("--unet", type=Path, default=None, help="student U-Net folder replacing the model's U-Net")
    p.add_argument("--vae", default="teacher", help="VAE decoding the images: teacher (default), a `bksdm-edge "
                   "distill-vae` run folder, an AutoencoderTiny folder or hub id (e.g. madebyollin/taesd)")
    p.add_argument("--captions", type=Path, help="caption file (.csv with a text/caption column, or .txt)")
    p.add_argument("--out", type=Path, required=True, help="output folder (images + metrics.json)")
    p.add_argument("--ref", type=Path, default=None, help="FID reference: stats .npz or folder of real images")
    p.add_argument("--feature-extractor", choices=FEATURE_EXTRACTORS, default=d.feature_extractor,
                   help="inception: the field's metrics (downloads weights); digits: the shipped digit scorer")
    p.add_argument("--metrics", default=",".join(d.metrics), help="comma-separated subset of fid,is,clip")
    p.add_argument("--resolution", type=int, default=d.resolution,
                   help="generation size in px (0: the model's default size)")
    p.add_argument("--resize", type=int, default=d.resize, help="resize to this size before scoring (0: keep)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--guidance-scale", type=float, default=d.guidance_scale)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--seed", type=int, default=d.seed, help="image i uses seed + i")
    p.add_argument("--limit", type=int, default=None, help="only the first N captions")
    p.add_argument("--clip-model", default=d.clip_model)
    p.add_argument("--clip-pretrained", default=d.clip_pretrained)
    p.add_argument("--scorer", type=Path, default=None, help="digit scorer folder (default: the shipped one)")
    p.add_argument("--save-ref-stats", type=Path, default=None,
                   help="only write mu/sigma of the --ref image folder to this .npz and exit")
    p.set_defaults(func=run)


def check_args(args) -> None:
    """Every eval option that can be checked before a model is loaded."""
    from .. import checks
    from ..quality.eval_config import METRICS

    if args.resolution:
        checks.resolution(args.model, args.resolution)
    checks.at_least(args.resolution, 0, "--resolution", why="0 means the model's default size")
    checks.at_least(args.resize, 0, "--resize", why="0 keeps the generated size")
    for flag, minimum in (("steps", 1), ("batch", 1), ("limit", 1), ("seed", 0)):
        checks.at_least(getattr(args, flag), minimum, "--" + flag)
    checks.finite(args.guidance_scale, "--guidance-scale")
    checks.choices([m.strip() for m in args.metrics.split(",") if m.strip()], METRICS, "--metrics")
    checks.unet_folder(args.unet, "--unet")
    checks.vae_source(args.vae, "--vae")
    checks.existing_file(args.captions, "--captions", suffixes=(".csv", ".txt"), what="caption file")
    if args.ref is not None and args.ref.suffix.lower() == ".npz":
        checks.existing_file(args.ref, "--ref", what="reference statistics file")
    else:
        checks.existing_dir(args.ref, "--ref", what="folder of reference images")
    checks.existing_dir(args.scorer, "--scorer", what="digit scorer folder")
    checks.output_file(args.save_ref_stats, "--save-ref-stats", suffixes=(".npz",), what="statistics file")
    checks.output_dir(args.out, "--out")


def run(args) -> int:
    from ..quality.eval_config import EvalConfig

    check_args(args)

    from ..quality.eval import EvalError, evaluate, save_reference_stats
    if args.save_ref_stats is not None:
        if args.ref is None:
            raise EvalError("--save-ref-stats needs --ref IMAGE_FOLDER")
        path = save_reference_stats(args.ref, args.save_ref_stats, args.feature_extractor, args.resize or None,
                                    args.scorer)
        print(f"wrote reference statistics to {path}")
        return 0
    if args.captions is None:
        raise EvalError("--captions is required (a .csv with a text column or a .txt file)")
    cfg = EvalConfig(
        resolution=args.resolution or None, resize=args.resize or None, steps=args.steps,
        guidance_scale=args.guidance_scale, batch=args.batch, seed=args.seed, limit=args.limit,
        feature_extractor=args.feature_extractor, metrics=tuple(m.strip() for m in args.metrics.split(",") if m),
        clip_model=args.clip_model, clip_pretrained=args.clip_pretrained,
    )
    record = evaluate(args.model, args.captions, args.out, cfg, unet=args.unet, vae=args.vae, ref=args.ref,
                      scorer_path=args.scorer, log=lambda m: print(m, flush=True))
    keys = ("fid", "is", "is_std", "clip_score", "prompt_accuracy", "n_images")
    print(json.dumps({k: record[k] for k in keys if k in record}, indent=2))
    print(f"metrics written to {args.out / 'metrics.json'}")
    return 0
