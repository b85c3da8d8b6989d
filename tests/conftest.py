"""Shared test setup: offline, deterministic, small."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model():
    """The toy SD-v1 pipeline (builtin:tiny-sd), built once per session. Do not modify it in a test."""
    from bksdm_edge.loading import load_model

    return load_model("builtin:tiny-sd")


@pytest.fixture(scope="session")
def tiny_model_v2():
    from bksdm_edge.loading import load_model

    return load_model("builtin:tiny-sd-v2")


@pytest.fixture
def one_thread():
    """One intra-op thread: on two shared cores a second thread makes toy models ~20x slower under contention,
    and a subprocess run with OMP_NUM_THREADS=1 uses the same kernels (bit-identical results)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
