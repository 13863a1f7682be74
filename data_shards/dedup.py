"""Exact document de-duplication across the whole corpus, as a Ray shuffle on content hashes.

Map tasks hash every cleaned document of a partition and split the (hash, doc_id)
pairs into buckets by hash; one reduce task per bucket sees every copy of a text and
keeps the smallest doc_id, so the result is independent of scheduling.  No process
ever holds the whole corpus's hashes.
"""

from __future__ import annotations

import ray

from data_shards.inputs import Partition
from data_shards.ray_results import get
from data_shards.partition_work import DOC_INDEX_BITS, TokenizeJob, partition_hashes
from ops import storage

MAX_BUCKETS = 64


def _hash_buckets(partition: Partition, job: TokenizeJob, buckets: int):
    out: list[list[tuple[bytes, int]]] = [[] for _ in range(buckets)]
    for digest, doc in partition_hashes(partition, job.filters, job.on_error, job.storage_options):
        out[int.from_bytes(digest[:4], "little") % buckets].append((digest, doc))
    return tuple(out) if buckets > 1 else out[0]


def _bucket_duplicates(*parts: list[tuple[bytes, int]]) -> list[int]:
    first: dict[bytes, int] = {}
    dropped = []
    for part in parts:
        for digest, doc in part:
            keep = first.get(digest)
            if keep is None:
                first[digest] = doc
            elif doc < keep:
                first[digest] = doc
                dropped.append(keep)
            else:
                dropped.append(doc)
    return dropped


def duplicates(partitions: list[Partition], job: TokenizeJob, show) -> dict[int, frozenset]:
    """doc_ids to drop, by partition index; cached next to the completion markers."""
    cache_url = storage.join(job.output, "_work", job.config_hash, "dedup-drops.json")
    if storage.exists(cache_url, job.storage_options):
        cached = storage.read_json(cache_url, job.storage_options)
        return {int(k): frozenset(v) for k, v in cached.items()}
    buckets = max(1, min(MAX_BUCKETS, len(partitions)))
    phase = show.phase("de-duplicating (hash shuffle)", len(partitions) + buckets)
    mapper = ray.remote(num_cpus=1, num_returns=buckets)(_hash_buckets)
    job_ref = ray.put(job)
    outputs = [mapper.remote(p, job_ref, buckets) for p in partitions]
    per_bucket = [[out[b] if buckets > 1 else out for out in outputs] for b in range(buckets)]
    reducer = ray.remote(num_cpus=1)(_bucket_duplicates)
    dropped: list[int] = []
    refs = [reducer.remote(*refs) for refs in per_bucket]
    for i, ref in enumerate(refs):
        dropped.extend(get(ref))
        show.update(phase, len(partitions) + i + 1)
    drops: dict[int, set[int]] = {}
    for doc in dropped:
        drops.setdefault(doc >> DOC_INDEX_BITS, set()).add(doc)
    storage.write_json(cache_url, {str(k): sorted(v) for k, v in sorted(drops.items())}, job.storage_options)
    return {k: frozenset(v) for k, v in drops.items()}
