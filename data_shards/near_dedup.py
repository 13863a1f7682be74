"""Near-duplicate removal across the corpus: MinHash LSH as a Ray shuffle (:mod:`data_shards.drop_shuffle`).

Map tasks turn every cleaned document of a partition into a MinHash signature over its word
n-grams and emit one key per band (the hash of that band's rows), split into buckets by key.
Reduce tasks group each bucket's equal (band, key) pairs and emit candidate pairs (the smallest
doc_id of the group, another member). The driver joins the pairs into clusters (union-find)
and drops every member but the smallest doc_id of each: the connected components of the
"shares a band" graph do not depend on partitioning, worker count or scheduling, so neither
does the kept set. Signatures never leave their map task; a reduce task holds one bucket's
keys; the driver holds only the candidate pairs.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash

from data_shards.config import NearDedup
from data_shards.drop_shuffle import shuffle_drops
from data_shards.inputs import Partition, ReadCounts
from data_shards.partition_work import TokenizeJob, doc_id, iter_clean
from data_shards.filters import FilterChain

MERSENNE_31 = np.uint64((1 << 31) - 1)
_WORD = re.compile(r"\w+")
_NGRAM_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it permutes 64-bit words
_BAND_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
PAIR_DTYPE = np.dtype([("band", "<u2"), ("key", "<u8"), ("doc", "<u8")])


class MinHasher:
    """Signatures of ``signature_size`` universal hashes ``(a*x + b) mod (2**31 - 1)`` over 31-bit
    n-gram hashes: with every operand below the prime, ``a*x + b`` fits in 64 bits, so the
    reduction is exact (two folds of the Mersenne prime and one subtraction)."""

    def __init__(self, spec: NearDedup):
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        self.a = rng.integers(1, MERSENNE_31, size=spec.signature_size, dtype=np.uint64)
        self.b = rng.integers(0, MERSENNE_31, size=spec.signature_size, dtype=np.uint64)
        self.band_weights = (_BAND_MIX ** np.arange(1, spec.rows + 1, dtype=np.uint64)).astype(np.uint64)

    def shingles(self, text: str) -> np.ndarray:
        """31-bit hashes of the lower-cased word n-grams (punctuation ignored); the whole text as one
        n-gram when it has fewer words than ``ngram``."""
        words = _WORD.findall(text.lower())
        if not words:
            return np.zeros(0, dtype=np.uint64)
        h = np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in words), dtype=np.uint64, count=len(words))
        n = min(self.spec.ngram, len(h))
        mixed = h[: len(h) - n + 1].copy()
        for k in range(1, n):  # polynomial in the word hashes, wrapping mod 2**64
            mixed = mixed * _NGRAM_MIX + h[k : len(h) - n + 1 + k]
        return np.unique(mixed >> np.uint64(33))

    def signature(self, text: str) -> np.ndarray | None:
        x = self.shingles(text)
        if not len(x):
            return None
        v = np.multiply.outer(x, self.a) + self.b  # (shingles, signature_size), below 2**62 + 2**31
        v = (v & MERSENNE_31) + (v >> np.uint64(31))  # below 2**32 + 1
        v = (v & MERSENNE_31) + (v >> np.uint64(31))  # below 2**31 + 2
        return np.where(v >= MERSENNE_31, v - MERSENNE_31, v).min(axis=0)

    def band_keys(self, signature: np.ndarray) -> np.ndarray:
        rows = signature.reshape(self.spec.bands, self.spec.rows)
        return (rows * self.band_weights).sum(axis=1, dtype=np.uint64)


def band_pairs(docs, spec: NearDedup, buckets: int) -> list[np.ndarray]:
    """Map step over ``(doc_id, text)``: (band, key, doc_id) records, split into ``buckets`` by key."""
    hasher = MinHasher(spec)
    keys, ids = [], []
    for doc, text in docs:
        sig = hasher.signature(text)
        if sig is not None:
            keys.append(hasher.band_keys(sig))
            ids.append(doc)
    out = np.empty(len(keys) * spec.bands, dtype=PAIR_DTYPE)
    if keys:
        out["band"] = np.tile(np.arange(spec.bands, dtype=np.uint16), len(keys))
        out["key"] = np.concatenate(keys)
        out["doc"] = np.repeat(np.asarray(ids, dtype=np.uint64), spec.bands)
    which = (out["key"] ^ out["band"].astype(np.uint64)) % np.uint64(buckets)
    return [out[which == b] for b in range(buckets)]


def candidate_pairs(*parts: np.ndarray) -> np.ndarray:
    """Reduce step: (smallest doc_id, other doc_id) for every group of records sharing band and key."""
    recs = np.concatenate(parts) if parts else np.empty(0, dtype=PAIR_DTYPE)
    if len(recs) < 2:
        return np.empty((0, 2), dtype=np.uint64)
    recs = recs[np.lexsort((recs["doc"], recs["key"], recs["band"]))]
    new_group = np.ones(len(recs), dtype=bool)
    new_group[1:] = (recs["band"][1:] != recs["band"][:-1]) | (recs["key"][1:] != recs["key"][:-1])
    first = np.flatnonzero(new_group)
    group_min = recs["doc"][first][np.cumsum(new_group) - 1]
    member = ~new_group & (recs["doc"] != group_min)
    pairs = np.stack([group_min[member], recs["doc"][member]], axis=1)
    return np.unique(pairs, axis=0)


def cluster_drops(pair_sets) -> set[int]:
    """Every doc_id but the smallest of each connected component of the candidate pairs."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for pairs in pair_sets:
        for a, b in pairs.tolist():
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return {x for x in parent if root(x) != x}


def map_partition(partition: Partition, job: TokenizeJob, buckets: int, spec: NearDedup) -> list[np.ndarray]:
    """Map step: :func:`band_pairs` of the partition's cleaned documents."""
    counts, chain = ReadCounts(), FilterChain(job.filters, partition.split, partition.options)
    docs = (
        (doc_id(partition.index, number), text) for number, text in iter_clean(partition, job.on_error, counts, chain) if text
    )
    return band_pairs(docs, spec, buckets)


def duplicates(partitions: list[Partition], job: TokenizeJob, spec: NearDedup, show) -> dict[int, frozenset]:
    """doc_ids to drop, by partition index; cached next to the completion markers."""
    return shuffle_drops(
        partitions,
        job,
        "near-dedup-drops.json",
        "near-duplicates (MinHash shuffle)",
        map_partition,
        candidate_pairs,
        cluster_drops,
        show,
        spec,
    )
