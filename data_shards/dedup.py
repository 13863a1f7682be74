"""Exact document de-duplication across the whole corpus, as a Ray shuffle on content hashes.

Map tasks hash every cleaned document of a partition and split the (hash, doc_id)
pairs into buckets by hash; one reduce task per bucket sees every copy of a text and
keeps the smallest doc_id, so the result is independent of scheduling.  The shuffle
itself is :mod:`data_shards.drop_shuffle`.
"""

from __future__ import annotations

import itertools

from data_shards.drop_shuffle import shuffle_drops
from data_shards.inputs import Partition
from data_shards.partition_work import TokenizeJob, partition_hashes


def hash_buckets(partition: Partition, job: TokenizeJob, buckets: int) -> list[list[tuple[bytes, int]]]:
    """Map step: the partition's (content hash, doc_id) pairs, split into ``buckets`` by hash."""
    out: list[list[tuple[bytes, int]]] = [[] for _ in range(buckets)]
    for digest, doc in partition_hashes(partition, job.filters, job.on_error):
        out[int.from_bytes(digest[:4], "little") % buckets].append((digest, doc))
    return out


def bucket_duplicates(*parts: list[tuple[bytes, int]]) -> list[int]:
    """Reduce step: every doc_id of the bucket but the smallest of each content hash."""
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
    return shuffle_drops(
        partitions,
        job,
        "dedup-drops.json",
        "de-duplicating (hash shuffle)",
        hash_buckets,
        bucket_duplicates,
        itertools.chain.from_iterable,
        show,
    )
