"""The Ray shuffle that finds documents to drop across the whole corpus (exact and near de-duplication).

Map tasks turn each partition into records split into buckets by a key; one reduce task per bucket
sees every record of its keys, wherever they came from; the driver turns the reduce results into
the doc_ids to drop.  No process holds the whole corpus's records.  The drops are cached next to
the completion markers, so a restarted prepare does not shuffle again.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import ray

from data_shards.inputs import Partition
from data_shards.partition_work import DOC_INDEX_BITS, TokenizeJob
from data_shards.ray_results import get
from ops import storage

MAX_BUCKETS = 64

MapTask = Callable[..., list]  # (partition, job, buckets, *map_args) -> one record set per bucket
ReduceTask = Callable[..., Any]  # (*one bucket's record sets) -> that bucket's result


def _map_returns(map_task: MapTask, partition: Partition, job: TokenizeJob, buckets: int, *map_args) -> Any:
    """``map_task``'s buckets as Ray's separate returns (one return is the value itself)."""
    out = map_task(partition, job, buckets, *map_args)
    return tuple(out) if buckets > 1 else out[0]


def shuffle_drops(
    partitions: list[Partition],
    job: TokenizeJob,
    cache_name: str,
    title: str,
    map_task: MapTask,
    reduce_task: ReduceTask,
    drops_of: Callable[[list], Iterable[int]],
    show,
    *map_args,
) -> dict[int, frozenset]:
    """doc_ids to drop, by partition index: ``map_task`` over every partition, ``reduce_task`` over every
    bucket, ``drops_of`` over the reduce results (in bucket order); cached as ``cache_name``."""
    cache_url = job.output.join("_work", job.config_hash, cache_name)
    if storage.exists(cache_url):
        cached = storage.read_json(cache_url)
        return {int(k): frozenset(v) for k, v in cached.items()}
    buckets = max(1, min(MAX_BUCKETS, len(partitions)))
    phase = show.phase(title, len(partitions) + buckets)
    mapper = ray.remote(num_cpus=1, num_returns=buckets)(_map_returns)
    job_ref = ray.put(job)
    outputs = [mapper.remote(map_task, p, job_ref, buckets, *map_args) for p in partitions]
    per_bucket = [[out[b] if buckets > 1 else out for out in outputs] for b in range(buckets)]
    reducer = ray.remote(num_cpus=1)(reduce_task)
    results = []
    for i, ref in enumerate([reducer.remote(*refs) for refs in per_bucket]):
        results.append(get(ref))
        show.update(phase, len(partitions) + i + 1)
    drops: dict[int, set[int]] = {}
    for doc in drops_of(results):
        drops.setdefault(doc >> DOC_INDEX_BITS, set()).add(doc)
    storage.write_json(cache_url, {str(k): sorted(v) for k, v in sorted(drops.items())})
    return {k: frozenset(v) for k, v in drops.items()}
