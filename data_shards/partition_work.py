"""What one prepare task does with one input partition (plain functions; prepare runs them on Ray).

Tokenizing a partition writes its shards, then its completion marker; a partition
with a marker is never redone, one without is redone from scratch and rewrites the
same shard names, so a killed prepare resumes without losing or duplicating documents.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from data_shards.filters import FilterChain
from data_shards.inputs import Partition, ReadCounts, read_documents
from data_shards.shard_format import ShardWriter, lengths_bytes
from data_shards.tokenizer import Tokenizer
from ops import storage

DOC_INDEX_BITS = 36  # doc_id = partition << 36 | document number within the partition
ENCODE_BATCH = 256
# Documents are encoded in batches of ENCODE_BATCH or of this much text, whichever comes first,
# so a batch of documents near data.max_doc_bytes does not multiply what a task holds.
ENCODE_BATCH_BYTES = 16 << 20
MAX_SENTENCE_BYTES = 1 << 15
SAMPLE_SCAN_FACTOR = 4
WORK_DIR = "_work"


def doc_id(partition: int, number: int) -> int:
    return (partition << DOC_INDEX_BITS) | number


def _unit_hash(*parts: object) -> float:
    """A uniform number in [0, 1) keyed by ``parts``."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def held_out(seed: int, doc: int, fraction: float) -> bool:
    return fraction > 0 and _unit_hash(seed, "val", doc) < fraction


def content_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=16).digest()


def iter_clean(partition: Partition, on_error: str, counts: ReadCounts, chain: FilterChain):
    """(document number, cleaned text) of every document that survives the filters."""
    for number, text in enumerate(read_documents(partition, on_error, counts)):
        yield number, (chain(text) if text else text)


def sample_partition(partition: Partition, budget_bytes: int, seed: int, filters: list, on_error: str) -> list[str]:
    """A seeded sample of the partition's lines of at most ``budget_bytes`` (priority sampling).

    Documents are drawn from the first ``SAMPLE_SCAN_FACTOR * budget_bytes`` of text, so the
    work, like the memory, is bounded by the budget rather than by the corpus; the result
    depends only on the partition, seed and budget.
    """
    heap: list[tuple[float, int, str]] = []
    held = scanned = 0
    counts, chain = ReadCounts(), FilterChain(filters, partition.split, partition.options)
    for number, text in iter_clean(partition, on_error, counts, chain):
        if not text:
            continue
        if scanned >= SAMPLE_SCAN_FACTOR * budget_bytes:
            break
        size = len(text.encode("utf-8", errors="replace"))
        scanned += size
        heapq.heappush(heap, (-_unit_hash(seed, "tokenizer", partition.index, number), number, text))
        held += size
        while held > budget_bytes and len(heap) > 1:
            held -= len(heapq.heappop(heap)[2].encode("utf-8", errors="replace"))
    kept = sorted(heap, key=lambda item: item[1])
    lines = []
    for _, _, text in kept:
        lines.extend(line for line in text.split("\n") if line.strip() and len(line) <= MAX_SENTENCE_BYTES // 4)
    return lines


def partition_hashes(partition: Partition, filters: list, on_error: str) -> list[tuple[bytes, int]]:
    """(content hash, doc_id) of every non-empty document after the per-document filters."""
    out = []
    counts, chain = ReadCounts(), FilterChain(filters, partition.split, partition.options)
    for number, text in iter_clean(partition, on_error, counts, chain):
        if text:
            out.append((content_hash(text), doc_id(partition.index, number)))
    return out


@dataclass
class TokenizeJob:
    """Everything a tokenize task needs besides its partition (small and picklable)."""

    output: storage.Location
    config_hash: str
    seed: int
    tokenizer_bytes: bytes
    filters: list
    on_error: str
    val_fraction: float
    shard_bytes: int
    batch_bytes: int
    dtype: str

    def __post_init__(self) -> None:
        self.output = storage.location(self.output)

    def marker_url(self, partition: int) -> storage.Location:
        return self.output.join(WORK_DIR, self.config_hash, f"part-{partition:05d}.json")

    def shard_name(self, partition: int, number: int) -> str:
        return f"shard-{partition:05d}-{number:04d}-{self.config_hash[:8]}.arrow"


_TOKENIZERS: dict[str, Tokenizer] = {}


def _tokenizer(model_bytes: bytes) -> Tokenizer:
    """Loaded once per worker process, whatever the number of tasks it runs."""
    key = hashlib.sha256(model_bytes).hexdigest()
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = Tokenizer(model_bytes)
    return _TOKENIZERS[key]


class _SplitShards:
    """Size-bounded shards of one split of one partition, uploaded as each one closes."""

    def __init__(self, job: TokenizeJob, partition: Partition, split: str, workdir: str):
        self.job, self.partition, self.split, self.workdir = job, partition, split, workdir
        self.writer: ShardWriter | None = None
        self.entries: list[dict] = []

    def add(self, tokens: np.ndarray, doc: int) -> None:
        if self.writer is None:
            name = self.job.shard_name(self.partition.index, len(self.entries))
            self.writer = ShardWriter(
                os.path.join(self.workdir, f"{self.split}-{name}"), self.partition.source, self.job.dtype, self.job.batch_bytes
            )
            self.name = name
        self.writer.add(tokens, doc)
        if self.writer.payload_bytes >= self.job.shard_bytes:
            self.close()

    def close(self) -> None:
        if self.writer is None:
            return
        written = self.writer.close()
        self.writer = None
        _publish(written.local_path, self.job.output.join(self.split, self.name))
        index = lengths_bytes(written.doc_lengths)
        index_name = self.name.removesuffix(".arrow") + ".lengths.npy"
        storage.write_bytes(self.job.output.join(self.split, index_name), index)
        self.entries.append(
            {
                "path": self.name,
                "bytes": written.bytes,
                "sha256": written.sha256,
                "docs": written.docs,
                "tokens": written.tokens,
                "source": self.partition.source,
                "index": index_name,
                "index_sha256": hashlib.sha256(index).hexdigest(),
            }
        )


def _publish(local_path: str, target: storage.Location) -> None:
    fs, path = storage.filesystem(target)
    if storage.is_local(target):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(local_path, path)
        return
    storage.with_retries(lambda: fs.put_file(local_path, path))
    os.remove(local_path)


def tokenize_partition(partition: Partition, job: TokenizeJob, drops: dict[str, frozenset] | None = None, report=None) -> dict:
    """Tokenize one partition into shards and write its completion marker; returns the marker.

    ``drops`` maps each corpus-wide step (``dedup_exact``, ``near_dedup``) to the doc_ids of this
    partition it removes. ``report(docs, tokens)`` receives progress every so often.
    """
    drops = drops or {}
    removed = {name: 0 for name in drops}
    tok = _tokenizer(job.tokenizer_bytes)
    counts, chain = ReadCounts(), FilterChain(job.filters, partition.split, partition.options)
    empty = 0
    scratch = None
    if storage.is_local(job.output):  # same filesystem as the output, so a shard moves in by rename
        _, base = storage.filesystem(job.output)
        scratch = os.path.join(base, WORK_DIR, "tmp")
        os.makedirs(scratch, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix=f"part-{partition.index:05d}-", dir=scratch)
    splits = {name: _SplitShards(job, partition, name, workdir) for name in ("train", "val")}
    pending: list[tuple[int, str, str]] = []
    pending_bytes = 0
    last_report, reported = time.monotonic(), (0, 0)
    totals = [0, 0]

    def flush() -> None:
        nonlocal pending_bytes
        if not pending:
            return
        pending_bytes = 0
        encoded = tok.encode_batch([text for _, _, text in pending])
        for (doc, split, _), ids in zip(pending, encoded):
            ids.append(tok.eos_id)
            splits[split].add(np.asarray(ids, dtype=job.dtype), doc)
            totals[0] += 1
            totals[1] += len(ids)
        pending.clear()

    try:
        for number, text in iter_clean(partition, job.on_error, counts, chain):
            if text is None:
                continue
            if not text:
                empty += 1
                continue
            doc = doc_id(partition.index, number)
            by = next((name for name, ids in drops.items() if doc in ids), None)
            if by is not None:
                removed[by] += 1
                continue
            if partition.split == "holdout":
                split = "val" if held_out(job.seed, doc, job.val_fraction) else "train"
            else:
                split = partition.split
            pending.append((doc, split, text))
            pending_bytes += len(text)
            if len(pending) >= ENCODE_BATCH or pending_bytes >= ENCODE_BATCH_BYTES:
                flush()
                if report is not None and time.monotonic() - last_report > 1.0:
                    report(totals[0] - reported[0], totals[1] - reported[1])
                    reported, last_report = (totals[0], totals[1]), time.monotonic()
        flush()
        for shards in splits.values():
            shards.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if report is not None:
        report(totals[0] - reported[0], totals[1] - reported[1])
    marker = {
        "partition": partition.index,
        "files": partition.files,
        "source": partition.source,
        "shards": {name: s.entries for name, s in splits.items()},
        "errors": {**dataclasses.asdict(counts), "empty_docs": empty},
        "filters": {**chain.counts, **{name: {"dropped": n, "changed": 0} for name, n in removed.items()}},
    }
    storage.write_json(job.marker_url(partition.index), marker)
    return marker
