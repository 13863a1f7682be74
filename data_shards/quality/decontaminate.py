"""Removal of training documents that share a word n-gram with an evaluation example (GPT-3's
13-gram overlap), counted per file of examples."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter

import xxhash

from data_shards.config import Decontaminate
from ops import storage

_WORD = re.compile(r"\w+")


def ngram_hashes(text: str, n: int) -> set[int]:
    """Hashes of the word n-grams of the lower-cased text with punctuation removed; the whole text when
    it is shorter than ``n`` words."""
    tokens = _WORD.findall(text.lower())
    if not tokens:
        return set()
    n = min(n, len(tokens))
    return {xxhash.xxh64_intdigest(" ".join(tokens[i : i + n]).encode()) for i in range(len(tokens) - n + 1)}


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def examples(url: str, storage_options=None) -> list[str]:
    """Texts of an examples file: per JSON-lines record, each string field and all of them joined
    (a context and its answer span); a plain-text file is one example."""
    raw = storage.read_bytes(url, storage_options)
    if url.endswith(".gz"):
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8", errors="replace")
    if not url.removesuffix(".gz").endswith((".jsonl", ".json")):
        return [text]
    out = []
    for line in text.splitlines():
        if line.strip():
            parts = _strings(json.loads(line))
            out.extend(parts)
            out.append(" ".join(parts))
    return out


class Contamination:
    """The n-grams of every example of ``spec.against``; a document sharing one is dropped."""

    def __init__(self, spec: Decontaminate, storage_options=None):
        self.n = spec.ngram
        self.owner: dict[int, str] = {}
        for url in spec.against:
            name = url.rstrip("/").rsplit("/", 1)[-1]
            for example in examples(url, storage_options):
                for h in ngram_hashes(example, self.n):
                    self.owner.setdefault(h, name)
        self.removed: Counter[str] = Counter()

    def __call__(self, text: str) -> str | None:
        tokens = _WORD.findall(text.lower())
        n = self.n
        for i in range(max(1, len(tokens) - n + 1)):
            owner = self.owner.get(xxhash.xxh64_intdigest(" ".join(tokens[i : i + n]).encode()))
            if owner is not None:
                self.removed[owner] += 1
                return None
        return text
