"""Fixtures for the data layer: tiny token datasets written with the real shard writer."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from data_shards.manifest import Manifest, ShardEntry, SourceStats, write_manifest
from data_shards.shard_format import ShardWriter, lengths_bytes, token_dtype

REAL_CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus" / "python-docs"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own sample-index and verification cache."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "kiln-cache"))


def random_docs(seed: int, count: int, vocab: int, eos: int = 2, min_len: int = 1, max_len: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(count):
        body = rng.integers(4, vocab, size=int(rng.integers(min_len, max_len)))
        docs.append(np.append(body, eos).astype(np.int64))
    return docs


def write_split(
    data_url: str,
    split: str,
    sources: dict[str, list[list[np.ndarray]]],
    vocab: int = 500,
    weights: dict[str, float] | None = None,
    batch_bytes: int = 256,
    with_index: bool = False,
) -> Manifest:
    """Shards (one per inner list) and a manifest, as prepare writes them (document-length
    index files too when ``with_index``)."""
    dtype = token_dtype(vocab)
    folder = Path(data_url) / split
    folder.mkdir(parents=True, exist_ok=True)
    entries, doc_id = [], 0
    for name, shards in sources.items():
        for docs in shards:
            path = folder / f"shard-{len(entries):05d}.arrow"
            writer = ShardWriter(str(path), name, dtype, batch_bytes)
            for d in docs:
                writer.add(d.astype(dtype), doc_id)
                doc_id += 1
            w = writer.close()
            entry = ShardEntry(path=path.name, bytes=w.bytes, sha256=w.sha256, docs=w.docs, tokens=w.tokens, source=name)
            if with_index:
                index = lengths_bytes(w.doc_lengths)
                (folder / f"{path.stem}.lengths.npy").write_bytes(index)
                entry.index, entry.index_sha256 = f"{path.stem}.lengths.npy", hashlib.sha256(index).hexdigest()
            entries.append(entry)
    stats = {
        n: SourceStats(
            docs=sum(e.docs for e in entries if e.source == n),
            tokens=sum(e.tokens for e in entries if e.source == n),
            weight=(weights or {}).get(n, 1.0),
        )
        for n in sources
    }
    manifest = Manifest(
        split=split,
        config_hash="test",
        tokenizer_sha256=hashlib.sha256(b"test tokenizer").hexdigest(),
        vocab_size=vocab,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        dtype=dtype,
        shards=entries,
        total_docs=sum(e.docs for e in entries),
        total_tokens=sum(e.tokens for e in entries),
        sources=stats,
    )
    write_manifest(data_url, manifest)
    return manifest


def write_jsonl_gz(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def corpus_dir(tmp_path: Path) -> Path:
    """The shared python-docs corpus, or a small real-text corpus built from this Python's sources."""
    if REAL_CORPUS.is_dir() and any(REAL_CORPUS.glob("train-*.jsonl.gz")):
        return REAL_CORPUS.resolve()
    out = tmp_path / "fallback-corpus"
    sources = sorted(Path(os.__file__).parent.glob("*.py"))[:90]
    rows = [{"id": p.name, "text": p.read_text(encoding="utf-8", errors="replace")} for p in sources]
    for i in range(8):
        write_jsonl_gz(out / f"train-{i:02d}.jsonl.gz", rows[i * 10 : (i + 1) * 10])
    write_jsonl_gz(out / "val-00.jsonl.gz", rows[80:90])
    return out


class DataKit:
    """Helpers handed to tests (test modules cannot import conftest under importlib mode)."""

    random_docs = staticmethod(random_docs)
    write_split = staticmethod(write_split)
    write_jsonl_gz = staticmethod(write_jsonl_gz)
    corpus_dir = staticmethod(corpus_dir)


@pytest.fixture(scope="session")
def kit() -> DataKit:
    return DataKit()


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray cluster for the tests of one module."""
    import ray

    ray_tmp = tempfile.mkdtemp(prefix="kray-")  # its session folder, removed with it (not /tmp/ray)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False, _temp_dir=ray_tmp)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
