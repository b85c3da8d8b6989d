"""A pure-Python CLIP BPE tokenizer (no transformers, no torch).

It reproduces ``transformers.CLIPTokenizer`` (the ``tokenizers``-backed one that
Stable Diffusion pipelines use) id for id:

1. the special tokens (bos, eos and the pad token, which is ``!`` for SD-v2) are
   split out of the raw text first, as ``tokenizers`` does for added tokens;
2. every other piece is normalised: Unicode NFC, each run of white space to one
   space, lower case character by character (so Σ is always σ, İ becomes i + U+0307);
3. CLIP's regex splits it into words (letters runs, single digits, runs of other
   symbols, English contractions), white space is dropped;
4. each word's UTF-8 bytes are mapped to printable characters (GPT-2's byte map),
   ``</w>`` marks the last one, and byte-pair merges apply lowest rank first;
5. bos + ids[: max_length - 2] + eos, padded with the pad id to ``max_length``.

There is no ftfy and no HTML unescaping: the fast CLIP tokenizer does neither.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import regex

from bksdm_edge.tokenizer_files import BOS, EOS, bytes_to_unicode

# Unicode's White_Space property: what `\s` means for the tokenizers library and
# for the `regex` module. Spelled out so the Kotlin engine can use the same set.
WHITESPACE_CLASS = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WHITESPACE_RUN = regex.compile(f"[{WHITESPACE_CLASS}]+")
# CLIP's word pattern. Its leading `<|startoftext|>|<|endoftext|>` alternatives are left
# out: special tokens were split off before, and `tokenizers` in fact never matches them
# here (a lower-cased "<|ENDOFTEXT|>" comes out as "<|", "endoftext", "|>").
_WORDS = regex.compile(rf"'s|'t|'re|'ve|'m|'ll|'d|\p{{L}}+|\p{{N}}|[^{WHITESPACE_CLASS}\p{{L}}\p{{N}}]+")
END_OF_WORD = "</w>"


class ClipTokenizer:
    """CLIP's byte-level BPE tokenizer.

    Args:
        vocab: token -> id (``vocab.json``).
        merges: merge pairs in rank order (``merges.txt`` without its header).
        pad_token_id: 49407 (``<|endoftext|>``) for SD-v1, 0 (``!``) for SD-v2.
        max_length: length of every encoded sequence (77 for CLIP).
        bos_token_id / eos_token_id: default to the ids of ``<|startoftext|>`` / ``<|endoftext|>``.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        pad_token_id: int = 49407,
        max_length: int = 77,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
    ):
        self.vocab = vocab
        self.id_to_token = {i: t for t, i in vocab.items()}
        self.merge_ranks: dict[tuple[str, str], int] = {}
        for rank, pair in enumerate(merges):
            self.merge_ranks.setdefault(pair, rank)  # a repeated pair keeps its first rank
        self.max_length = max_length
        self.bos_token_id = vocab[BOS] if bos_token_id is None else bos_token_id
        self.eos_token_id = vocab[EOS] if eos_token_id is None else eos_token_id
        self.pad_token_id = pad_token_id
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (bos and eos), got {max_length}")
        for name, i in (("bos", self.bos_token_id), ("eos", self.eos_token_id), ("pad", pad_token_id)):
            if i not in self.id_to_token:
                raise ValueError(f"{name} token id {i} is not in the vocabulary")
        specials = {self.id_to_token[i]: i for i in (self.bos_token_id, self.eos_token_id, pad_token_id)}
        self.special_tokens = specials
        # Longest first, so that a special token that contains another wins.
        self._special_split = regex.compile(
            "(" + "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
        )
        self._byte_map = bytes_to_unicode()
        self._cache: dict[str, tuple[str, ...]] = {}

    @classmethod
    def from_files(
        cls, vocab_path: str | Path, merges_path: str | Path, pad_token_id: int = 49407, max_length: int = 77
    ) -> ClipTokenizer:
        """Read ``vocab.json`` and ``merges.txt`` (the ``#version`` header line is skipped)."""
        vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
        merges = read_merges(merges_path)
        return cls(vocab, merges, pad_token_id=pad_token_id, max_length=max_length)

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, tokenizer_section: dict) -> ClipTokenizer:
        """Build from a bundle folder and its manifest's ``tokenizer`` section."""
        root = Path(bundle_dir)
        tok = cls.from_files(
            root / tokenizer_section["vocab"],
            root / tokenizer_section["merges"],
            pad_token_id=int(tokenizer_section["pad_token_id"]),
            max_length=int(tokenizer_section.get("max_length", 77)),
        )
        for key, value in (("bos_token_id", tok.bos_token_id), ("eos_token_id", tok.eos_token_id)):
            if key in tokenizer_section and int(tokenizer_section[key]) != value:
                raise ValueError(f"manifest {key}={tokenizer_section[key]} but the vocabulary gives {value}")
        return tok

    def normalize(self, text: str) -> str:
        """NFC, white space runs to one space, lower case (in that order, as ``tokenizers`` does)."""
        return _lowercase_per_char(_WHITESPACE_RUN.sub(" ", unicodedata.normalize("NFC", text)))

    def bpe(self, word: str, used_merges: set[tuple[str, str]] | None = None) -> tuple[str, ...]:
        """Byte-pair-merge one byte-mapped word.

        Args:
            word: the word, already mapped to GPT-2's printable byte characters.
            used_merges: when given, every merge pair looked up and found is added to it
                (the golden writer uses this to ship a minimal merges file).
        """
        if used_merges is None and word in self._cache:
            return self._cache[word]
        symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            best_rank, best_pair = None, None
            for pair in zip(symbols, symbols[1:]):
                rank = self.merge_ranks.get(pair)
                if rank is not None:
                    if used_merges is not None:
                        used_merges.add(pair)
                    if best_rank is None or rank < best_rank:
                        best_rank, best_pair = rank, pair
            if best_pair is None:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best_pair:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        result = tuple(symbols)
        if used_merges is None:
            self._cache[word] = result
        return result

    def tokenize(self, text: str, used_merges: set[tuple[str, str]] | None = None) -> list[str]:
        """Text -> BPE tokens, without bos/eos, truncation or padding."""
        tokens: list[str] = []
        for k, piece in enumerate(self._special_split.split(text)):
            if k % 2 == 1:  # a special token captured by the split
                tokens.append(piece)
                continue
            for word in _WORDS.findall(self.normalize(piece)):
                mapped = "".join(self._byte_map[b] for b in word.encode("utf-8"))
                tokens.extend(self.bpe(mapped, used_merges))
        return tokens

    def encode(self, text: str) -> list[int]:
        """Text -> exactly ``max_length`` ids: bos, tokens (truncated), eos, padding."""
        ids = [self.vocab[t] for t in self.tokenize(text)][: self.max_length - 2]
        ids = [self.bos_token_id, *ids, self.eos_token_id]
        return ids + [self.pad_token_id] * (self.max_length - len(ids))


def _lowercase_per_char(text: str) -> str:
    """Lower-case each character on its own, as ``tokenizers``' Lowercase normalizer does.

    ``str.lower`` also applies the context rule for Greek final sigma (Σ -> ς at a word's
    end); ``tokenizers`` does not (Σ -> σ always), and neither does the Kotlin engine.
    """
    if "\u03a3" not in text:
        return text.lower()
    return "".join(c.lower() for c in text)


def read_merges(path: str | Path) -> list[tuple[str, str]]:
    """Read a ``merges.txt``: one ``left right`` pair per line after an optional ``#version`` header."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = []
    for n, line in enumerate(lines):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{path}: line {n + 2} is not a merge pair: {line!r}")
        merges.append((parts[0], parts[1]))
    return merges
