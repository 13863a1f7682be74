"""The held-out task on real token shards, scored in slices, against the same numbers computed in one go."""
import math

import numpy as np
import pytest
import torch

from data_shards.errors import DataError
from data_shards.loader import eval_windows, shard_token_counts
from data_shards.tokenizer import Tokenizer
from llm.config import ModelConfig
from llm.evaluate import window_nll
from llm.model import Transformer
from llm.tasks.base import ModelShape, TaskInputs
from llm.tasks.heldout import HeldOutEntry, HeldOutTask, unigram_log_probs


def task(data_url, max_windows=None, batch_size=4) -> HeldOutTask:
    inputs = TaskInputs(data_url=data_url, storage_options={}, tokenizer=Tokenizer.load(data_url), batch_size=batch_size)
    return HeldOutTask.build(HeldOutEntry(max_windows_per_shard=max_windows), inputs)


def model(seq_len=32) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(dim=32, layers=2, heads=4, seq_len=seq_len, multiple_of=16), 512, 5).eval()


def score(t: HeldOutTask, m: Transformer, slice_size: int):
    shape = ModelShape(seq_len=m.cfg.seq_len, vocab_size=512)
    total = t.new_tally()
    for piece in t.slices(shape, slice_size):
        total = total + t.run(piece, m if piece.uses_model else None)
    return total, t.compute(total).values(), t.totals(shape)


def test_sliced_scores_equal_the_whole_split_scored_at_once(eval_data):
    m = model()
    total, values, totals = score(task(eval_data), m, slice_size=7)
    windows = eval_windows(eval_data, "val", 0, 32)
    nll, tokens = window_nll(m, windows, batch_size=len(windows))
    assert (total.examples, total.tokens) == (len(windows), tokens) == (totals.examples, totals.tokens)
    assert values["loss"] == pytest.approx(nll / tokens, rel=1e-6)
    assert values["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-6)
    piece_bytes = Tokenizer.load(eval_data).piece_bytes()
    n_bytes = int(piece_bytes[windows[:, 1:]].sum())
    assert values["bytes"] == n_bytes
    assert values["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-6)
    unigram = unigram_log_probs(shard_token_counts(eval_data, "train", 0, 512))
    assert values["unigram_loss"] == pytest.approx(-unigram[windows[:, 1:]].sum() / tokens, rel=1e-9)
    assert values["val_shards"] == 1


def test_slice_size_changes_nothing_but_float_summation_order(eval_data):
    m = model()
    _, small, _ = score(task(eval_data, max_windows=120, batch_size=2), m, slice_size=3)
    _, large, _ = score(task(eval_data, max_windows=120, batch_size=8), m, slice_size=1000)
    assert small["tokens"] == large["tokens"] and small["bytes"] == large["bytes"]
    assert small["loss"] == pytest.approx(large["loss"], rel=1e-6)
    assert small["unigram_loss"] == pytest.approx(large["unigram_loss"], rel=1e-12)


def test_windows_per_shard_cap_and_counting_the_train_split_once_per_job(eval_data):
    t = task(eval_data, max_windows=5)
    pieces = t.slices(ModelShape(seq_len=32, vocab_size=512), 2)
    val = [p for p in pieces if p.source == "val"]
    assert [(p.start, p.stop) for p in val] == [(0, 2), (2, 4), (4, 5)]
    assert [p.uses_model for p in pieces if p.source == "train"] == [False]
    _, values, _ = score(t, model(), 2)
    assert values["examples"] == 5 and values["tokens"] == 5 * 32


def test_a_model_of_another_vocabulary_or_too_long_a_context_is_refused(eval_data):
    t = task(eval_data)
    with pytest.raises(DataError, match="vocabulary has 512 tokens, the checkpoint's model 1000"):
        t.slices(ModelShape(seq_len=32, vocab_size=1000), 8)
    with pytest.raises(DataError, match="no complete window"):
        t.slices(ModelShape(seq_len=10**7, vocab_size=512), 8)


def test_a_task_sent_to_a_worker_leaves_its_shard_cache_behind(eval_data):
    import pickle

    t = task(eval_data)
    t._windows(0, 32)
    assert pickle.loads(pickle.dumps(t))._shard_windows is None
    assert np.array_equal(t._windows(0, 32), eval_windows(eval_data, "val", 0, 32))
