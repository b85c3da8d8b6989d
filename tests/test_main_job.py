"""The main job (`make run`) as data: its commands parse, its benchmark config expands, its summary reads back."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from bksdm_edge import main_job
from bksdm_edge.bench.scenario import expand
from bksdm_edge.cli import build_parser


def test_every_cli_step_parses_and_every_step_says_what_it_leaves(tmp_path):
    job = main_job.steps(tmp_path, main_job.DEFAULT_TEACHER, "bk-small", 10, 1)
    titles = [s.title for s in job]
    assert titles[0].startswith("Profile") and titles[-1].startswith("Benchmark") and len(titles) == 9
    for step in job:
        if step.shown.startswith("$ bksdm-edge ") and "bench --config" not in step.shown:
            args = shlex.split(step.shown)[2:]  # the shown command is copy-pasteable
            assert build_parser(args).parse_args(args).func  # the flags the job passes exist
    outputs = [p for s in job for p, _ in s.outputs]
    assert tmp_path / "bench" / "report.md" in outputs and tmp_path / "digit_scores.json" in outputs


def test_benchmark_is_teacher_vs_the_distilled_student(tmp_path):
    student = tmp_path / "distill" / "unet"
    config = main_job.bench_config("builtin:mini-sd-digits", student, 32)
    scenarios = expand(config).scenarios
    assert [s.model for s in scenarios] == ["teacher", str(student)]
    assert {(s.component, s.backend, s.precision, s.resolution, s.batch) for s in scenarios} == \
        {("unet", "onnxruntime", "fp32", 32, 2)}


def test_summary_reports_scores_speedup_and_where_to_look(tmp_path):
    (tmp_path / "digit_scores.json").write_text(json.dumps({
        "teacher (PyTorch)": {"prompt_accuracy": 0.96, "frechet_distance": 70.0},
        "student bundle (onnx fp32)": {"prompt_accuracy": 0.9, "frechet_distance": 80.0}}))
    (tmp_path / "bench").mkdir()
    row = {"backend": "onnxruntime", "precision": "fp32", "resolution": 32, "batch": 2, "error": None}
    (tmp_path / "bench" / "results.json").write_text(json.dumps({"rows": [
        {**row, "model": "teacher", "median_s": 0.004, "speedup_vs_teacher": 1.0},
        {**row, "model": "out/distill/unet", "median_s": 0.0025, "speedup_vs_teacher": 1.6,
         "macs_ratio_vs_teacher": 0.64, "size_ratio_vs_teacher": None}]}))
    job = main_job.steps(tmp_path, main_job.DEFAULT_TEACHER, "bk-small", 10, 1)
    text = main_job.summary(job, tmp_path)
    assert "| student bundle (onnx fp32) | 0.900 | 80.0 |" in text
    assert "2.5 ms vs teacher 4.0 ms" in text and "1.60x faster; 0.64 of the teacher's MACs." in text
    assert f"{Path(tmp_path / 'bench' / 'report.md')}" in text and "Where to look:" in text
