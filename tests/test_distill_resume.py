"""A distillation run killed with SIGKILL after a checkpoint resumes and reproduces the uninterrupted run exactly."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from bksdm_edge.distill import CheckpointConfig, DataConfig, DistillConfig, distill, read_log
from bksdm_edge.distill.checkpoint import list_checkpoints
from bksdm_edge.distill.synthetic import make_synthetic_folder

CKPT_EVERY = 2


def config(data, out, max_steps, resume=None) -> DistillConfig:
    return DistillConfig(
        teacher="builtin:tiny-sd", variant="bk-tiny", out=str(out), max_steps=max_steps, batch_size=2, ema=True,
        ema_decay=0.9, progress=False, report_to="none",
        data=DataConfig(source=str(data), resolution=64, num_workers=0, random_flip=True),
        checkpoint=CheckpointConfig(every=CKPT_EVERY, keep=2, resume=resume),
    )


def cli_args(c: DistillConfig) -> list[str]:
    return [
        sys.executable, "-m", "bksdm_edge", "distill", "--teacher", c.teacher, "--variant", c.variant,
        "--data", c.data.source, "--out", c.out, "--max-steps", str(c.max_steps), "--batch-size", str(c.batch_size),
        "--resolution", str(c.data.resolution), "--num-workers", "0", "--ema", "--ema-decay", str(c.ema_decay),
        "--checkpoint-every", str(c.checkpoint.every), "--keep-checkpoints", str(c.checkpoint.keep),
        "--report-to", "none", "--no-progress",
    ]




def test_kill_9_after_checkpoint_then_resume_matches_uninterrupted(tmp_path, one_thread):
    data = make_synthetic_folder(tmp_path / "data", rows=7, size=64)  # 3 batches per epoch: crosses epochs
    killed = tmp_path / "killed"

    # 1. Start a long run in a subprocess and SIGKILL it as soon as its first checkpoint is complete.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cli_args(config(data, killed, max_steps=1000)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not list_checkpoints(killed):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed_from = int(list_checkpoints(killed)[-1].name.split("-")[1])
    total = resumed_from + 2 * CKPT_EVERY + 1  # past another checkpoint and off the checkpoint grid

    # 2. Resume to `total` steps; 3. the same run without interruption.
    result = distill(config(data, killed, max_steps=total, resume="latest"))
    assert result.resumed_from.endswith(f"checkpoint-{resumed_from}")
    reference = distill(config(data, tmp_path / "reference", max_steps=total))

    log, ref_log = read_log(killed), read_log(reference.run_dir)
    assert [r["step"] for r in log] == list(range(1, total + 1))
    for name in ("loss", "loss_task", "loss_out", "loss_feat", "grad_norm", "lr"):
        assert [r[name] for r in log] == [r[name] for r in ref_log], name
    for sub in ("unet", "unet_ema"):
        got = load_file(killed / sub / "diffusion_pytorch_model.safetensors")
        want = load_file(reference.run_dir / sub / "diffusion_pytorch_model.safetensors")
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), sub


def test_two_process_ddp_on_cpu(tmp_path):
    """DDP (gloo) through torchrun: hooks on the unwrapped student, losses reduced, per-rank RNG in checkpoints."""
    import json

    data = make_synthetic_folder(tmp_path / "data", rows=8, size=64)
    c = config(data, tmp_path / "ddp", max_steps=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *cli_args(c)[1:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_config = json.loads((tmp_path / "ddp" / "run_config.json").read_text())
    assert run_config["world_size"] == 2 and run_config["status"] == "finished"
    log = read_log(tmp_path / "ddp")
    assert [r["step"] for r in log] == [1, 2] and all(r["loss_feat"] > 0 for r in log)
    assert (tmp_path / "ddp" / "checkpoints" / "checkpoint-2" / "random_states_1.pkl").exists()
