"""The pure-Python CLIP tokenizer against transformers.CLIPTokenizer on the same files."""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from bksdm_edge.runtime.golden import PROMPTS as GOLDEN_PROMPTS
from bksdm_edge.runtime.tokenizer import ClipTokenizer
from bksdm_edge.tokenizer_files import write_clip_tokenizer_files

transformers = pytest.importorskip("transformers")

# The golden prompts the Kotlin engine is tested on, plus cases only this comparison needs.
PROMPTS = [*GOLDEN_PROMPTS, "   ", "\t\n", " ".join(["word"] * 100)]


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {
        49407: write_clip_tokenizer_files(root / "v1"),
        0: write_clip_tokenizer_files(root / "v2", pad_token="!"),
    }


def _reference(path):
    return transformers.CLIPTokenizer.from_pretrained(str(path))


def _ref_ids(ref, text):
    return ref(text, padding="max_length", max_length=77, truncation=True).input_ids


def _random_prompts(n: int, seed: int) -> list[str]:
    pool = list("abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789 .,!?'\"-_()[]<>|&;:") + list(
        "éèüßøñçÅΣςλжЖ日本語中文한국어🐱😎🇫🇷\u200d\u3000\u00a0\t\n"
    )
    pool += ["'s", "'ll", "<|endoftext|>", "!!", "..."]
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 120))) for _ in range(n)]


@pytest.mark.parametrize("pad_id", [49407, 0])
def test_ids_match_transformers(tokenizer_dirs, pad_id):
    d = tokenizer_dirs[pad_id]
    ours = ClipTokenizer.from_files(d / "vocab.json", d / "merges.txt", pad_token_id=pad_id)
    ref = _reference(d)
    assert ref.pad_token_id == pad_id
    for text in PROMPTS + _random_prompts(150, seed=pad_id):
        assert ours.encode(text) == _ref_ids(ref, text), repr(text)


def test_truncation_and_padding(tokenizer_dirs):
    d = tokenizer_dirs[49407]
    tok = ClipTokenizer.from_files(d / "vocab.json", d / "merges.txt")
    long_ids = tok.encode(" ".join(["word"] * 100))
    assert len(long_ids) == 77 and long_ids[0] == 49406 and long_ids[-1] == 49407
    assert long_ids[1:76] == [long_ids[1]] * 75
    assert tok.encode("") == [49406] + [49407] * 76


def test_from_bundle_checks_manifest_ids(tokenizer_dirs, tmp_path):
    d = tokenizer_dirs[0]
    section = {"vocab": "vocab.json", "merges": "merges.txt", "max_length": 77, "pad_token_id": 0,
               "bos_token_id": 49406, "eos_token_id": 49407}
    tok = ClipTokenizer.from_bundle(d, section)
    assert tok.encode("a!")[:4] == [49406, 320, 0, 49407]
    with pytest.raises(ValueError, match="bos_token_id"):
        ClipTokenizer.from_bundle(d, {**section, "bos_token_id": 1})
