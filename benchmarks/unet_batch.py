"""U-Net batch for classifier-free guidance: a batch axis vs static batch 2 vs two batch-1 calls (ONNX Runtime).

The evidence for the ONNX format's default U-Net shape (``bksdm_edge/bench/unet_batch.py`` does the work).
Two phases, so that only the timing needs a quiet machine:

    /work/bin/shared-run flock /tmp/bksdm-heavy.lock python benchmarks/unet_batch.py prepare   # exports, heavy
    /work/bin/timed-run python benchmarks/unet_batch.py measure                                   # ~5 min timing

Writes ``benchmarks/results/unet_batch/`` (results.json/.csv, report.md, unet_batch.png).
Toy check: ``python benchmarks/unet_batch.py all --source builtin:tiny-sd --resolution 64 --out /tmp/ub``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bksdm_edge.bench.unet_batch import StudyConfig, measure, prepare, write_results  # noqa: E402
from bksdm_edge.cli import add_console_flags, run_entry_point  # noqa: E402


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("phase", choices=("prepare", "measure", "all"))
    p.add_argument("--source", default=StudyConfig.source)
    p.add_argument("--models", default=",".join(StudyConfig.models), help="teacher and/or BK-SDM variants")
    p.add_argument("--resolution", type=int, default=StudyConfig.resolution)
    p.add_argument("--threads", type=int, default=StudyConfig.threads)
    p.add_argument("--repeats", type=int, default=StudyConfig.repeats)
    p.add_argument("--warmup", type=int, default=StudyConfig.warmup)
    p.add_argument("--cache", type=Path, default=Path("/tmp/bksdm_unet_batch"), help="exported U-Nets")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "unet_batch")
    return add_console_flags(p).parse_args(argv)


def run(a) -> int:
    config = StudyConfig(source=a.source, models=tuple(a.models.split(",")), resolution=a.resolution,
                         threads=a.threads, repeats=a.repeats, warmup=a.warmup)
    cache = a.cache / a.source.replace(":", "_") / f"{a.resolution}px"
    if a.phase in ("prepare", "all"):
        prepare(config, cache)
    if a.phase in ("measure", "all"):
        for path in write_results(measure(config, cache), a.out):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry_point(sys.argv[1:], parse, run))
