"""Train the built-in digits teacher (builtin:mini-sd-digits) and the digit scorer, then score the teacher.

Reproduce the shipped weights (about 20 min on 2 shared CPU cores):

    nice -n 10 python benchmarks/mini_sd/train_teacher.py

Training code: teacher_training.py beside this script (data, scorer and scores: bksdm_edge/quality/digits/).
Outputs: bksdm_edge/weights/mini-sd-digits/ (unet, vae, text_encoder
safetensors + train_config.json), bksdm_edge/weights/digit-scorer/, and the scores in benchmarks/results/mini_sd/.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]  # this checkout's bksdm_edge, and the sibling modules


def main(argv=None) -> int:
    from teacher_training import TeacherTrainConfig, train_teacher

    from bksdm_edge.builtins import BUILTINS

    defaults = TeacherTrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="mini-sd-digits", choices=sorted(BUILTINS), help="architecture to train")
    p.add_argument("--out", type=Path, default=ROOT / "bksdm_edge/weights/mini-sd-digits")
    p.add_argument("--scorer-out", type=Path, default=ROOT / "bksdm_edge/weights/digit-scorer")
    p.add_argument("--no-scorer", action="store_true", help="do not (re)train the digit scorer")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/mini_sd",
                   help="where the teacher's scores go")
    p.add_argument("--no-score", action="store_true", help="skip scoring the trained teacher")
    p.add_argument("--eval-seeds", type=int, default=20, help="seeds per prompt when scoring")
    for f in dataclasses.fields(TeacherTrainConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name))
    args = p.parse_args(argv)
    cfg = TeacherTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TeacherTrainConfig)})
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    train_teacher(BUILTINS[args.spec], args.out, None if args.no_scorer else args.scorer_out, cfg,
                  log=lambda m: print(m, flush=True), command=command)
    if not args.no_score:
        from score_teacher import main as score_main

        return score_main(["--weights", str(args.out), "--scorer", str(args.scorer_out), "--results",
                           str(args.results), "--spec", args.spec, "--seeds", str(args.eval_seeds),
                           "--threads", str(cfg.threads)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
