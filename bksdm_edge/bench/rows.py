"""The result row of a benchmark: one table of columns (name, type, default), used by everything that makes rows.

``runner`` makes a row per scenario (``scenario_row``), ``importing`` makes rows from files measured elsewhere
(``coerce``), ``report`` writes the CSV columns in this order. Columns are only ever added, never renamed:
committed ``results.json`` / ``results.csv`` files keep loading (``tests/test_bench_rows.py`` reads them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    """One field of a result row.

    ``type`` is what the value is when set (``str``, ``int``, ``float``, ``list``, ``dict``; None is always
    allowed: not measured / not applicable); ``csv`` says whether ``results.csv`` carries it (lists and
    dicts stay in results.json); ``doc`` is the meaning, for benchmarks/README.md.
    """

    name: str
    type: type
    default: Any = None
    csv: bool = True
    doc: str = ""


COLUMNS: tuple[Column, ...] = (
    # What was measured (copied from the scenario).
    Column("model", str, doc="teacher, a BK-SDM variant, a student folder or a bundle folder"),
    Column("component", str, doc="text_encoder, unet (one step), vae_decoder, vae_encoder or generate"),
    Column("backend", str, doc="pytorch, onnxruntime, litert, coreml, openvino, or a peer engine (sdcpp)"),
    Column("precision", str),
    Column("variant", str, "", doc="the scenario's named options (e.g. conv-only)"),
    Column("vae", str, "teacher", doc="the VAE of vae_decoder/vae_encoder/generate rows: teacher or a --vae source "
                                       "(tiny: the TAESD architecture)"),
    Column("batch", int),
    Column("resolution", int, doc="image side in px"),
    Column("threads", int),
    Column("device", str),
    Column("steps", int, doc="denoising steps of one generate run (empty for single calls)"),
    # Timings (seconds) over the timed repeats, warm-up runs excluded.
    Column("median_s", float),
    Column("p90_s", float),
    Column("min_s", float),
    Column("mean_s", float),
    Column("cold_s", float, doc="load_s + first_run_s"),
    Column("first_run_s", float),
    Column("load_s", float),
    Column("repeats", int),
    Column("warmup", int),
    # Memory (MB) and sizes.
    Column("peak_rss_mb", float, doc="peak resident memory of the measuring process"),
    Column("baseline_rss_mb", float, doc="RSS after importing the runtime, before loading the model"),
    Column("peak_gpu_mb", float),
    Column("size_mb", float, doc="artifact size on disk"),
    Column("export_s", float),
    Column("export_peak_rss_mb", float),
    Column("macs_g", float, doc="paper-convention MACs of one call, in G"),
    Column("plan", str, doc="a student's removal plan (docs/plans.md): name and pairs kept per stage; for a U-Net "
           "folder, the plan its config corresponds to"),
    # Where a generate run's time goes (median over the timed runs / median_s; the rest is "other").
    Column("text_encoder_share", float, doc="generate: share of the time in the text encoder"),
    Column("unet_share", float, doc="generate: share of the time in U-Net calls"),
    Column("vae_decoder_share", float, doc="generate: share of the time in the VAE decoder"),
    # Ratios to the teacher measured in the same run (runner.add_ratios).
    Column("speedup_vs_teacher", float),
    Column("mem_ratio_vs_teacher", float),
    Column("size_ratio_vs_teacher", float),
    Column("macs_ratio_vs_teacher", float),
    Column("speedup_vs_teacher_pytorch_fp32", float),
    Column("load_average_1m", float, doc="1-min load average when the row finished"),
    Column("source", str, doc="the teacher pipeline the models come from"),
    Column("error", str, doc="why there is no timing (empty when measured)"),
    Column("peer", bool, False, doc="true for another engine than this toolkit's exports (stable-diffusion.cpp)"),
    # results.json only.
    Column("times_s", list, [], csv=False),
    Column("warmup_s", list, [], csv=False),
    Column("artifact", dict, csv=False, doc="what the exporter reported"),
    Column("component_s", dict, csv=False,
           doc="generate: median seconds per run in text_encoder, unet, vae_decoder and other (the rest)"),
    Column("backend_info", dict, csv=False,
           doc="what the runtime reported (threads; OpenVINO: inference precision and kernel types)"),
    Column("run_wall_s", list, csv=False,
           doc="wall time of each whole run when the engine reports the measured call's time itself (peers)"),
    Column("imported_from", str, csv=False, doc="the file an imported row came from"),
    Column("timing_note", str, csv=False, doc="how an on-device tool's numbers map to the columns"),
    Column("tool_output_tail", str, csv=False),
)
BY_NAME = {c.name: c for c in COLUMNS}
CSV_COLUMNS = tuple(c.name for c in COLUMNS if c.csv)
# The columns a scenario fills (``scenario_row``).
SCENARIO_COLUMNS = ("model", "component", "backend", "precision", "variant", "vae", "batch", "resolution",
                    "threads", "device", "steps", "repeats", "warmup", "source")
# The measurement the bench worker returns, copied into the row as it is.
MEASURED_COLUMNS = ("median_s", "p90_s", "min_s", "mean_s", "cold_s", "first_run_s", "load_s", "peak_gpu_mb",
                    "baseline_rss_mb", "times_s", "warmup_s", "component_s", "text_encoder_share", "unet_share",
                    "vae_decoder_share")


def empty_row(**values: Any) -> dict[str, Any]:
    """A row with every column at its default, then ``values`` (which may hold columns the table lacks)."""
    row = {c.name: copy.copy(c.default) for c in COLUMNS if c.csv or c.default is not None}
    row.update(values)
    return row


def scenario_row(s) -> dict[str, Any]:
    """The empty row of a bench ``Scenario`` (its fields copied; ``steps`` only for ``generate``)."""
    values = {name: getattr(s, name) for name in SCENARIO_COLUMNS if name not in ("variant", "steps")}
    return empty_row(**values, variant=s.variant or "", steps=s.run_steps)


class ColumnTypeError(ValueError):
    """A value that cannot be read as its column's type."""


def coerce(name: str, value: Any) -> Any:
    """``value`` as column ``name``'s type ('' and None -> None); unknown columns pass through unchanged."""
    if value is None or value == "":
        return None
    column = BY_NAME.get(name)
    if column is None or column.type in (list, dict) or isinstance(value, column.type):
        return value
    try:
        if column.type is bool:
            return str(value).strip().lower() in ("true", "1", "yes")  # CSV writes True/False
        if column.type is int:
            return int(float(value))  # "3" and "3.0" (CSV written from floats)
        return column.type(value)
    except (TypeError, ValueError):
        raise ColumnTypeError(f"column {name!r} needs a {column.type.__name__}, got {value!r}") from None
