"""Report files of a benchmark run: results.json, results.csv, report.md and PNG plots."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..outputs import write_text_atomic
from .machine import machine_markdown
from .rows import CSV_COLUMNS

def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        if v != 0 and abs(v) < 0.1:
            return f"{v:.{digits}g}"  # sub-millisecond times keep their significant digits
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k), 6) if isinstance(r.get(k), float) else r.get(k) for k in CSV_COLUMNS})
    write_text_atomic(path, buf.getvalue())


def markdown_table(rows: list[dict]) -> str:
    cols = [("model", "model"), ("component", "component"), ("backend", "backend"), ("precision", "prec"),
            ("variant", "variant"), ("vae", "VAE"),
            ("resolution", "px"), ("batch", "batch"), ("threads", "thr"), ("device", "device"), ("steps", "steps"),
            ("median_s", "median s"), ("p90_s", "p90 s"), ("min_s", "min s"), ("cold_s", "cold s"),
            ("load_s", "load s"), ("peak_rss_mb", "peak RSS MB"), ("size_mb", "size MB"),
            ("speedup_vs_teacher", "speed-up"), ("speedup_vs_teacher_pytorch_fp32", "vs SD eager"),
            ("mem_ratio_vs_teacher", "mem ratio"), ("size_ratio_vs_teacher", "size ratio"),
            ("macs_ratio_vs_teacher", "MACs ratio"), ("error", "error")]
    if any(r.get("unet_share") is not None for r in rows):  # generate rows: where the time goes
        cols.insert(cols.index(("peak_rss_mb", "peak RSS MB")), ("split", "text enc / U-Net / VAE dec"))
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for k, _ in cols:
            v = r.get(k)
            if k == "error" and v:
                v = str(v).replace("|", "/").replace("\n", " ")[:160]
            elif k == "split":
                shares = [r.get(f"{c}_share") for c in ("text_encoder", "unet", "vae_decoder")]
                v = " / ".join(f"{x:.0%}" for x in shares) if all(x is not None for x in shares) else None
            elif k == "backend" and r.get("peer"):
                v = f"{v} (peer)"  # another engine than ours, measured by the same harness
            elif k in ("peak_rss_mb", "size_mb") and isinstance(v, float):
                v = f"{v:.0f}"
            elif k.endswith("_vs_teacher") or k.endswith("pytorch_fp32"):
                v = f"{v:.2f}x" if isinstance(v, float) else v
            cells.append(_fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot_group(r: dict) -> str:
    """A bar group's label: back-end, precision, variant, (when not the CPU) device, and whether it is a peer."""
    return (f"{r['backend']}-{r['precision']}" + (f"+{r['variant']}" if r.get("variant") else "")
            + (f" @{r['device']}" if r["device"] != "cpu" else "") + (" (peer)" if r.get("peer") else ""))


def plot(rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per (component, metric): bars per model, grouped by backend-precision; teacher as reference.

    Up to 8 groups the bars stand side by side; more (a full CPU run has 15+) are drawn as horizontal bars, one group
    per line, so that every label and value stays readable.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ok = [r for r in rows if not r.get("error") and r.get("median_s")]
    for component in sorted({r["component"] for r in ok}):
        sub = [r for r in ok if r["component"] == component]
        groups = sorted({_plot_group(r) for r in sub})
        models = ["teacher"] + sorted({r["model"] for r in sub} - {"teacher"})
        horizontal = len(groups) > 8
        for metric, label, fname in (("median_s", "median latency (s)", "latency"),
                                     ("peak_rss_mb", "peak resident memory (MB)", "memory")):
            if horizontal:
                fig, ax = plt.subplots(figsize=(9, max(4.5, 0.16 * len(groups) * max(1, len(models)) + 1.2)))
            else:
                fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups) * max(1, len(models)) / 2), 4.5))
            width = 0.8 / max(1, len(models))
            for j, model in enumerate(models):
                xs, ys = [], []
                for i, g in enumerate(groups):
                    match = [r for r in sub if r["model"] == model and _plot_group(r) == g]
                    if match and match[0].get(metric):
                        xs.append(i + (j - (len(models) - 1) / 2) * width)
                        ys.append(match[0][metric])
                style = {"label": model, "hatch": "//" if model == "teacher" else None,
                         "edgecolor": "black" if model == "teacher" else None}
                (ax.barh if horizontal else ax.bar)(xs, ys, width, **style)
                for x, y in zip(xs, ys):
                    text = f"{y:.2f}" if metric == "median_s" else f"{y:.0f}"
                    if horizontal:
                        ax.text(y, x, " " + text, ha="left", va="center", fontsize=7)
                    else:
                        ax.text(x, y, text, ha="center", va="bottom", fontsize=7)
            if horizontal:
                ax.set_yticks(range(len(groups)))
                ax.set_yticklabels(groups, fontsize=8)
                ax.invert_yaxis()
                ax.set_xlabel(label)
                ax.margins(x=0.12)
            else:
                ax.set_xticks(range(len(groups)))
                ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
                ax.set_ylabel(label)
            r0 = sub[0]
            steps = f", {r0['steps']} steps" if component == "generate" else ""
            ax.set_title(f"{component}{steps}, {r0['resolution']} px, batch {r0['batch']} "
                         "(teacher hatched = reference)", fontsize=10)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = out_dir / f"{fname}_{component}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def write_report(doc: dict, out_dir: Path, plots: bool = True) -> list[Path]:
    """Write every report file of a run into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    rows = doc["rows"]
    # Atomic writes: a resumed run re-reads results.json, so a kill must never leave it cut.
    write_text_atomic(out_dir / "results.json", json.dumps(doc, indent=2, default=str) + "\n")
    write_csv(rows, out_dir / "results.csv")
    plots = plot(rows, out_dir) if plots else []
    failed = [r for r in rows if r.get("error")]
    md = [f"# Benchmark `{doc['name']}`", "",
          f"Run {doc['started']} -> {doc['finished'] or '(in progress / stopped: partial results)'}; "
          f"command: `{doc.get('command', '')}`", "",
          "## Machine", "", machine_markdown(doc["machine"], doc.get("load_average_end")), "",
          "## Results", "",
          "Latency per call (one U-Net step for `unet`); median/p90/min over the timed repeats, warm-up runs "
          "excluded; `cold` = load + first run. Ratios compare each row with the teacher on the same backend, "
          "precision, shape, threads and device in this run (speed-up = teacher median / row median; memory and "
          "size ratios = row / teacher). `vs SD eager` compares with the teacher in PyTorch fp32. `MACs ratio` is "
          "the paper-convention ratio from the profiler.", "",
          markdown_table(rows), ""]
    if failed:
        md += [f"{len(failed)} scenario(s) did not produce a timing; their `error` says why.", ""]
    if plots:
        md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    write_text_atomic(out_dir / "report.md", "\n".join(md))
    return [out_dir / "results.json", out_dir / "results.csv", out_dir / "report.md", *plots]
