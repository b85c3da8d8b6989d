"""Android devices (``--device android:SERIAL``): push the exported model with adb and run the
vendor benchmark tool there, then parse its console output into a row.

- LiteRT (``litert`` back-end): TensorFlow Lite's ``benchmark_model`` binary;
- ONNX Runtime (``onnxruntime`` back-end): ``onnxruntime_perf_test``.

The binaries are built for the phone's ABI by the user; their paths on this machine come
from the config's ``android`` section or ``--benchmark-model`` / ``--perf-test``. Both tools
feed random inputs of the model's static shapes, so no input files are pushed.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

REMOTE_DIR = "/data/local/tmp/bksdm-bench"

_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"


class ToolOutputError(ValueError):
    """The tool's output does not contain the numbers a row needs."""


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Parse TFLite ``benchmark_model`` output (times in microseconds, memory in MB).

    Uses ``Inference timings in us: Init: .., First inference: .., Warmup (avg): .., Inference (avg): ..``,
    the ``count=.. first=.. curr=.. min=.. max=.. avg=.. std=..`` line of the timed phase, and
    ``Peak memory footprint (MB): init=.. overall=..`` when present.
    """
    m = re.search(rf"Inference timings in us: Init: {_NUM}, First inference: {_NUM}, "
                  rf"Warmup \(avg\): {_NUM}, Inference \(avg\): {_NUM}", text)
    if not m:
        raise ToolOutputError("no 'Inference timings in us:' line in benchmark_model output")
    init, first, warm, avg = (float(x) / 1e6 for x in m.groups())
    out: dict[str, Any] = {"load_s": init, "first_run_s": first, "cold_s": init + first, "warmup_avg_s": warm,
                           "mean_s": avg, "median_s": avg}
    counts = re.findall(rf"count={_NUM} first={_NUM} curr={_NUM} min={_NUM} max={_NUM} avg={_NUM} std={_NUM}", text)
    if counts:
        count, _, _, mn, mx, _, std = (float(x) for x in counts[-1])
        out.update(repeats=int(count), min_s=mn / 1e6, max_s=mx / 1e6, std_s=std / 1e6)
    pm = re.search(rf"Peak memory footprint \(MB\): init={_NUM} overall={_NUM}", text)
    if pm:
        out["peak_rss_mb"] = float(pm.group(2))
    # The tool reports the mean, not the median: say so in the row.
    out["timing_note"] = "benchmark_model: median_s is the tool's mean (it prints no median)"
    return out


def parse_perf_test(text: str) -> dict[str, Any]:
    """Parse ``onnxruntime_perf_test`` output (old and new formats).

    Old: ``Session creation time cost: .. s``, ``Average inference time cost: .. ms``,
    ``Total inference requests: ..``, ``Peak working set size: .. bytes``.
    New: ``Average time cost: .. ms``, ``Total iterations: ..``, ``Min/P50/P90 Latency is .. sec``.
    """
    out: dict[str, Any] = {}
    m = re.search(rf"Session creation time cost:\s*{_NUM}\s*s", text)
    if m:
        out["load_s"] = float(m.group(1))
    m = re.search(rf"Average (?:inference )?time cost:\s*{_NUM}\s*ms", text)
    if not m:
        raise ToolOutputError("no 'Average inference time cost' line in onnxruntime_perf_test output")
    out["mean_s"] = float(m.group(1)) / 1e3
    m = re.search(rf"Total (?:inference requests|iterations):\s*{_NUM}", text)
    if m:
        out["repeats"] = int(float(m.group(1)))
    for label, key in (("Min", "min_s"), ("P50", "median_s"), ("P90", "p90_s"), ("Max", "max_s")):
        m = re.search(rf"{label} Latency is {_NUM} sec", text)
        if m:
            out[key] = float(m.group(1))
    if "median_s" not in out:
        out["median_s"] = out["mean_s"]
        out["timing_note"] = "onnxruntime_perf_test: median_s is the tool's mean (no percentiles printed)"
    m = re.search(rf"Peak working set size:\s*{_NUM}\s*bytes", text)
    if m:
        out["peak_rss_mb"] = float(m.group(1)) / 2**20
    m = re.search(rf"Avg CPU usage:\s*{_NUM}\s*%", text)
    if m:
        out["cpu_usage_pct"] = float(m.group(1))
    return out


# Back-end -> (tool key in the android settings, command builder, parser). Data, not branches.
def _benchmark_model_cmd(remote_tool: str, remote_model: str, s) -> str:
    return (f"{remote_tool} --graph={remote_model} --num_threads={s.threads} --warmup_runs={max(1, s.warmup)} "
            f"--num_runs={s.repeats} --min_secs=0 --warmup_min_secs=0 --report_peak_memory_footprint=true")


def _perf_test_cmd(remote_tool: str, remote_model: str, s) -> str:
    return f"{remote_tool} -e cpu -m times -r {s.repeats} -x {s.threads} {remote_model}"


ANDROID_TOOLS = {
    "litert": ("benchmark_model", _benchmark_model_cmd, parse_benchmark_model),
    "onnxruntime": ("onnxruntime_perf_test", _perf_test_cmd, parse_perf_test),
}


def _adb(settings: dict, serial: str, *args: str, timeout: float = 1800) -> str:
    cmd = [settings.get("adb", "adb"), "-s", serial, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(shlex.quote, cmd))} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout


def measure_on_android(s, artifact: Path, settings: dict) -> dict[str, Any]:
    """Push the artifact and the tool, run it on the phone, parse the output into row fields."""
    import json

    if s.backend not in ANDROID_TOOLS:
        raise RuntimeError(f"no android benchmark tool for backend {s.backend!r}; "
                           f"android devices run: {', '.join(ANDROID_TOOLS)}")
    key, build, parse = ANDROID_TOOLS[s.backend]
    tool = settings.get(key)
    if not tool:
        raise RuntimeError(f"the path of {key} (built for the phone) is not set: pass --"
                           f"{'benchmark-model' if key == 'benchmark_model' else 'perf-test'} or android.{key}")
    serial = s.device.split(":", 1)[1]
    meta = json.loads((artifact / "artifact.json").read_text())
    remote = f"{REMOTE_DIR}/{artifact.parent.parent.name}-{artifact.parent.name}-{artifact.name}"
    _adb(settings, serial, "shell", f"mkdir -p {remote}")
    for f in meta["files"]:
        _adb(settings, serial, "push", str(artifact / f), f"{remote}/{f}")
    remote_tool = f"{REMOTE_DIR}/{Path(tool).name}"
    _adb(settings, serial, "push", str(tool), remote_tool)
    _adb(settings, serial, "shell", f"chmod +x {remote_tool}")
    text = _adb(settings, serial, "shell", build(remote_tool, f"{remote}/{meta['main']}", s),
                timeout=s.timeout_s)
    row = parse(text)
    row["tool_output_tail"] = text[-2000:]
    return row
