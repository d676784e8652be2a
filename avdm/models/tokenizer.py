"""A small offline CLIP tokenizer for tiny models: characters plus whole-word BPE merges.

Real models load their own tokenizer with ``from_pretrained``. Tiny models need one that works
with no download: this writes a CLIP-format ``vocab.json`` / ``merges.txt`` whose base symbols are
lower-case characters and whose merges build each word of a given vocabulary into one token, so
captions made of those words tokenize to one id per word and anything else falls back to characters.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

from transformers import CLIPTokenizer

BASE_SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789.,;:'\"!?-()&/"
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def write_word_bpe_files(words: Iterable[str], out_dir: str | Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` to ``out_dir``; returns the directory."""
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in BASE_SYMBOLS:
            vocab[c + suffix] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(w.lower() for w in words):
        if not word or any(c not in BASE_SYMBOLS for c in word):
            raise ValueError(f"tokenizer word {word!r} must be non-empty and use only {BASE_SYMBOLS!r}")
        symbols = list(word)
        symbols[-1] += "</w>"
        while len(symbols) > 1:  # left-to-right merges: rank order reproduces the word exactly
            pair = (symbols[0], symbols[1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            symbols = [pair[0] + pair[1], *symbols[2:]]
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return out


def build_word_tokenizer(words: Iterable[str], max_length: int = 16) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` over :func:`write_word_bpe_files` with ``model_max_length=max_length``."""
    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(write_word_bpe_files(words, tmp), model_max_length=max_length)
