"""What a measurement ran on: CPU and the ISA extensions that pick its kernels, cores, RAM, GPU, OS, load, versions.

``machine_info()`` is the one description every benchmark writes beside its results (``benchmarks/run.py``,
the conversion and training benchmarks); ``machine_markdown()`` renders it for their reports. Absolute times
are never carried from one machine to another, so the ISA table says which kernels a runtime could pick:
oneDNN / ONNX Runtime / OpenVINO / XNNPACK choose int8 and bf16 paths by these flags.
"""

from __future__ import annotations

import os
import platform
import subprocess

from ..versions import package_versions

LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "onnx", "onnxruntime", "litert-torch",
             "ai-edge-litert", "ai-edge-quantizer", "coremltools", "openvino", "nncf", "numpy", "scipy",
             "scikit-learn", "torchmetrics", "psutil", "matplotlib", "pyyaml")

# The extensions that decide which CPU kernels run (in /proc/cpuinfo's spelling), per architecture.
# x86: AVX2/FMA (baseline fp32), AVX-512 F/BW/VL/DQ (oneDNN's avx512_core), VNNI (int8 dot products, 512- and
# 256-bit), AVX-512 BF16/FP16, AMX tiles with int8/bf16/fp16 (Sapphire Rapids and later).
# Arm: NEON, fp16 arithmetic, dot product (int8), i8mm (int8 matrix multiply), bf16, SVE/SVE2, SME.
KERNEL_ISA = {
    "x86": ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx_vnni",
            "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16"),
    "arm": ("asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme"),
}
# macOS reports Arm features through sysctl hw.optional.* instead of /proc/cpuinfo.
_DARWIN_ARM = {"asimd": "hw.optional.neon", "asimdhp": "hw.optional.arm.FEAT_FP16",
               "asimddp": "hw.optional.arm.FEAT_DotProd", "i8mm": "hw.optional.arm.FEAT_I8MM",
               "bf16": "hw.optional.arm.FEAT_BF16", "sme": "hw.optional.arm.FEAT_SME"}


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith(("model name", "Model")):  # x86 / Arm boards (Raspberry Pi, Jetson) name
            return line.split(":", 1)[1].strip()
    if platform.system() == "Darwin":
        return _sysctl("machdep.cpu.brand_string") or platform.processor() or "unknown"
    return platform.processor() or platform.machine() or "unknown"


def arch() -> str:
    """``x86``, ``arm`` or the machine name as Python reports it."""
    m = platform.machine().lower()
    if m in ("x86_64", "amd64", "i386", "i686"):
        return "x86"
    if m in ("arm64", "aarch64") or m.startswith("arm"):
        return "arm"
    return m


def cpu_isa(cpuinfo: str | None = None, architecture: str | None = None) -> dict[str, bool]:
    """``{extension: present}`` for every kernel-deciding extension of the architecture (``KERNEL_ISA``).

    Args:
        cpuinfo: text of /proc/cpuinfo (default: read it; on macOS sysctl is asked instead).
        architecture: ``x86`` or ``arm`` (default: this machine's).
    Empty when the architecture has no table or nothing could be read.
    """
    architecture = architecture or arch()
    names = KERNEL_ISA.get(architecture, ())
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    present: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86 / Arm spelling of the same line
            present |= set(line.split(":", 1)[1].split())
    if not present and cpuinfo is None and platform.system() == "Darwin":
        if architecture == "arm":
            present = {flag for flag, key in _DARWIN_ARM.items() if _sysctl(key) == "1"}
        else:
            words = (_sysctl("machdep.cpu.features") + " " + _sysctl("machdep.cpu.leaf7_features")).lower().split()
            squashed = {w.replace("_", "").replace(".", "") for w in words}
            present = {flag for flag in names if flag.replace("_", "") in squashed}
    if not present:
        return {}
    return {flag: flag in present for flag in names}


def cpu_flags() -> list[str]:
    """The kernel-deciding extensions this CPU has (see ``cpu_isa``)."""
    return [flag for flag, has in cpu_isa().items() if has]


def gpu_info() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def usable_cpus() -> int | None:
    """CPUs this process may run on (its affinity mask; all of them where the OS has no such mask, e.g. macOS)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def machine_info() -> dict:
    """A snapshot of the machine; call at the start and the end of a run (the load average changes)."""
    import psutil

    vm = psutil.virtual_memory()
    isa = cpu_isa()
    return {
        "cpu": cpu_model(),
        "arch": arch(),
        "cpu_flags": [flag for flag, has in isa.items() if has],
        "isa": isa,
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cpus": psutil.cpu_count(logical=True),
        "usable_cpus": usable_cpus(),
        "ram_gb": round(vm.total / 2**30, 1),
        "ram_available_gb": round(vm.available / 2**30, 1),
        "gpu": gpu_info(),
        "os": platform.platform(),
        "load_average": load_average(),
        "versions": package_versions(LIBRARIES),
    }


def isa_text(m: dict) -> str:
    """``avx2 fma ...; no amx_tile amx_int8 ...`` from a ``machine_info`` dict (older records: flags only)."""
    isa = m.get("isa")
    if not isa:
        return " ".join(m.get("cpu_flags") or []) or "n/a"
    has = " ".join(f for f, v in isa.items() if v) or "none of the table"
    missing = " ".join(f for f, v in isa.items() if not v)
    return has + (f"; no {missing}" if missing else "")


# A benchmark's own threads load the machine by themselves (a 2-thread run keeps a 2-CPU machine's 1-min load near
# 2.0, and the start value still holds the previous timed run's tail): the machine counts as loaded when the load
# exceeds the usable CPUs by half a CPU, i.e. some other job took a share of the cores.
LOADED_MARGIN_CPUS = 0.5


def is_loaded(m: dict, load_end: list[float] | None = None) -> float | None:
    """The highest 1-min load average seen (start, end) when it exceeds the usable CPUs by ``LOADED_MARGIN_CPUS``
    (another job shared the cores), else None."""
    cpus = m.get("usable_cpus") or m.get("logical_cpus") or 1
    seen = [x for x in ((m.get("load_average") or [0])[:1] + (load_end or [0])[:1]) if x is not None]
    peak = max(seen or [0])
    return peak if peak > cpus + LOADED_MARGIN_CPUS else None


def machine_markdown(m: dict, load_end: list[float] | None = None) -> str:
    """A Markdown bullet list describing ``m`` (a ``machine_info`` dict) for a report."""
    v = m.get("versions", {})
    cpus = m.get("usable_cpus") or m.get("logical_cpus") or 1
    load = f"{m.get('load_average')} at start" + (f", {load_end} at end" if load_end is not None else "")
    text = (f"- CPU: {m.get('cpu')} ({m.get('physical_cores')} physical cores, {m.get('logical_cpus')} logical, "
            f"{cpus} usable by this process); ISA: {isa_text(m)}\n"
            f"- RAM: {m.get('ram_gb')} GB ({m.get('ram_available_gb')} GB available at start); "
            f"GPU: {', '.join(m.get('gpu') or []) or 'none'}\n"
            f"- OS: {m.get('os')}\n- Load average: {load} (1/5/15 min)\n"
            f"- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    peak = is_loaded(m, load_end)
    if peak is not None:
        text += (f"\n\n**Timings were taken on a loaded machine** (1-min load average up to {peak:.1f} on "
                 f"{cpus} usable CPUs): other jobs shared the cores, so absolute times are pessimistic and "
                 "noisier than on an idle machine; ratios measured back to back are more reliable.")
    return text
