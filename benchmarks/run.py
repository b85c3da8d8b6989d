"""Run a benchmark config: ``python benchmarks/run.py [--config quick|cpu-full|gpu|PATH.yaml]``.

Thin wrapper over ``bksdm_edge.bench.runner.bench`` (same options as ``bksdm-edge bench``).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bksdm_edge.cli import _quiet_third_party  # noqa: E402
from bksdm_edge.commands.bench import add_arguments, run  # noqa: E402

if __name__ == "__main__":
    _quiet_third_party()
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
