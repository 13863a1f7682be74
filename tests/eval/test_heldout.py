"""The held-out task on real token shards, scored in slices, against the same numbers computed in one go."""

import math

import numpy as np
import pytest
import torch

from data_shards.errors import DataError
from data_shards.loader import eval_windows, shard_token_counts
from data_shards.manifest import Manifest, ShardEntry, SourceStats, write_manifest
from data_shards.shard_format import ShardWriter
from data_shards.tokenizer import Tokenizer
from llm.config import ModelConfig
from cluster.evals.likelihood import window_nll
from llm.model import Transformer
from cluster.evals.tasks.base import ModelShape, TaskInputs
from cluster.evals.tasks.heldout import HeldOutEntry, HeldOutTask, unigram_log_probs
from ops.storage import Location


def task(data_url, max_windows=None, batch_size=4) -> HeldOutTask:
    inputs = TaskInputs(data=Location(data_url), tokenizer=Tokenizer.load(data_url), batch_size=batch_size)
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


def write_tokens(data_url, split: str, tokens: list[int], tokenizer: Tokenizer) -> None:
    """One shard holding ``tokens`` as a single document, and its manifest."""
    (data_url / split).mkdir(parents=True)
    writer = ShardWriter(str(data_url / split / "shard-00000.arrow"), "default", "uint16", 4096)
    writer.add(np.asarray(tokens, dtype=np.uint16), 0)
    w = writer.close()
    write_manifest(
        str(data_url),
        Manifest(
            split=split,
            config_hash="hand",
            tokenizer_sha256=tokenizer.sha256,
            vocab_size=tokenizer.vocab_size,
            bos_id=tokenizer.bos_id,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            dtype="uint16",
            shards=[ShardEntry(path="shard-00000.arrow", bytes=w.bytes, sha256=w.sha256, docs=1, tokens=w.tokens)],
            total_docs=1,
            total_tokens=w.tokens,
            sources={"default": SourceStats(docs=1, tokens=w.tokens)},
        ),
    )


def test_a_hand_computed_case_of_loss_perplexity_bits_per_byte_and_the_unigram_baseline(eval_data, tmp_path):
    """Byte tokens ("a", "b", "c": one byte each), the end-of-sequence token (no bytes), a model whose
    logits are all zero (uniform over the 512 tokens) and seq_len 4, worked out by hand:

    val  a b a c e | b a a b e | a      two windows of 5; targets b a c e  a a b e
                                        (a×3, b×2, c×1, e×2: 8 tokens, 6 bytes)
    train a a a b e                     add-one counts a 4, b 2, e 2, others 1, over 5 + 512 = 517
    loss = ln 512, perplexity = 512, bits per byte = 8 · log2(512) / 6 = 12
    unigram nll = −(3 ln 4/517 + 2 ln 2/517 + ln 1/517 + 2 ln 2/517) = 8 ln 517 − 10 ln 2
    """
    import sentencepiece as spm

    tokenizer = Tokenizer.load(eval_data)
    tokenizer.save(str(tmp_path))
    pieces = spm.SentencePieceProcessor(model_proto=tokenizer.model_bytes)
    a, b, c = (pieces.piece_to_id(f"<0x{ord(ch):02X}>") for ch in "abc")
    e = tokenizer.eos_id
    assert len({a, b, c, e}) == 4 and all(pieces.is_byte(t) for t in (a, b, c))
    write_tokens(tmp_path, "val", [a, b, a, c, e, b, a, a, b, e, a], tokenizer)
    write_tokens(tmp_path, "train", [a, a, a, b, e], tokenizer)
    uniform = Transformer(ModelConfig(dim=32, layers=2, heads=4, seq_len=4, multiple_of=16), 512, 5).eval()
    with torch.no_grad():
        uniform.head.proj.weight.zero_()

    _, values, _ = score(task(str(tmp_path)), uniform, slice_size=1)

    assert (values["examples"], values["tokens"], values["bytes"]) == (2, 8, 6)
    assert values["loss"] == pytest.approx(math.log(512), rel=1e-6)
    assert values["perplexity"] == pytest.approx(512, rel=1e-6)
    assert values["bits_per_byte"] == pytest.approx(12, rel=1e-6)
    unigram_nll = 8 * math.log(517) - 10 * math.log(2)
    assert values["unigram_loss"] == pytest.approx(unigram_nll / 8, rel=1e-12)
    assert values["unigram_perplexity"] == pytest.approx(517 / 2**1.25, rel=1e-12)
    assert values["unigram_bits_per_byte"] == pytest.approx(unigram_nll / math.log(2) / 6, rel=1e-12)


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
