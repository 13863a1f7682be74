"""The object-store traffic plan as pure arithmetic."""

import pytest

from data_shards.traffic import PREFIX_GETS_PER_S, traffic_plan


def plan(**kw):
    base = dict(
        nodes=2,
        gpus_per_node=1,
        tokens_per_s_per_gpu=1000,
        seq_len=1000,
        token_bytes=2,
        shard_bytes=4004,
        shuffle="block",
        block_shards=3,
        doc_tokens=500,
        get_bytes=1001,
    )
    return traffic_plan(**{**base, **kw})


def test_block_mode_every_node_fetches_what_the_whole_cluster_reads_in_ranged_gets():
    t = plan()
    # 2,000 tokens/s in 2 windows/s of 1,001 tokens of 2 bytes: 4,004 B/s, one 4,004-byte shard a second per node
    assert t.bytes_per_node_per_hour == pytest.approx(4004 * 3600)
    assert t.gets_per_s == pytest.approx(2 * 1 * 4)  # two nodes, one shard each, four 1,001-byte GETs a shard
    assert t.node_cache_bytes == 7 * 4004  # two blocks of three shards and one more
    assert plan(nodes=4).gets_per_s == pytest.approx(4 * plan(nodes=4).bytes_per_node_per_hour / 3600 / 4004 * 4)


def test_global_mode_pays_a_get_per_document_piece_of_every_window():
    t = plan(shuffle="global")
    assert t.gets_per_s == pytest.approx(2 * (1 + 1000 / 500))
    assert t.bytes_per_node_per_hour == pytest.approx(4004 / 2 * 3600)  # each node only its own windows
    assert t.node_cache_bytes is None


def test_nonsense_inputs_are_refused():
    with pytest.raises(ValueError, match="must be positive"):
        plan(nodes=0)


def test_at_1024_gpus_block_mode_stays_under_one_prefix_and_global_would_not():
    """128 nodes x 8 H100s at 40% MFU on the 1b config (about 56k tokens/s per GPU), 256 MiB shards of uint16."""
    common = dict(
        nodes=128,
        gpus_per_node=8,
        tokens_per_s_per_gpu=56_000,
        seq_len=2048,
        token_bytes=2,
        shard_bytes=256 << 20,
        block_shards=8,
        doc_tokens=1000,
        get_bytes=16 << 20,
    )
    block = traffic_plan(shuffle="block", **common)
    global_ = traffic_plan(shuffle="global", **common)
    assert block.gets_per_s < PREFIX_GETS_PER_S and block.within_prefix_limit, block
    assert global_.gets_per_s > 10 * PREFIX_GETS_PER_S and not global_.within_prefix_limit, global_
