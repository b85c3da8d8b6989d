"""Searched removal plans vs the BK-SDM presets on the digits teacher (issue 16, part 5).

    nice -n 5 python benchmarks/mini_sd/plans.py                 # sensitivity, searches, distillation, latency
    python benchmarks/mini_sd/plans.py --tables-only --notes benchmarks/results/mini_sd/plans/notes.md
                                                                  # rebuild plans.md and the plot from stored results

Jobs and tables: ``plans_jobs.py`` beside this script. Results under --results (default
benchmarks/results/mini_sd/plans); per-cell records under --work, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]  # this checkout's bksdm_edge, and the sibling modules


def main(argv=None) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import plans_jobs as ev

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/bksdm-plans-evidence"))
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/mini_sd/plans")
    p.add_argument("--notes", type=Path, help="a Markdown file added to plans.md (the conclusions)")
    p.add_argument("--tables-only", action="store_true")
    args = p.parse_args(argv)
    cmd = "nice -n 5 python benchmarks/mini_sd/plans.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]) if a != "--tables-only")
    notes = args.notes.read_text().strip() if args.notes else ""
    if args.tables_only:
        doc = json.loads((args.results / "plans.json").read_text())
    else:
        doc = ev.run(args.work, args.results, command=cmd.strip())
    (args.results / "plans.md").write_text(ev.markdown(doc, notes))
    ev.plot(doc, args.results / "plans_pareto.png")
    print((args.results / "plans.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
