"""Block shuffle as pure functions: each span of the order reads a bounded set of shards."""

import numpy as np
import pytest

from data_shards import sample_order as so
from data_shards.shuffles import SourceLayout, shuffle_for
from data_shards.shuffles import block as blocks

SEQ = 64


def layout(shards=40, docs_per_shard=30, seed=0) -> SourceLayout:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 300, size=shards * docs_per_shard).astype(np.int64)
    return SourceLayout(lengths, np.repeat(np.arange(shards, dtype=np.int32), docs_per_shard), shards)


def shards_of_samples(lay: SourceLayout, epoch_order, samples: np.ndarray) -> set[int]:
    _, _, docs, _, _ = so.batch_pieces(epoch_order.order, epoch_order.starts, epoch_order.windows(samples), SEQ)
    return set(lay.doc_shard[docs].tolist())


def open_epoch(shuffle, lay, seed=3, epoch=0):
    return shuffle.open(shuffle.build(lay, seed, "web", epoch, SEQ), seed, "web", epoch)


@pytest.mark.parametrize("block_shards", [1, 4, 7])
def test_each_block_of_samples_reads_its_own_shards_plus_the_start_of_the_next(block_shards):
    lay = layout()
    shuffle = shuffle_for("block", block_shards)
    ep = open_epoch(shuffle, lay)
    shard_block = blocks.shard_blocks(lay.shards, block_shards, 3, "web", 0)
    for k in range(len(ep.bounds) - 1):
        samples = np.arange(ep.bounds[k], ep.bounds[k + 1])
        if not len(samples):
            continue
        own = set(np.flatnonzero(shard_block == k).tolist())
        nxt = set(np.flatnonzero(shard_block == k + 1).tolist())
        inside = samples[ep.windows(samples) != ep.bounds[k + 1] - 1]  # all but the window that crosses into k+1
        assert shards_of_samples(lay, ep, inside) <= own
        assert shards_of_samples(lay, ep, samples) <= own | nxt
        assert len(own) <= block_shards


def test_any_span_of_the_order_reads_at_most_two_blocks_and_the_start_of_a_third():
    lay = layout()
    ep = open_epoch(shuffle_for("block", 4), lay)
    shard_block = blocks.shard_blocks(lay.shards, 4, 3, "web", 0)
    stream_block = shard_block[lay.doc_shard[ep.order]]
    span = int(np.diff(ep.bounds).min())
    total = int(ep.bounds[-1])
    for start in range(0, total - span, span // 3):
        k = int(np.searchsorted(ep.bounds, start, side="right") - 1)
        two_blocks = set(np.flatnonzero((shard_block == k) | (shard_block == k + 1)).tolist())
        head = ep.order[(stream_block == k + 2) & (ep.starts[:-1] <= ep.starts[np.argmax(stream_block == k + 2)] + SEQ)]
        assert shards_of_samples(lay, ep, np.arange(start, start + span)) <= two_blocks | set(lay.doc_shard[head].tolist())
    glob = open_epoch(shuffle_for("global", 4), lay)
    assert len(shards_of_samples(lay, glob, np.arange(0, span))) > 3 * 4  # what block mode avoids


def test_blocks_group_a_fresh_random_set_of_shards_each_epoch():
    a = blocks.shard_blocks(40, 4, seed=3, source="web", epoch=0)
    b = blocks.shard_blocks(40, 4, seed=3, source="web", epoch=1)
    assert np.bincount(a).tolist() == [4] * 10
    assert a.tolist() != b.tolist()
    assert a.tolist() == blocks.shard_blocks(40, 4, seed=3, source="web", epoch=0).tolist()
    assert np.bincount(blocks.shard_blocks(10, 4, 0, "web", 0)).tolist() == [4, 4, 2]


def test_documents_are_shuffled_within_their_block_and_blocks_follow_each_other():
    lay = layout()
    order, ordered_blocks = blocks.block_doc_order(lay, 4, 3, "web", 0)
    assert sorted(order.tolist()) == list(range(len(lay.doc_lengths)))
    assert np.all(np.diff(ordered_blocks) >= 0)
    first_block = order[ordered_blocks == 0]
    assert first_block.tolist() != sorted(first_block.tolist())  # not in file order


def test_window_order_is_a_permutation_shuffled_inside_each_block():
    lay = layout()
    ep = open_epoch(shuffle_for("block", 4), lay)
    total = so.samples_per_epoch(int(lay.doc_lengths.sum()), SEQ)
    assert ep.bounds[0] == 0 and ep.bounds[-1] == total
    windows = ep.windows(np.arange(total))
    assert sorted(windows.tolist()) == list(range(total))
    first = windows[ep.bounds[0] : ep.bounds[1]]
    assert first.tolist() != sorted(first.tolist())
    assert set(first.tolist()) == set(range(ep.bounds[0], ep.bounds[1]))


def test_windows_of_any_sample_subset_agree_with_the_whole_epoch():
    lay = layout()
    ep = open_epoch(shuffle_for("block", 4), lay)
    whole = ep.windows(np.arange(int(ep.bounds[-1])))
    picks = np.random.default_rng(0).integers(0, int(ep.bounds[-1]), size=500)
    fresh = open_epoch(shuffle_for("block", 4), lay)  # nothing cached yet, out-of-order requests
    assert fresh.windows(picks).tolist() == whole[picks].tolist()


def test_the_order_depends_on_seed_epoch_and_block_size():
    lay = layout()
    base = open_epoch(shuffle_for("block", 4), lay).windows(np.arange(300))
    assert base.tolist() == open_epoch(shuffle_for("block", 4), lay).windows(np.arange(300)).tolist()
    assert base.tolist() != open_epoch(shuffle_for("block", 4), lay, seed=4).windows(np.arange(300)).tolist()
    assert base.tolist() != open_epoch(shuffle_for("block", 4), lay, epoch=1).windows(np.arange(300)).tolist()
    assert base.tolist() != open_epoch(shuffle_for("block", 5), lay).windows(np.arange(300)).tolist()


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="data.shuffle='random'"):
        shuffle_for("random", 4)
