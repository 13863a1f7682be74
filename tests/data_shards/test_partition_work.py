"""One partition's work, run directly (no Ray): shards, markers, held-out split, tokenizer reuse."""

import json

import pyarrow as pa

from data_shards import partition_work as pw
from data_shards.config import MinLength
from data_shards.inputs import Partition
from data_shards.tokenizer import train_tokenizer

TEXTS = [f"line {i} of the text with some words: alpha beta gamma {i * 7}" for i in range(300)]


def make_job(tmp_path, tok, **overrides):
    base = dict(
        output=str(tmp_path / "out"),
        config_hash="c0ffee0123456789",
        seed=4,
        tokenizer_bytes=tok.model_bytes,
        filters=[MinLength(min_chars=10)],
        on_error="stop",
        val_fraction=0.2,
        shard_bytes=2000,
        batch_bytes=500,
        dtype="uint16",
    )
    base.update(overrides)
    return pw.TokenizeJob(**base)


def test_partition_writes_named_shards_then_its_marker(tmp_path):
    tok = train_tokenizer(TEXTS, vocab_size=320, seed=0, num_threads=1)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS + ["short"]))
    part = Partition(index=3, source="web", split="holdout", text_field="text", files=[str(src)], sizes=[1])
    job = make_job(tmp_path, tok)
    marker = pw.tokenize_partition(part, job)
    assert json.loads((tmp_path / "out" / "_work" / job.config_hash / "part-00003.json").read_text()) == marker
    assert marker["filters"]["min_length"] == {"dropped": 1, "changed": 0}
    names = [e["path"] for e in marker["shards"]["train"]]
    assert names == [f"shard-00003-{k:04d}-c0ffee01.arrow" for k in range(len(names))] and len(names) > 1
    ids = {"train": [], "val": []}
    for split in ids:
        for entry in marker["shards"][split]:
            table = pa.ipc.open_file(pa.OSFile(str(tmp_path / "out" / split / entry["path"]))).read_all()
            assert set(table.column("source").to_pylist()) == {"web"}
            ids[split].extend(table.column("doc_id").to_pylist())
    assert sorted(ids["train"] + ids["val"]) == [pw.doc_id(3, i) for i in range(300)]
    assert all(pw.held_out(4, d, 0.2) for d in ids["val"]) and not any(pw.held_out(4, d, 0.2) for d in ids["train"])
    assert 20 < len(ids["val"]) < 100
    assert not list((tmp_path / "out" / "_work" / "tmp").iterdir())


def test_rerunning_a_partition_rewrites_identical_shards(tmp_path):
    tok = train_tokenizer(TEXTS, vocab_size=320, seed=0, num_threads=1)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    part = Partition(index=0, source="default", split="train", text_field="text", files=[str(src)], sizes=[1])
    first = pw.tokenize_partition(part, make_job(tmp_path, tok))
    second = pw.tokenize_partition(part, make_job(tmp_path, tok))
    assert first == second


def test_tokenizer_is_loaded_once_per_worker_process():
    tok = train_tokenizer(TEXTS, vocab_size=320, seed=0, num_threads=1)
    assert pw._tokenizer(tok.model_bytes) is pw._tokenizer(tok.model_bytes)


def test_tokenizer_sample_is_bounded_and_seeded(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    part = Partition(index=0, source="default", split="train", text_field="text", files=[str(src)], sizes=[1])
    a = pw.sample_partition(part, 2000, seed=1, filters=[], on_error="stop")
    assert a == pw.sample_partition(part, 2000, seed=1, filters=[], on_error="stop")
    assert a != pw.sample_partition(part, 2000, seed=2, filters=[], on_error="stop")
    assert 0 < sum(len(x.encode()) for x in a) <= 2000


def test_tokenizer_sample_reads_a_bounded_prefix_of_a_big_partition(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    part = Partition(index=0, source="default", split="train", text_field="text", files=[str(src)], sizes=[1])
    sample = pw.sample_partition(part, 500, seed=1, filters=[], on_error="stop")
    first_docs = set(TEXTS[: (pw.SAMPLE_SCAN_FACTOR * 500) // len(TEXTS[0].encode()) + 1])
    assert sample and set(sample) <= first_docs
