"""The measured child process (bench/child.py) and the machine description (bench/machine.py)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from bksdm_edge.bench import child, machine

ALLOC = "import numpy as np, time; b = np.ones({mb} * 2**20, np.uint8); time.sleep(0.3)"


def test_child_peak_rss_is_its_own_and_seen_through_a_wrapper():
    """A 300 MB child is measured as such while this (parent) process holds 400 MB; a shell in between too."""
    held = np.ones(400 * 2**20, np.uint8)  # noqa: F841 - the parent's RSS must not leak into the child's peak
    direct = child.run_child([sys.executable, "-c", ALLOC.format(mb=300)], timeout_s=60)
    assert direct.ok and direct.error() is None
    assert 300 < direct.peak_rss_mb < 390
    # "; true" keeps the shell alive as the parent of python (like flock LOCK python ...).
    wrapped = child.run_child(["sh", "-c", f"{sys.executable} -c '{ALLOC.format(mb=300)}'; true"], timeout_s=60)
    assert wrapped.ok and 300 < wrapped.peak_rss_mb < 390


def test_child_failures_are_one_line_errors():
    slow = child.run_child([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"],
                           timeout_s=1)
    assert slow.timed_out and not slow.ok and slow.error() == "timed out after 1 s" and slow.wall_s < 10
    assert "started" in slow.tail()
    bad = child.run_child([sys.executable, "-c", "import sys; print('x' * 5000); sys.exit('no such model: m')"])
    assert bad.returncode == 1 and bad.error() == "exited with 1: no such model: m"
    assert len(bad.tail(100)) == 100
    killed = child.run_child([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert killed.error() == "died with SIGKILL (killed: out of memory?)"


def test_task_protocol_round_trip(tmp_path):
    script = tmp_path / "task_child.py"
    script.write_text(textwrap.dedent("""
        import sys
        from bksdm_edge.bench.child import task_main

        def fn(task):
            if task["n"] < 0:
                raise ValueError("n must be >= 0")
            return {"square": task["n"] ** 2}

        sys.exit(task_main(fn, sys.argv[1:]))
    """))
    env = child.child_env(threads=1)
    assert env["OMP_NUM_THREADS"] == "1" and env["PYTHONPATH"].startswith(str(child.ROOT))
    result, ran = child.run_task([sys.executable, str(script)], {"n": 7}, env=env, timeout_s=60)
    assert result["ok"] and result["square"] == 49 and result["peak_rss_mb"] > 0 and ran.ok
    result, ran = child.run_task([sys.executable, str(script)], {"n": -1}, env=env, timeout_s=60)
    assert not result["ok"] and result["error"] == "ValueError: n must be >= 0" and "Traceback" in result["traceback"]
    # A child that restarts its high-water mark after a peak (as export stages do) still reports the peak.
    script.write_text(textwrap.dedent("""
        import sys, time
        import numpy as np
        from bksdm_edge.bench.child import task_main

        def fn(task):
            big = np.ones(300 * 2**20, np.uint8)
            time.sleep(0.3)
            del big
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return {}

        sys.exit(task_main(fn, sys.argv[1:]))
    """))
    result, _ = child.run_task([sys.executable, str(script)], {}, env=env, timeout_s=60)
    assert result["ok"] and result["peak_rss_mb"] > 300
    # A child that dies before writing its result: the error says how it ended.
    result, _ = child.run_task([sys.executable, "-c", "import os; os._exit(3)"], {}, timeout_s=60)
    assert not result["ok"] and result["error"].startswith("exited with 3")


def test_peak_rss_of_a_phase():
    with child.PeakRss(interval_s=0.02) as phase:
        buf = np.ones(200 * 2**20, np.uint8)
        import time

        time.sleep(0.1)
    del buf
    assert phase.peak_mb - phase.before_mb > 150
    assert child.own_peak_rss_mb() >= phase.peak_mb - 1


X86_AMX = "processor\t: 0\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n" \
          "flags\t\t: fpu sse avx avx2 fma f16c avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16 " \
          "avx512_fp16 avx_vnni amx_bf16 amx_tile amx_int8\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp i8mm bf16\n"


def test_isa_table_for_x86_and_arm():
    isa = machine.cpu_isa(X86_AMX, "x86")
    assert set(isa) == set(machine.KERNEL_ISA["x86"])
    assert all(isa[f] for f in ("amx_tile", "amx_int8", "amx_bf16", "avx512_bf16", "avx512_vnni", "avx_vnni",
                                "avx512f", "avx2", "fma"))
    assert not isa["amx_fp16"]
    arm = machine.cpu_isa(ARM, "arm")
    assert arm["asimd"] and arm["asimddp"] and arm["i8mm"] and arm["bf16"] and not arm["sve"]
    assert machine.cpu_isa("", "x86") == {}
    text = machine.isa_text({"isa": machine.cpu_isa(X86_AMX.replace(" amx_bf16 amx_tile amx_int8", ""), "x86")})
    assert text.startswith("avx2 fma") and "; no " in text and "amx_int8" in text.split("; no ")[1]


def test_machine_info_of_this_machine():
    info = machine.machine_info()
    assert info["cpu"] and info["logical_cpus"] >= 1 and info["ram_gb"] > 0 and "numpy" in info["versions"]
    if info["arch"] == "x86" and sys.platform == "linux":
        assert set(info["isa"]) == set(machine.KERNEL_ISA["x86"]) and info["isa"]["avx2"]
        assert info["cpu_flags"] == [f for f, v in info["isa"].items() if v]
    md = machine.machine_markdown(info, [0.1, 0.1, 0.1])
    assert info["cpu"] in md and "ISA:" in md and "Versions:" in md
    busy = {**info, "load_average": [100.0, 1.0, 1.0]}
    assert "loaded machine" in machine.machine_markdown(busy) and machine.is_loaded(busy) == 100.0


def test_a_runs_own_threads_do_not_make_the_machine_loaded():
    """A 2-thread benchmark on an otherwise idle 2-CPU machine keeps the 1-min load near 2: not a loaded machine;
    one more CPU-bound job (load ~3) is."""
    two = {"usable_cpus": 2, "load_average": [2.05, 2.0, 2.1]}
    assert machine.is_loaded(two, [1.94, 1.9, 1.9]) is None and "loaded machine" not in machine.machine_markdown(two)
    assert machine.is_loaded(two, [3.1, 2.5, 2.2]) == 3.1
    assert machine.is_loaded({"usable_cpus": 16, "load_average": [17.0, 1, 1]}) == 17.0


@pytest.mark.parametrize("old_record", [{"cpu": "x", "cpu_flags": ["avx2", "avx512f"], "load_average": [0, 0, 0]}])
def test_markdown_of_records_written_before_the_isa_table(old_record):
    assert "ISA: avx2 avx512f" in machine.machine_markdown(old_record)
