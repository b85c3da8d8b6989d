"""Fake benchmark back-ends for tests/test_bench*.py (registered when the config lists this module as a plugin).

- ``fake-slowstart``: its first ``SLOW_CALLS`` calls in a process sleep ``SLOW_S``; later calls sleep ``FAST_S``.
- ``fake-alloc``: allocates ``options["alloc_mb"]`` MB (touched) at load; runs take ~1 ms.
- ``fake-fail``: raises at load.
- ``fake-peer``: a peer engine whose runs take ~``PEER_WALL_S`` but report ``PEER_CALL_S`` for the measured call.
"""

from __future__ import annotations

import time

import numpy as np

from bksdm_edge.bench.backends import Backend, Loaded, register_backend

SLOW_CALLS, SLOW_S, FAST_S = 2, 0.4, 0.01
PEER_CALL_S, PEER_WALL_S = 0.123, 0.05


class _Fake(Backend):
    NEEDS_MODULE = False

    def precisions(self):
        return ["fp32"]

    def prepare(self, s, module, example_inputs, output_names, out_dir):
        (out_dir / "fake.bin").write_bytes(b"x" * 1024)
        return {"files": ["fake.bin"], "main": "fake.bin", "extra": {}}


@register_backend
class SlowStart(_Fake):
    NAME = "fake-slowstart"

    def load(self, s, artifact_dir, meta):
        calls = [0]

        def run(_):
            calls[0] += 1
            time.sleep(SLOW_S if calls[0] <= SLOW_CALLS else FAST_S)

        return Loaded(run=run)


@register_backend
class Alloc(_Fake):
    NAME = "fake-alloc"

    def load(self, s, artifact_dir, meta):
        buf = np.ones(int(s.options.get("alloc_mb", 0)) * 2**20, dtype=np.uint8)  # touched pages count in RSS

        def run(_):
            time.sleep(0.001)
            return buf[:1]

        return Loaded(run=run)


@register_backend
class Fail(_Fake):
    NAME = "fake-fail"

    def load(self, s, artifact_dir, meta):
        raise RuntimeError("this backend always fails")


@register_backend
class Peer(_Fake):
    NAME = "fake-peer"
    PEER = True

    def load(self, s, artifact_dir, meta):
        def run(_):
            time.sleep(PEER_WALL_S)

        return Loaded(run=run, reported_s=lambda: PEER_CALL_S)
