"""Score a digits model: prompt accuracy and Fréchet distance on 10 prompts x N seeds.

    python benchmarks/mini_sd/score_teacher.py                      # the shipped builtin:mini-sd-digits
    python benchmarks/mini_sd/score_teacher.py --weights DIR        # weights written by train_teacher.py

Writes NAME.json, NAME.md and NAME_grid.png under --results (default benchmarks/results/mini_sd).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import torch

    from bksdm_edge.builtins import BUILTINS
    from bksdm_edge.loading import load_model
    from bksdm_edge.quality.digits import DigitEvalConfig, evaluate_model, load_scorer, load_trained

    d = DigitEvalConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="mini-sd-digits", choices=sorted(BUILTINS))
    p.add_argument("--weights", type=Path, default=None, help="weights folder (default: the packaged ones)")
    p.add_argument("--scorer", type=Path, default=None, help="digit scorer folder (default: the packaged one)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/mini_sd")
    p.add_argument("--name", default="teacher")
    p.add_argument("--seeds", type=int, default=d.seeds)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--guidance-scale", type=float, default=d.guidance_scale)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = BUILTINS[args.spec]
    model = load_trained(spec, args.weights) if args.weights else load_model(f"builtin:{args.spec}")
    cfg = DigitEvalConfig(seeds=args.seeds, steps=args.steps, guidance_scale=args.guidance_scale)
    rec = evaluate_model(model, args.results, cfg, name=args.name, scorer=load_scorer(args.scorer),
                         resolution=spec.default_resolution)
    print(f"{args.name}: prompt accuracy {rec['prompt_accuracy']:.3f}, Fréchet distance "
          f"{rec['frechet_distance']:.3f} ({rec['n_images']} images, {rec['generation_s']} s) -> {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
