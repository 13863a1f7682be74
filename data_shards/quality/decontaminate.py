"""Removal of training documents that share a word n-gram with an evaluation example (GPT-3's
13-gram overlap), counted per file of examples."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Iterator, Mapping

import xxhash

from data_shards.bounded_read import Oversized, gzip_chunks, json_too_deep, plain_chunks, read_capped, split_lines
from data_shards.config import Decontaminate
from ops import storage

_WORD = re.compile(r"\w+")
MAX_EXAMPLE_BYTES = 8 << 20  # one example: a task record or a held-out document


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


def examples(source: storage.Place, max_bytes: int = MAX_EXAMPLE_BYTES) -> Iterator[str]:
    """Texts of an examples file: per JSON-lines record, each string field and all of them joined
    (a context and its answer span); a plain-text file is one example.  Read as a stream of bounded
    chunks (the held-out inputs are input files like any other): a line or file over ``max_bytes``, or
    a record nested too deep to parse, is no example."""
    fs, path = storage.filesystem(source)
    url = str(source)
    with fs.open(path, "rb") as raw:
        chunks = gzip_chunks(raw) if url.endswith(".gz") else plain_chunks(raw)
        if not url.removesuffix(".gz").endswith((".jsonl", ".json")):
            whole = read_capped(chunks, max_bytes)
            if whole is not None:
                yield whole.decode("utf-8", errors="replace")
            return
        for _, line in split_lines(chunks, max_bytes):
            if isinstance(line, Oversized) or not line.strip() or json_too_deep(line):
                continue
            parts = _strings(json.loads(line))
            yield from parts
            yield " ".join(parts)


class Contamination:
    """The n-grams of every example of ``spec.against``; a document sharing one is dropped."""

    def __init__(self, spec: Decontaminate, input_options: Mapping[str, Any] | None = None):
        self.n = spec.ngram
        self.owner: dict[int, str] = {}
        for url in spec.against:
            name = url.rstrip("/").rsplit("/", 1)[-1]
            for example in examples(storage.Location(url, input_options or {})):
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
