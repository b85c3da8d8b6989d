"""The real CLIP BPE vocabulary, without a download.

OpenAI's CLIP ships its byte-pair merges as ``bpe_simple_vocab_16e6.txt.gz``; the
PyPI package ``open-clip-torch`` carries that file. From it we derive the
``vocab.json`` / ``merges.txt`` pair that Hugging Face's ``CLIPTokenizer`` (and
our numpy / Kotlin tokenizers) read. The derivation is the one CLIP itself uses,
so token ids equal those of ``openai/clip-vit-large-patch14``.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from pathlib import Path

VOCAB_SIZE = 49408
NUM_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def _bpe_gz_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The CLIP vocabulary comes from the 'open-clip-torch' package, which is not installed. "
            "Install it without its dependencies: pip install --no-deps open-clip-torch"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise RuntimeError(f"open-clip-torch is installed but {path} is missing; reinstall it.")
    return path


@functools.lru_cache(maxsize=1)
def clip_merges_and_vocab() -> tuple[tuple[tuple[str, str], ...], dict[str, int]]:
    """Return (merges, vocab) of the CLIP BPE tokenizer."""
    lines = gzip.open(_bpe_gz_path(), "rt", encoding="utf-8").read().split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : NUM_MERGES + 1])
    symbols = list(bytes_to_unicode().values())
    symbols = symbols + [s + "</w>" for s in symbols]
    symbols += ["".join(m) for m in merges]
    symbols += [BOS, EOS]
    vocab = {s: i for i, s in enumerate(symbols)}
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    return merges, vocab


def write_clip_tokenizer_files(out_dir: str | Path, pad_token: str = EOS) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs to ``out_dir``.

    Args:
        out_dir: folder to write into (created).
        pad_token: ``<|endoftext|>`` for SD-v1 (OpenAI CLIP), ``!`` for SD-v2 (OpenCLIP).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merges, vocab = clip_merges_and_vocab()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token})
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": BOS,
                "eos_token": EOS,
                "unk_token": EOS,
                "pad_token": pad_token,
                "do_lower_case": True,
            }
        )
    )
    return out
