"""The README's main job on the built-in default: ``python -m bksdm_edge.main_job --out out``.

1. profile the SD-v1.4 architecture against BK-SDM Base/Small/Tiny (the paper's Table 1);
2. build a BK-SDM student from the built-in default teacher and save it.
Later stages (distil, export, generate, benchmark) are appended as steps below.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .builtins import DEFAULT_BUILTIN
from .cli import main as cli

DEFAULT_TEACHER = f"builtin:{DEFAULT_BUILTIN}"


def steps(out: Path, teacher: str, variant: str) -> list[tuple[str, list[str]]]:
    """The main job as data: (title, bksdm-edge arguments)."""
    student = out / f"student-{variant}"
    return [
        ("Profile SD-v1.4 vs BK-SDM students (paper Table 1)",
         ["profile", "--teacher", "builtin:sd-v1.4", "--variants", "all", "--json", str(out / "profile_sd-v1.4.json")]),
        (f"Profile {teacher} with all components",
         ["profile", "--teacher", teacher, "--variants", "all", "--resolution", "128",
          "--components", "unet,text_encoder,vae_decoder", "--json", str(out / "profile_default.json")]),
        (f"Build {variant} from {teacher}",
         ["build", "--teacher", teacher, "--variant", variant, "--out", str(student), "--force"]),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: out)")
    parser.add_argument("--teacher", default=DEFAULT_TEACHER, help=f"teacher (default: {DEFAULT_TEACHER})")
    parser.add_argument("--variant", default="bk-small", help="student variant (default: bk-small)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    timings = {}
    for i, (title, command) in enumerate(steps(args.out, args.teacher, args.variant), 1):
        print(f"\n=== [{i}] {title}\n$ bksdm-edge {' '.join(command)}", flush=True)
        start = time.perf_counter()
        code = cli(command)
        timings[title] = round(time.perf_counter() - start, 2)
        if code:
            print(f"step failed with exit code {code}", file=sys.stderr)
            return code
    (args.out / "main_job.json").write_text(json.dumps({"steps_s": timings}, indent=2))
    print(f"\nmain job done: outputs in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
