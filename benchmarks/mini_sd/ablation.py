"""BK-SDM ablation at small scale (issue 7 part 3): init x losses x variant x seed on the digits teacher,
plus export quality of each variant's full-recipe student. Setups, jobs and tables: ``ablation_jobs.py`` beside
this script.

    python benchmarks/mini_sd/ablation.py --steps 40 --eval-seeds 3 --workers 2
    python benchmarks/mini_sd/ablation.py --tables-only           # rebuild the tables from the stored records

Writes ablation.{json,md} and export_quality.{json,md} under --results (default benchmarks/results/mini_sd).
Per-job records live under --work, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]  # this checkout's bksdm_edge, and the sibling modules


def _worker(args):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ablation_jobs import run_job

    job, cfg, work = args
    t = time.perf_counter()
    try:
        run_job(job, cfg, work)
        return job, round(time.perf_counter() - t, 1), None
    except Exception as e:  # keep the other jobs going; the failure is reported
        return job, round(time.perf_counter() - t, 1), f"{type(e).__name__}: {e}"


def main(argv=None) -> int:
    import multiprocessing as mp

    from ablation_jobs import AblationConfig, ensure_data, jobs, load_records, summarise

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = AblationConfig()
    p.add_argument("--steps", type=int, default=d.steps, help="distillation steps, equal for every cell")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    p.add_argument("--eval-seeds", type=int, default=d.eval_seeds, help="images per digit prompt")
    p.add_argument("--workers", type=int, default=2, help="parallel processes (1 torch thread each)")
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--work", type=Path, default=Path("/tmp/bksdm-ablation"))
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/mini_sd")
    p.add_argument("--tables-only", action="store_true")
    args = p.parse_args(argv)
    cfg = AblationConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seeds=tuple(args.seeds),
                         eval_seeds=args.eval_seeds)
    cmd = "nice -n 5 python benchmarks/mini_sd/ablation.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]) if a != "--tables-only")
    meta_path = args.work / "meta.json"
    failures: list = []
    if not args.tables_only:
        args.work.mkdir(parents=True, exist_ok=True)
        ensure_data(args.work, cfg)
        todo = jobs(cfg, export=not args.no_export)
        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
            for job, secs, err in pool.imap_unordered(_worker, [(j, cfg, args.work) for j in todo]):
                print(f"[{time.perf_counter() - t0:7.1f} s] {job} {secs} s {'FAILED ' + err if err else 'ok'}",
                      flush=True)
                if err:
                    failures.append([list(job), err])
        meta_path.write_text(json.dumps({"wall_s": round(time.perf_counter() - t0), "workers": args.workers,
                                         "command": cmd, "failures": failures}))
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"command": cmd}
    abl, abl_md, ex, ex_md = summarise(load_records(args.work), cfg, meta)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "ablation.json").write_text(json.dumps(abl, indent=2))
    (args.results / "ablation.md").write_text(abl_md)
    (args.results / "export_quality.json").write_text(json.dumps(ex, indent=2))
    (args.results / "export_quality.md").write_text(ex_md)
    print(abl_md)
    print(ex_md)
    return 1 if meta.get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
