"""The result-row schema (bench/rows.py): every maker of rows uses it, and committed results still load."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bksdm_edge.bench import rows
from bksdm_edge.bench.importing import ImportFormatError, load_rows
from bksdm_edge.bench.report import write_report
from bksdm_edge.bench.scenario import Scenario

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
# Runs of the bench harness (results.json with "rows" of the schema); other folders hold other experiments.
# Runs of the bench harness (a row per scenario: component, median_s ...); other studies' CSVs (unet_batch,
# export_time) have their own columns.
BENCH_RUNS = sorted(p.parent for p in RESULTS.glob("*/results.csv")
                    if {"median_s", "component"} <= set(p.read_text().splitlines()[0].split(",")))


def test_scenario_row_has_every_column_and_the_scenario():
    s = Scenario(model="bk-tiny", component="generate", backend="onnxruntime", steps=10, batch=2, variant="v",
                 options={"export": {"x": 1}})
    row = rows.scenario_row(s)
    assert set(rows.CSV_COLUMNS) <= set(row) and row["times_s"] == [] and row["warmup_s"] == []
    assert (row["model"], row["batch"], row["steps"], row["variant"], row["error"]) == ("bk-tiny", 2, 10, "v", None)
    assert rows.scenario_row(Scenario(model="teacher", component="unet", backend="pytorch"))["steps"] is None
    # Defaults are copied, never shared between rows.
    row["times_s"].append(1.0)
    assert rows.scenario_row(s)["times_s"] == []


def test_column_types():
    assert rows.coerce("median_s", "0.5") == 0.5 and rows.coerce("batch", "2.0") == 2
    assert rows.coerce("median_s", "") is None and rows.coerce("model", "teacher") == "teacher"
    assert rows.coerce("a_column_of_someone_else", "x") == "x"
    with pytest.raises(rows.ColumnTypeError, match="median_s"):
        rows.coerce("median_s", "fast")
    assert rows.coerce("peer", "False") is False and rows.coerce("peer", "True") is True  # CSV spelling
    assert {c.type for c in rows.COLUMNS} <= {str, int, float, bool, list, dict}
    assert len({c.name for c in rows.COLUMNS}) == len(rows.COLUMNS)


def test_import_types_every_column_and_reports_bad_values(tmp_path):
    f = tmp_path / "phone.csv"
    f.write_text("model,component,backend,precision,device,median_s,steps,peak_rss_mb\n"
                 "bk-tiny,generate,litert,int8,pixel-8,2.5,4,900\n")
    (row,) = load_rows(f)
    assert row["steps"] == 4 and row["peak_rss_mb"] == 900.0 and row["resolution"] == 512 and row["threads"] is None
    assert row["source"] == "imported" and row["imported_from"] == str(f) and set(rows.CSV_COLUMNS) <= set(row)
    f.write_text("model,component,backend,precision,device,median_s\nbk-tiny,unet,litert,int8,pixel-8,fast\n")
    with pytest.raises(ImportFormatError, match="phone.csv:1: column 'median_s' needs a float"):
        load_rows(f)


@pytest.mark.parametrize("run", BENCH_RUNS, ids=lambda p: p.name)
def test_committed_results_still_load(run, tmp_path):
    """Columns are only added: a committed run's CSV header is a subsequence of today's columns, its rows
    import with today's types, and its results.json renders with today's report code."""
    with open(run / "results.csv", newline="") as f:
        header = next(csv.reader(f))
    assert [c for c in rows.CSV_COLUMNS if c in header] == header, f"{run.name}: a column was renamed or moved"
    imported = load_rows(run / "results.csv")
    assert imported and all(isinstance(r["median_s"], float) or r["error"] for r in imported)
    doc = json.loads((run / "results.json").read_text())
    written = write_report(doc, tmp_path, plots=False)
    assert (tmp_path / "report.md").read_text().count("\n| ") >= len(doc["rows"])
    assert tmp_path / "results.csv" in written


def test_there_are_committed_runs_to_check():
    assert {"cpu-full", "target"} <= {p.name for p in BENCH_RUNS}


def test_folder_models_get_a_new_artifact_when_their_files_change(tmp_path):
    """A student re-trained in place must not be measured from the export cached for its old weights."""
    from bksdm_edge.bench.backends import artifact_dir, get_backend

    student = tmp_path / "run" / "unet"
    student.mkdir(parents=True)
    (student / "config.json").write_text("{}")
    s = Scenario(model=str(student), component="unet", backend="onnxruntime")
    before = artifact_dir(tmp_path / "cache", s, get_backend("onnxruntime"))
    assert before == artifact_dir(tmp_path / "cache", s, get_backend("onnxruntime"))
    (student / "diffusion_pytorch_model.safetensors").write_bytes(b"new weights")
    assert artifact_dir(tmp_path / "cache", s, get_backend("onnxruntime")) != before
    assert before.relative_to(tmp_path / "cache").parts[1].startswith("folder_unet_")
