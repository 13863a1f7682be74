"""Tiny prepared datasets for tests that train: real text and one committed shard per split."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from data_shards.manifest import Manifest, ShardEntry, SourceStats, write_manifest
from data_shards.shard_format import ShardWriter, token_dtype


def stdlib_texts(count: int, chars: int = 6000) -> list[str]:
    """Real text: this Python's own standard-library sources."""
    paths = sorted(Path(os.__file__).parent.glob("*.py"))[:count]
    return [p.read_text(encoding="utf-8", errors="replace")[:chars] for p in paths]


def write_split(data_url: Path, split: str, docs: list[np.ndarray], tokenizer, config_hash: str) -> None:
    """Commit ``docs`` (token arrays, end-of-sequence included) as ``split`` of ``data_url``: one shard and its manifest."""
    dtype = token_dtype(tokenizer.vocab_size)
    folder = data_url / split
    folder.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(str(folder / "shard-00000.arrow"), "default", dtype, 4096)
    for i, doc in enumerate(docs):
        writer.add(np.asarray(doc).astype(dtype), i)
    w = writer.close()
    entry = ShardEntry(path="shard-00000.arrow", bytes=w.bytes, sha256=w.sha256, docs=w.docs, tokens=w.tokens)
    write_manifest(
        str(data_url),
        Manifest(
            split=split,
            config_hash=config_hash,
            tokenizer_sha256=tokenizer.sha256,
            vocab_size=tokenizer.vocab_size,
            bos_id=tokenizer.bos_id,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            dtype=dtype,
            shards=[entry],
            total_docs=w.docs,
            total_tokens=w.tokens,
            sources={"default": SourceStats(docs=w.docs, tokens=w.tokens)},
        ),
    )
