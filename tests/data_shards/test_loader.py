"""GlobalBatchLoader and the whole-shard readers against real shard files."""

import os

import numpy as np
import pytest

from data_shards import sample_order as so
from data_shards.config import ReadConfig
from data_shards.errors import DataError
from data_shards.loader import GlobalBatchLoader, eval_windows, shard_token_counts
from data_shards.shuffles import SourceLayout
from data_shards.shuffles import block as blocks
from support.reference_windows import window_tokens

SEQ = 16
BLOCK_SHARDS = 2
SHARD_CUTS = (20, 45)  # the dataset's three shards hold documents [:20], [20:45], [45:]


@pytest.fixture(params=["global", "block"])
def mode(request):
    """Every order and resume test runs for both shuffle modes."""
    return request.param


def reading(mode):
    return ReadConfig(shuffle=mode, block_shards=BLOCK_SHARDS)


@pytest.fixture
def dataset(tmp_path, kit):
    docs = kit.random_docs(11, 60, 500)
    kit.write_split(str(tmp_path / "data"), "train", {"default": [docs[:20], docs[20:45], docs[45:]]})
    return str(tmp_path / "data"), docs


def doc_shards(count, cuts=SHARD_CUTS):
    return np.searchsorted(np.asarray(cuts), np.arange(count), side="right").astype(np.int32)


def reference_order(docs, seed, seq_len, epoch, mode, cuts=SHARD_CUTS, source="default"):
    """(document order, window of each sample) of one epoch, from the pure functions alone."""
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    per_epoch = so.samples_per_epoch(int(lengths.sum()), seq_len)
    if mode == "global":
        return so.epoch_doc_order(len(docs), seed, source, epoch), so.epoch_sample_perm(per_epoch, seed, source, epoch)
    layout = SourceLayout(lengths, doc_shards(len(docs), cuts), len(cuts) + 1)
    order, ordered_blocks = blocks.block_doc_order(layout, BLOCK_SHARDS, seed, source, epoch)
    bounds = blocks.window_bounds(so.doc_starts(lengths, order), ordered_blocks, -(-layout.shards // BLOCK_SHARDS), seq_len)
    windows = np.concatenate(
        [
            bounds[k] + blocks.block_window_perm(int(bounds[k + 1] - bounds[k]), seed, source, epoch, k)
            for k in range(len(bounds) - 1)
        ]
    )
    return order, windows


def reference_sample(docs, seed, seq_len, n, source="default", mode="global", cuts=SHARD_CUTS):
    per_epoch = so.samples_per_epoch(sum(len(d) for d in docs), seq_len)
    epoch, j = divmod(n, per_epoch)
    order, windows = reference_order(docs, seed, seq_len, epoch, mode, cuts, source)
    return window_tokens(docs, order, int(windows[j]), seq_len)


def read_all(loader, batches):
    return np.concatenate([loader.next_batch() for _ in range(batches)])


def test_samples_match_the_pure_order_across_epochs(dataset, mode):
    url, docs = dataset
    loader = GlobalBatchLoader(url, "train", seed=5, seq_len=SEQ, global_batch=8, read=reading(mode))
    per_epoch = so.samples_per_epoch(sum(len(d) for d in docs), SEQ)
    batches = (2 * per_epoch) // 8 + 2  # well into the third epoch
    got = read_all(loader, batches)
    assert got.dtype == np.dtype(loader.manifest.dtype) and got.shape == (batches * 8, SEQ + 1)
    for n in range(len(got)):
        assert got[n].tolist() == reference_sample(docs, 5, SEQ, n, mode=mode).tolist()
    assert loader.consumed_samples == batches * 8


def test_an_epoch_visits_every_window_once(dataset, mode):
    url, docs = dataset
    stream_windows = set()
    order, _ = reference_order(docs, 5, SEQ, 0, mode)
    per_epoch = so.samples_per_epoch(sum(len(d) for d in docs), SEQ)
    for w in range(per_epoch):
        stream_windows.add(tuple(window_tokens(docs, order, w, SEQ).tolist()))
    loader = GlobalBatchLoader(url, "train", seed=5, seq_len=SEQ, global_batch=1, read=reading(mode))
    seen = {tuple(loader.next_batch()[0].tolist()) for _ in range(per_epoch)}
    assert seen == stream_windows


def test_global_sequence_is_independent_of_data_parallel_world(dataset, mode):
    url, _ = dataset
    one = read_all(GlobalBatchLoader(url, "train", seed=3, seq_len=SEQ, global_batch=8, read=reading(mode)), 5)
    for world in (2, 4):
        ranks = [
            GlobalBatchLoader(url, "train", seed=3, seq_len=SEQ, global_batch=8, dp_rank=r, dp_world=world, read=reading(mode))
            for r in range(world)
        ]
        batches = [np.concatenate([rk.next_batch() for rk in ranks]) for _ in range(5)]
        assert np.array_equal(np.concatenate(batches), one)
        assert all(rk.consumed_samples == 40 for rk in ranks)


def test_two_ranks_then_one_rank_equals_one_rank_throughout(dataset, mode):
    url, _ = dataset
    reference = read_all(GlobalBatchLoader(url, "train", seed=9, seq_len=SEQ, global_batch=4, read=reading(mode)), 10)
    ranks = [
        GlobalBatchLoader(url, "train", seed=9, seq_len=SEQ, global_batch=4, dp_rank=r, dp_world=2, read=reading(mode))
        for r in range(2)
    ]
    first = [np.concatenate([rk.next_batch() for rk in ranks]) for _ in range(4)]
    state = ranks[0].state_dict()
    assert state == ranks[1].state_dict()
    resumed = GlobalBatchLoader(url, "train", seed=9, seq_len=SEQ, global_batch=4, read=reading(mode))
    resumed.load_state_dict(state)
    rest = [resumed.next_batch() for _ in range(6)]
    assert np.array_equal(np.concatenate(first + rest), reference)


def test_consumed_samples_argument_starts_mid_sequence(dataset, mode):
    url, _ = dataset
    reference = read_all(GlobalBatchLoader(url, "train", seed=9, seq_len=SEQ, global_batch=4, read=reading(mode)), 3)
    late = GlobalBatchLoader(url, "train", seed=9, seq_len=SEQ, global_batch=4, consumed_samples=8, read=reading(mode))
    assert np.array_equal(late.next_batch(), reference[8:12])


def test_resume_with_changed_data_seed_or_seq_len_is_a_data_error(dataset, tmp_path, kit):
    url, docs = dataset
    state = GlobalBatchLoader(url, "train", seed=1, seq_len=SEQ, global_batch=4).state_dict()
    with pytest.raises(DataError, match="seed changed"):
        GlobalBatchLoader(url, "train", seed=2, seq_len=SEQ, global_batch=4).load_state_dict(state)
    with pytest.raises(DataError, match="seq_len changed"):
        GlobalBatchLoader(url, "train", seed=1, seq_len=SEQ + 1, global_batch=4).load_state_dict(state)
    other = str(tmp_path / "other")
    kit.write_split(other, "train", {"default": [docs[:-1]]})
    with pytest.raises(DataError, match="prepared data changed"):
        GlobalBatchLoader(other, "train", seed=1, seq_len=SEQ, global_batch=4).load_state_dict(state)


def test_same_inputs_give_identical_batches_and_a_new_seed_does_not(dataset, mode):
    url, _ = dataset
    a = read_all(GlobalBatchLoader(url, "train", seed=4, seq_len=SEQ, global_batch=4, read=reading(mode)), 3)
    b = read_all(GlobalBatchLoader(url, "train", seed=4, seq_len=SEQ, global_batch=4, read=reading(mode)), 3)  # cached index
    c = read_all(GlobalBatchLoader(url, "train", seed=5, seq_len=SEQ, global_batch=4, read=reading(mode)), 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    kept = {"global": "-perm.npy", "block": "-bounds.npy"}[mode]
    assert any(n.endswith(kept) for n in os.listdir(os.path.join(os.environ["KILN_CACHE_DIR"], "sample-index")))


def test_blended_sources_follow_weights_and_count_per_source(tmp_path, kit, mode):
    web = kit.random_docs(1, 40, 500)
    code = kit.random_docs(2, 40, 500)
    url = str(tmp_path / "data")
    kit.write_split(
        url, "train", {"web": [web[:15], web[15:]], "code": [code[:25], code[25:]]}, weights={"web": 3.0, "code": 1.0}
    )
    loader = GlobalBatchLoader(url, "train", seed=0, seq_len=SEQ, global_batch=8, read=reading(mode))
    batch = np.concatenate([loader.next_batch() for _ in range(5)])
    state = loader.state_dict()
    assert state["source_consumed"] == {"code": 10, "web": 30}
    assert state["weights"] == {"code": 1.0, "web": 3.0}
    web_samples = {tuple(reference_sample(web, 0, SEQ, j, "web", mode, (15,)).tolist()) for j in range(30)}
    code_samples = {tuple(reference_sample(code, 0, SEQ, j, "code", mode, (25,)).tolist()) for j in range(10)}
    assert {tuple(r.tolist()) for r in batch} == web_samples | code_samples
    resumed = GlobalBatchLoader(url, "train", seed=0, seq_len=SEQ, global_batch=8, dp_rank=1, dp_world=2, read=reading(mode))
    resumed.load_state_dict(state)
    assert np.array_equal(resumed.next_batch(), loader.next_batch()[4:])
    with pytest.raises(DataError, match="blend weights changed"):
        GlobalBatchLoader(
            url, "train", seed=0, seq_len=SEQ, global_batch=8, blend={"web": 1.0, "code": 1.0}, read=reading(mode)
        ).load_state_dict(state)


def flip_a_byte_of_shard_1(url: str) -> None:
    path = os.path.join(url, "train", "shard-00001.arrow")
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(path, "wb").write(bytes(raw))


def test_flipped_byte_in_a_shard_is_a_data_error_naming_it(dataset):
    url, _ = dataset
    flip_a_byte_of_shard_1(url)
    with pytest.raises(DataError, match="shard-00001.arrow is damaged"):
        GlobalBatchLoader(url, "train", seed=0, seq_len=SEQ, global_batch=4)


def test_verification_is_remembered_until_the_file_changes(dataset):
    url, _ = dataset
    GlobalBatchLoader(url, "train", seed=0, seq_len=SEQ, global_batch=4)
    verified = os.path.join(os.environ["KILN_CACHE_DIR"], "verified")
    assert len(os.listdir(verified)) == 3
    path = os.path.join(url, "train", "shard-00000.arrow")
    raw = bytearray(open(path, "rb").read())
    raw[-40] ^= 0x01
    open(path, "wb").write(bytes(raw))
    os.utime(path, ns=(1, 1))
    with pytest.raises(DataError, match="shard-00000.arrow"):
        GlobalBatchLoader(url, "train", seed=0, seq_len=SEQ, global_batch=4)


def test_a_shard_checked_once_is_not_hashed_again_by_later_readers(dataset, monkeypatch):
    from data_shards import shard_cache

    url, _ = dataset
    hashed = []

    def counted_sha256(path):
        hashed.append(os.path.basename(path))
        return real_sha256(path)

    real_sha256 = shard_cache.file_sha256
    monkeypatch.setattr(shard_cache, "file_sha256", counted_sha256)
    GlobalBatchLoader(url, "train", seed=0, seq_len=SEQ, global_batch=4)
    assert sorted(hashed) == ["shard-00000.arrow", "shard-00001.arrow", "shard-00002.arrow"]
    for seed in (0, 1):  # new readers, in this process or another one of the node: the memo answers
        read_all(GlobalBatchLoader(url, "train", seed=seed, seq_len=SEQ, global_batch=4), 3)
    assert len(hashed) == 3


def test_too_little_data_for_one_window_is_a_data_error(tmp_path, kit):
    url = str(tmp_path / "tiny")
    kit.write_split(url, "train", {"default": [[np.array([5, 6, 2])]]})
    with pytest.raises(DataError, match="fewer than seq_len"):
        GlobalBatchLoader(url, "train", seed=0, seq_len=SEQ, global_batch=1)


def test_eval_windows_cut_the_shard_in_file_order(dataset):
    url, docs = dataset
    stream = np.concatenate(docs[20:45])
    windows = eval_windows(url, "train", 1, SEQ)
    n = len(stream) // (SEQ + 1)
    assert windows.dtype == np.int64 and windows.shape == (n, SEQ + 1)
    assert windows.ravel().tolist() == stream[: n * (SEQ + 1)].tolist()


def test_shard_token_counts_histogram_the_shard(dataset):
    url, docs = dataset
    counts = shard_token_counts(url, "train", 2, 500)
    assert counts.dtype == np.int64 and counts.shape == (500,)
    assert counts.tolist() == np.bincount(np.concatenate(docs[45:]), minlength=500).tolist()
    with pytest.raises(DataError, match="out of range"):
        shard_token_counts(url, "train", 3, 500)


def test_a_split_without_shards_is_a_data_error(tmp_path, kit):
    url = str(tmp_path / "empty")
    kit.write_split(url, "val", {})
    with pytest.raises(DataError, match="holds no documents"):
        GlobalBatchLoader(url, "val", seed=0, seq_len=SEQ, global_batch=1)


@pytest.fixture
def indexed(tmp_path, kit):
    docs = kit.random_docs(11, 60, 500)
    url = str(tmp_path / "indexed")
    kit.write_split(url, "train", {"default": [docs[:20], docs[20:45], docs[45:]]}, with_index=True)
    return url, docs


def test_index_files_give_the_same_order_as_reading_the_shards(dataset, indexed, mode):
    plain = read_all(GlobalBatchLoader(dataset[0], "train", seed=5, seq_len=SEQ, global_batch=8, read=reading(mode)), 6)
    from_index = GlobalBatchLoader(indexed[0], "train", seed=5, seq_len=SEQ, global_batch=8, read=reading(mode))
    assert np.array_equal(read_all(from_index, 6), plain)


def test_with_index_files_shards_are_fetched_and_verified_only_when_first_read(indexed):
    url, docs = indexed
    flip_a_byte_of_shard_1(url)
    loader = GlobalBatchLoader(url, "train", seed=0, seq_len=SEQ, global_batch=4)  # no shard read yet
    assert not os.path.exists(os.path.join(os.environ["KILN_CACHE_DIR"], "verified"))
    with pytest.raises(DataError, match="shard-00001.arrow is damaged"):
        for _ in range(loader.sources[0].samples_per_epoch // 4 + 1):
            loader.next_batch()


def test_damaged_index_file_is_a_data_error_naming_it(indexed):
    url, _ = indexed
    path = os.path.join(url, "train", "shard-00002.lengths.npy")
    raw = bytearray(open(path, "rb").read())
    raw[-1] ^= 0x01
    open(path, "wb").write(bytes(raw))
    with pytest.raises(DataError, match="shard-00002.lengths.npy is damaged"):
        GlobalBatchLoader(url, "train", seed=0, seq_len=SEQ, global_batch=4)


def test_resuming_with_another_shuffle_is_a_data_error(dataset):
    url, _ = dataset
    state = GlobalBatchLoader(url, "train", seed=1, seq_len=SEQ, global_batch=4, read=reading("block")).state_dict()
    assert state["shuffle"] == f"block-{BLOCK_SHARDS}"
    with pytest.raises(DataError, match="data.shuffle 'block-2' there, 'global' now"):
        GlobalBatchLoader(url, "train", seed=1, seq_len=SEQ, global_batch=4, read=reading("global")).load_state_dict(state)
    with pytest.raises(DataError, match="'block-2' there, 'block-3' now"):
        other = ReadConfig(shuffle="block", block_shards=3)
        GlobalBatchLoader(url, "train", seed=1, seq_len=SEQ, global_batch=4, read=other).load_state_dict(state)


def test_data_on_a_local_filesystem_is_shuffled_globally_unless_asked(dataset):
    url, _ = dataset
    assert GlobalBatchLoader(url, "train", seed=1, seq_len=SEQ, global_batch=4).state_dict()["shuffle"] == "global"
    assert ReadConfig().shuffle_mode(on_object_storage=True) == "block"
