"""Run a benchmark config: ``python benchmarks/run.py [--config quick|cpu-full|gpu|PATH.yaml]``.

Thin wrapper over ``bksdm_edge.bench.runner.bench`` (same options as ``bksdm-edge bench``).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bksdm_edge.cli import add_console_flags, run_entry_point  # noqa: E402
from bksdm_edge.commands.bench import add_arguments, run  # noqa: E402


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    return add_console_flags(parser).parse_args(argv)


if __name__ == "__main__":
    sys.exit(run_entry_point(sys.argv[1:], parse, run))
