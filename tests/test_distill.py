"""Distillation on the toy teachers: smoke, loss behaviour, feature hooks, data checks, latent cache."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses

import numpy as np
import pytest
import torch

from bksdm_edge.distill import (
    CheckpointConfig,
    DataConfig,
    DataError,
    DistillConfig,
    FeatureCapture,
    LossConfig,
    OptimConfig,
    distill,
    distill_losses,
    load_rows,
    read_log,
    training_target,
)
from bksdm_edge.distill.cache import CacheError, cache_latents
from bksdm_edge.distill.checkpoint import list_checkpoints, resolve_resume
from bksdm_edge.distill.data import EpochBatches, ImageCaptionDataset
from bksdm_edge.distill.synthetic import make_synthetic_folder
from bksdm_edge.loading import load_model
from bksdm_edge.student import build_student
from bksdm_edge.variants import VARIANTS, get_variant


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_synthetic_folder(tmp_path_factory.mktemp("shapes"), rows=16, size=64, seed=0)


def tiny_config(data, out, **kw) -> DistillConfig:
    data_kw = kw.pop("data_kw", {})
    return DistillConfig(
        teacher=kw.pop("teacher", "builtin:tiny-sd"),
        variant=kw.pop("variant", "bk-small"),
        out=str(out),
        max_steps=kw.pop("max_steps", 2),
        batch_size=kw.pop("batch_size", 2),
        progress=False,
        report_to=kw.pop("report_to", "none"),
        data=DataConfig(source=str(data), resolution=64, num_workers=0, **data_kw),
        checkpoint=kw.pop("checkpoint", CheckpointConfig(every=0)),
        **kw,
    )


def test_smoke_cli_outputs_load_in_diffusers(shapes, tmp_path):
    from diffusers import UNet2DConditionModel

    from bksdm_edge.cli import main

    out = tmp_path / "run"
    rc = main([
        "distill", "--teacher", "builtin:tiny-sd", "--variant", "bk-small", "--data", str(shapes), "--out", str(out),
        "--max-steps", "2", "--batch-size", "2", "--resolution", "64", "--num-workers", "0", "--ema",
        "--checkpoint-every", "1", "--keep-checkpoints", "1", "--validation-prompts", "a red circle",
        "--validate-every", "2", "--validation-inference-steps", "2", "--no-progress",
    ])
    assert rc == 0
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2]
    for record in log:
        for name in ("loss_task", "loss_out", "loss_feat"):
            assert math.isfinite(record[name]) and record[name] > 0
        assert record["loss"] == pytest.approx(record["loss_task"] + record["loss_out"] + record["loss_feat"], rel=1e-5)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]  # keep-last-1
    assert (out / "validation" / "step-000002" / "00.png").exists()
    assert list((out / "logs").rglob("events.out.tfevents*")), "TensorBoard is installed, so it logs"
    config = json.loads((out / "run_config.json").read_text())
    assert config["status"] == "finished" and config["versions"]["torch"] == torch.__version__
    assert config["config"]["optim"]["lr"] == 5e-5 and config["prediction_type"] == "epsilon"

    for sub in ("unet", "unet_ema"):
        unet = UNet2DConditionModel.from_pretrained(out / sub)
        assert unet.config.mid_block_type is None  # bk-small
        assert json.loads((out / sub / "bksdm_edge.json").read_text())["distill"]["steps"] == 2
    pipe = load_model("builtin:tiny-sd", unet=out / "unet").to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_v_prediction_teacher_trains_on_velocity(shapes, tmp_path):
    from diffusers import DDPMScheduler

    result = distill(tiny_config(shapes, tmp_path / "v2", teacher="builtin:tiny-sd-v2", max_steps=1))
    config = json.loads((result.run_dir / "run_config.json").read_text())
    assert config["prediction_type"] == "v_prediction"
    assert all(math.isfinite(v) for v in result.last_losses.values())

    # The target against the closed form v = sqrt(a)·eps - sqrt(1-a)·x0 (Salimans & Ho, 2022).
    teacher = load_model("builtin:tiny-sd-v2", components=("scheduler",))
    scheduler = DDPMScheduler.from_config(teacher.scheduler.config)
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 499, 999])
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(training_target(scheduler, x0, eps, t), a.sqrt() * eps - (1 - a).sqrt() * x0)
    eps_scheduler = DDPMScheduler.from_config({**scheduler.config, "prediction_type": "epsilon"})
    assert training_target(eps_scheduler, x0, eps, t) is eps


def test_output_kd_loss_falls(shapes, tmp_path):
    result = distill(tiny_config(shapes, tmp_path / "falls", max_steps=15, batch_size=4, optim=OptimConfig(lr=1e-3)))
    out_kd = [r["loss_out"] for r in read_log(result.run_dir)]
    first, last = np.mean(out_kd[:3]), np.mean(out_kd[-3:])
    assert last < 0.5 * first, out_kd
    feat = [r["loss_feat"] for r in read_log(result.run_dir)]
    assert np.mean(feat[-3:]) < 0.7 * np.mean(feat[:3]), feat


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("checkpointing", [False, True])
def test_feature_loss_reaches_every_pair_and_hooks_are_removed(variant, checkpointing):
    teacher = load_model("builtin:tiny-sd", components=("unet",)).unet
    student, _ = build_student(teacher, variant)
    student.train()
    if checkpointing:
        student.enable_gradient_checkpointing()
    pairs = get_variant(variant).feature_pairs
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    t = torch.tensor([10, 900])
    with FeatureCapture(teacher, [a for a, _ in pairs]) as tcap, FeatureCapture(student, [b for _, b in pairs]) as scap:
        with torch.no_grad():
            teacher_pred = teacher(x, t, text).sample
        teacher_feats = tcap.take()
        student_pred = student(x, t, text).sample
        student_feats = scap.take()
        for f in student_feats:
            f.retain_grad()
        losses = distill_losses(student_pred, teacher_pred, torch.zeros_like(x), student_feats, teacher_feats,
                                LossConfig(lambda_task=0.0, lambda_out=0.0, lambda_feat=1.0), pairs)
        losses["loss"].backward()
    assert len(student_feats) == len(pairs)
    for (_, name), feat in zip(pairs, student_feats):
        assert feat.grad is not None and feat.grad.abs().sum() > 0, name
        module = student.get_submodule(name)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name
    for model in (teacher, student):
        assert not any(m._forward_hooks for m in model.modules())


def test_hooks_removed_on_error_and_bad_names_explained():
    unet = load_model("builtin:tiny-sd", components=("unet",)).unet
    with pytest.raises(RuntimeError):
        with FeatureCapture(unet, ["down_blocks.0", "up_blocks.3"]):
            raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in unet.modules())
    with pytest.raises(KeyError, match="unwrap_model"):
        with FeatureCapture(unet, ["module.down_blocks.0"]):
            pass
    assert not any(m._forward_hooks for m in unet.modules())


def _write_bad_rows(folder):
    (folder / "broken.png").write_bytes(b"not an image")
    with open(folder / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "broken.png", "text": "a broken file"}) + "\n")
        f.write(json.dumps({"file_name": "00000.png", "text": ""}) + "\n")
        f.write(json.dumps({"file_name": "missing.png", "text": "a missing file"}) + "\n")


def test_bad_rows_are_named_and_can_be_skipped(tmp_path):
    folder = make_synthetic_folder(tmp_path / "bad", rows=4, size=32)
    _write_bad_rows(folder)
    with pytest.raises(DataError) as err:
        load_rows(DataConfig(source=str(folder)))
    message = str(err.value)
    assert "3 bad row(s)" in message and "--skip-bad-rows" in message
    assert "metadata.jsonl line 5 (broken.png): cannot read image" in message
    assert "line 6 (00000.png): missing caption 'text'" in message
    assert "line 7 (missing.png): image file" in message and "does not exist" in message

    rows = load_rows(DataConfig(source=str(folder), skip_bad_rows=True))
    assert len(rows) == 4 and len(rows.skipped) == 3


def test_csv_and_datasets_sources(tmp_path, shapes):
    import csv

    datasets = pytest.importorskip("datasets")
    from PIL import Image

    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "caption"])
        w.writerow([str(shapes / "00001.png"), "a shape"])
        w.writerow([str(shapes / "00002.png"), ""])
    with pytest.raises(DataError, match=r"pairs.csv line 3 \(.*00002.png\): missing caption 'caption'"):
        load_rows(DataConfig(source=str(tmp_path / "pairs.csv")))
    assert len(load_rows(DataConfig(source=str(tmp_path / "pairs.csv"), skip_bad_rows=True))) == 1

    images = [Image.open(shapes / f"{i:05d}.png").convert("RGB") for i in range(3)]
    ds = datasets.Dataset.from_dict({"image": images, "text": ["a", "b", "c"]}, features=datasets.Features(
        {"image": datasets.Image(), "text": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "hf"))
    config = DataConfig(source=str(tmp_path / "hf"), resolution=32)
    rows = load_rows(config)
    assert rows.kind == "datasets" and [r.caption for r in rows.rows] == ["a", "b", "c"]
    tokenizer = load_model("builtin:tiny-sd", components=("tokenizer",)).tokenizer
    item = ImageCaptionDataset(rows, config, tokenizer, seed=0)[(1, 0)]
    assert item["pixel_values"].shape == (3, 32, 32) and item["pixel_values"].abs().max() <= 1


def test_cached_training_matches_uncached(shapes, tmp_path):
    cache_dir = tmp_path / "cache"
    data = DataConfig(source=str(shapes), resolution=64, num_workers=0, random_flip=True)
    cache = cache_latents("builtin:tiny-sd", data, cache_dir, progress=False)
    assert cache.moments_flip is not None and len(cache) == 16

    plain = distill(tiny_config(shapes, tmp_path / "plain", max_steps=3))
    cached = distill(tiny_config(shapes, tmp_path / "cached", max_steps=3, data_kw={"cache_dir": str(cache_dir)}))
    for a, b in zip(read_log(plain.run_dir), read_log(cached.run_dir), strict=True):
        for name in ("loss_task", "loss_out", "loss_feat"):
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-7), (name, a, b)

    # distill builds a missing cache itself, then trains from it.
    auto = distill(tiny_config(shapes, tmp_path / "auto", max_steps=1, data_kw={"cache_dir": str(tmp_path / "c2")}))
    assert (tmp_path / "c2" / "cache.json").exists()
    assert auto.last_losses["loss_out"] == pytest.approx(read_log(plain.run_dir)[0]["loss_out"], rel=1e-5)

    wrong = dataclasses.replace(tiny_config(shapes, tmp_path / "wrong", data_kw={"cache_dir": str(cache_dir)}),
                                teacher="builtin:tiny-sd-v2")
    with pytest.raises(CacheError, match="teacher"):
        distill(wrong)


def test_epoch_batches_split_processes_and_resume_midway():
    whole = EpochBatches(num_rows=10, batch_size=2, num_processes=1, seed=3)
    stream = whole.iterate(0)
    first = [next(stream) for _ in range(12)]  # crosses two epoch boundaries (5 batches per epoch)
    resumed = whole.iterate(7)
    assert [next(resumed) for _ in range(5)] == first[7:12]
    assert sorted(i for batch in first[:5] for i, _ in batch) == list(range(10))
    ranks = [EpochBatches(10, 2, num_processes=2, process_index=r, seed=3).iterate(0) for r in range(2)]
    seen = [i for _ in range(2) for rank in ranks for i, _ in next(rank)]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 8  # disjoint; the incomplete global batch is dropped


def test_partial_checkpoints_are_ignored(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in (("checkpoint-2", True), ("checkpoint-10", True), (".tmp-checkpoint-12", True),
                           ("checkpoint-11", False)):
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / "trainer_state.json").write_text("{}")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10"]
    assert resolve_resume(tmp_path, "latest").name == "checkpoint-10"
    assert resolve_resume(tmp_path / "empty", "latest") is None


def test_existing_run_needs_resume(shapes, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-1" / "trainer_state.json").write_text("{}")
    with pytest.raises(ValueError, match="--resume latest"):
        distill(tiny_config(shapes, out))
