"""The pure order-building functions, tested without any reader or process."""

import numpy as np
import pytest

from data_shards import sample_order as so
from data_shards.errors import DataError
from support.reference_windows import window_pieces, window_tokens


def test_windows_cover_the_shuffled_stream_and_overlap_by_one_token(kit):
    docs = kit.random_docs(0, 30, 500)
    order = so.epoch_doc_order(len(docs), seed=7, source="default", epoch=0)
    stream = np.concatenate([docs[i] for i in order])
    seq_len = 16
    count = so.samples_per_epoch(len(stream), seq_len)
    assert count == (len(stream) - 1) // seq_len
    windows = [window_tokens(docs, order, w, seq_len) for w in range(count)]
    for w, tokens in enumerate(windows):
        assert tokens.tolist() == stream[w * seq_len : w * seq_len + seq_len + 1].tolist()
    for left, right in zip(windows, windows[1:]):
        assert left[-1] == right[0]


def test_orders_depend_on_seed_source_and_epoch_only():
    a = so.epoch_doc_order(100, seed=1, source="web", epoch=0)
    assert a.tolist() == so.epoch_doc_order(100, seed=1, source="web", epoch=0).tolist()
    assert sorted(a.tolist()) == list(range(100))
    assert a.tolist() != so.epoch_doc_order(100, seed=2, source="web", epoch=0).tolist()
    assert a.tolist() != so.epoch_doc_order(100, seed=1, source="code", epoch=0).tolist()
    assert a.tolist() != so.epoch_doc_order(100, seed=1, source="web", epoch=1).tolist()
    p = so.epoch_sample_perm(50, seed=1, source="web", epoch=0)
    assert sorted(p.tolist()) == list(range(50))


def test_rank_slices_concatenate_to_the_global_batch_for_any_world_size():
    for world in (1, 2, 4, 8):
        joined = [n for r in range(world) for n in so.rank_slice(3, 8, r, world)]
        assert joined == list(range(24, 32))


def test_rank_slice_rejects_an_indivisible_global_batch():
    with pytest.raises(DataError, match="not divisible"):
        so.rank_slice(0, 6, 0, 4)


def test_blend_prefixes_follow_the_weights_within_one_sample():
    weights = so.normalized_weights([3.0, 1.0, 0.5])
    src, idx = so.blend_chunk(weights, np.zeros(3, dtype=np.int64), 2000)
    counts = np.zeros(3)
    for n, (d, k) in enumerate(zip(src, idx), start=1):
        assert k == counts[d]  # each source's samples are taken in order
        counts[d] += 1
        assert np.all(np.abs(counts - weights * n) <= 1.0)


def test_blend_chunks_join_into_the_one_shot_sequence():
    weights = so.normalized_weights([0.7, 0.2, 0.1])
    whole_src, whole_idx = so.blend_chunk(weights, np.zeros(3, dtype=np.int64), 1000)
    index = so.BlendIndex([0.7, 0.2, 0.1], chunk=64)
    src, idx = index.lookup(np.arange(1000))
    assert src.tolist() == whole_src.tolist()
    assert idx.tolist() == whole_idx.tolist()
    assert index.consumed(1000).tolist() == np.bincount(whole_src, minlength=3).tolist()
    assert index.consumed(100).tolist() == np.bincount(whole_src[:100], minlength=3).tolist()


@pytest.mark.parametrize("weights", [[0.5, 0.25, 0.25], [1, 1, 1], [0.7, 0.2, 0.1], [0.999, 0.001], [3, 1, 0.5, 2]])
def test_blend_counts_equal_every_prefix_of_the_generated_sequence_ties_included(weights):
    w = so.normalized_weights(weights)
    src, _ = so.blend_chunk(w, np.zeros(len(w), dtype=np.int64), 3000)
    prefix = np.zeros(len(w), dtype=np.int64)
    for n in range(3001):
        if n < 200 or n % 7 == 0:
            assert so.blend_counts(w, n).tolist() == prefix.tolist(), n
        if n < len(src):
            prefix[src[n]] += 1


def test_blend_counts_reach_far_positions_without_generating_the_sequence():
    w = so.normalized_weights([0.7, 0.2, 0.1])
    counts = so.blend_counts(w, 10**12)
    assert counts.sum() == 10**12
    assert np.all(np.abs(counts - w * 10**12) <= 1.0)
    index = so.BlendIndex([0.7, 0.2, 0.1], chunk=64)
    far = 10**12 + 5
    src, idx = index.lookup(np.array([far]))
    assert idx[0] == index.consumed(far)[src[0]]  # the sample at position far is its source's next one


def test_bad_blend_weights_are_a_data_error():
    with pytest.raises(DataError, match="positive"):
        so.normalized_weights([1.0, 0.0])


def test_batch_pieces_equal_window_pieces_for_every_window(kit):
    docs = kit.random_docs(5, 50, 500, max_len=30)
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    order = so.epoch_doc_order(len(docs), seed=2, source="default", epoch=0)
    starts = so.doc_starts(lengths, order)
    seq_len = 24
    windows = so.epoch_sample_perm(so.samples_per_epoch(int(lengths.sum()), seq_len), 2, "default", 0)
    rows, cols, pdocs, begins, takes = so.batch_pieces(order, starts, windows, seq_len)
    for r, w in enumerate(windows):
        mine = [(int(d), int(b), int(t)) for d, b, t in zip(pdocs[rows == r], begins[rows == r], takes[rows == r])]
        assert mine == window_pieces(order, starts, lengths, int(w), seq_len)
        assert cols[rows == r].tolist() == np.concatenate([[0], np.cumsum(takes[rows == r])[:-1]]).tolist()


def test_blend_index_answers_out_of_order_lookups_with_bounded_chunks():
    index = so.BlendIndex([0.5, 0.3, 0.2], chunk=32)
    whole_src, whole_idx = so.blend_chunk(index.weights, np.zeros(3, dtype=np.int64), 640)
    numbers = np.array([600, 3, 599, 31, 32, 64, 0, 450, 639])
    src, idx = index.lookup(numbers)
    assert src.tolist() == whole_src[numbers].tolist() and idx.tolist() == whole_idx[numbers].tolist()
    assert len(index._recent) <= index.KEEP_CHUNKS
    for n in (0, 1, 31, 32, 33, 640):
        assert index.consumed(n).tolist() == np.bincount(whole_src[:n], minlength=3).tolist()
