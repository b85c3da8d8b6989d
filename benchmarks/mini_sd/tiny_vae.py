"""Tiny VAE decoder at small scale (issue 14 part 5): distil a TAESD-architecture decoder from the digits teacher's
VAE, then compare it with the teacher's decoder (PSNR on held-out latents and trajectories, prompt accuracy and
Fréchet distance in PyTorch and from ONNX int8 bundles). Library: ``bksdm_edge.quality.tiny_vae``.

    nice -n 5 python benchmarks/mini_sd/tiny_vae.py --steps 2000

Writes tiny_vae.{json,md} and tiny_vae_grid.png under --results (default benchmarks/results/mini_sd). Stages are
recorded under --work, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bksdm_edge.bench.machine import machine_info
    from bksdm_edge.quality.tiny_vae import TinyVaeEvalConfig, run_all, summarise

    d = TinyVaeEvalConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=d.steps, help="distill-vae steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--trajectories", type=int, default=d.trajectories)
    p.add_argument("--trajectory-fraction", type=float, default=d.trajectory_fraction)
    p.add_argument("--lambda-edge", type=float, default=d.lambda_edge)
    p.add_argument("--lambda-fft", type=float, default=d.lambda_fft)
    p.add_argument("--lambda-adv", type=float, default=d.lambda_adv)
    p.add_argument("--eval-seeds", type=int, default=d.eval_seeds, help="images per digit prompt")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--work", type=Path, default=Path("/tmp/bksdm-tiny-vae"))
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/mini_sd")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    cfg = TinyVaeEvalConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, trajectories=args.trajectories,
                            trajectory_fraction=args.trajectory_fraction, lambda_edge=args.lambda_edge,
                            lambda_fft=args.lambda_fft, lambda_adv=args.lambda_adv, eval_seeds=args.eval_seeds)
    command = "nice -n 5 python benchmarks/mini_sd/tiny_vae.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    started = time.time()
    result = run_all(cfg, args.work)
    machine = machine_info()
    meta = {"command": command.strip(), "wall_s": round(time.time() - started, 1),
            "machine": f"{machine.get('cpu', '?')} ({machine.get('logical_cpus', '?')} logical CPUs), "
                       f"{args.threads} torch threads",
            "load": " / ".join(f"{x:.1f}" for x in os.getloadavg())}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "tiny_vae.json").write_text(json.dumps({**result, "meta": meta, "machine": machine}, indent=2) + "\n")
    (args.results / "tiny_vae.md").write_text(summarise(result, meta))
    shutil.copyfile(args.work / "tiny_vae_grid.png", args.results / "tiny_vae_grid.png")
    print((args.results / "tiny_vae.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
