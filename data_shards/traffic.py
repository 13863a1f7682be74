"""Object-store traffic of a training run, as pure arithmetic: GET requests per second on the
data's prefix and bytes per node per hour, for N nodes x G GPUs at a given tokens/s per GPU.

Every shard of a split lives under one prefix (``DATA_URL/train/``), and one S3 prefix
serves about :data:`PREFIX_GETS_PER_S` GET requests per second.

* ``block``: each global batch draws from the current block of shards, and every node reads
  a slice of every global batch, so every node downloads every block: a node fetches the data
  at the rate the whole cluster consumes it, one ranged GET per ``DOWNLOAD_PART_BYTES``.
* ``global``: each window lies anywhere in the corpus.  When the corpus does not fit on every
  node, even the cheapest way to stream it (a ranged GET for each piece of each window, the
  bytes of the window only) costs a GET per document piece, and a window of ``seq_len + 1``
  tokens crosses ``seq_len / doc_tokens`` document boundaries on average.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from data_shards.shard_cache import DOWNLOAD_PART_BYTES

PREFIX_GETS_PER_S = 5500
# Mean document length assumed when the data is not at hand (web text and code run 500-2,000 tokens).
ASSUMED_DOC_TOKENS = 1000
HOUR_S = 3600


class TrafficPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shuffle: Literal["global", "block"]
    nodes: int
    gpus_per_node: int
    tokens_per_s_per_gpu: float
    gets_per_s: float  # on the data's prefix, all nodes together
    bytes_per_node_per_hour: float
    # Bytes of shards a node holds at once.  None for global: range reads hold nothing, and
    # fetching whole shards instead would need the whole corpus on every node.
    node_cache_bytes: float | None
    within_prefix_limit: bool


def traffic_plan(
    nodes: int,
    gpus_per_node: int,
    tokens_per_s_per_gpu: float,
    seq_len: int,
    token_bytes: int,
    shard_bytes: int,
    shuffle: Literal["global", "block"],
    block_shards: int,
    doc_tokens: float = ASSUMED_DOC_TOKENS,
    get_bytes: int = DOWNLOAD_PART_BYTES,
) -> TrafficPlan:
    if nodes < 1 or gpus_per_node < 1 or tokens_per_s_per_gpu <= 0 or shard_bytes <= 0 or doc_tokens <= 0:
        raise ValueError("nodes, gpus per node, tokens/s per GPU, shard size and document length must be positive")
    cluster_tokens_per_s = nodes * gpus_per_node * tokens_per_s_per_gpu
    windows_per_s = cluster_tokens_per_s / seq_len
    window_bytes = (seq_len + 1) * token_bytes
    if shuffle == "block":
        node_bytes_per_s = windows_per_s * window_bytes  # every node fetches every block the cluster reads
        gets_per_s = nodes * node_bytes_per_s / shard_bytes * math.ceil(shard_bytes / get_bytes)
        cache: float | None = (2 * block_shards + 1) * shard_bytes
    else:
        pieces_per_window = 1 + seq_len / doc_tokens
        gets_per_s = windows_per_s * pieces_per_window
        node_bytes_per_s = windows_per_s / nodes * window_bytes
        cache = None
    return TrafficPlan(
        shuffle=shuffle,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        tokens_per_s_per_gpu=tokens_per_s_per_gpu,
        gets_per_s=gets_per_s,
        bytes_per_node_per_hour=node_bytes_per_s * HOUR_S,
        node_cache_bytes=cache,
        within_prefix_limit=gets_per_s <= PREFIX_GETS_PER_S,
    )
