"""prepare() features on a real local Ray cluster: formats, filters, de-duplication, sources, tokenizers."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data_shards.config import DataConfig
from data_shards.loader import GlobalBatchLoader
from data_shards.manifest import load_manifest
from data_shards.prepare import prepare
from data_shards.tokenizer import Tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def texts(kit, tmp_path_factory):
    folder = kit.corpus_dir(tmp_path_factory.mktemp("corpus"))
    out = []
    for path in sorted(folder.glob("train-*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            out.extend(json.loads(line)["text"] for line in f)
        if len(out) >= 40:
            return out[:40]
    raise AssertionError(f"{folder} holds {len(out)} training documents; these tests need 40")


def jsonl(texts):
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


def doc_ids(data_url, split):
    manifest = load_manifest(data_url, split)
    ids = []
    for i in range(len(manifest.shards)):
        table = pa.ipc.open_file(pa.OSFile(f"{data_url}/{split}/{manifest.shards[i].path}")).read_all()
        ids.extend(table.column("doc_id").to_pylist())
    return ids


def decoded_docs(data_url, split):
    tok = Tokenizer.load(data_url)
    manifest = load_manifest(data_url, split)
    out = []
    for entry in manifest.shards:
        table = pa.ipc.open_file(pa.OSFile(f"{data_url}/{split}/{entry.path}")).read_all()
        out.extend(tok.decode(t[:-1]) for t in table.column("tokens").to_pylist())
    return out


def test_mixed_formats_filters_and_dedup_are_recorded_in_the_manifest(local_ray, texts, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.jsonl").write_bytes(jsonl(texts[:10]))
    (inp / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl(texts[10:20] + texts[:3])))
    pq.write_table(pa.table({"text": texts[20:30] + ["<p>tiny</p>", texts[5]]}), inp / "c.parquet")
    (inp / "d.txt").write_text("Contact admin@example.com about <b>this</b> page. " * 5)
    (inp / "e.txt").write_text(texts[30])
    cfg = DataConfig(
        inputs=[str(inp / "*.jsonl"), f"file://{inp}/b.jsonl.zst", str(inp / "c.parquet"), str(inp / "*.txt")],
        val_inputs=[str(inp / "a.jsonl")],
        output=str(tmp_path / "out"),
        vocab_size=800,
        shard_mb=0.1,
        tokenizer_sample_mb=1,
        filters=["strip_markup", "normalize_unicode", {"name": "min_length", "min_chars": 20}, "mask_pii", "dedup_exact"],
    )
    summary = prepare(cfg, seed=3, progress=False)
    manifest = load_manifest(cfg.output, "train")
    # 10 + 13 + 12 + 2 documents; "tiny" is too short; texts[:3] and texts[5] repeat a.jsonl's
    # inside train, and a.jsonl itself is also read as val (dedup spans every input).
    assert manifest.filters["min_length"]["dropped"] == 1
    assert manifest.filters["dedup_exact"]["dropped"] >= 4
    assert manifest.filters["strip_markup"]["changed"] >= 1 and manifest.filters["mask_pii"]["changed"] >= 1
    assert manifest.config_hash and summary["train_docs"] == manifest.total_docs
    docs = decoded_docs(cfg.output, "train")
    assert len(docs) == len(set(docs))
    assert any("<EMAIL> about this page." in d for d in docs)


def test_exact_duplicates_across_files_keep_one_copy_with_the_smallest_doc_id(local_ray, texts, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(4):  # every file holds the same 5 documents plus 2 of its own
        (inp / f"p{i}.jsonl").write_bytes(jsonl(texts[:5] + texts[5 + 2 * i : 7 + 2 * i]))
    cfg = DataConfig(
        inputs=[str(inp / "*.jsonl")],
        val_fraction=0,
        output=str(tmp_path / "out"),
        vocab_size=600,
        tokenizer_sample_mb=1,
        filters=["dedup_exact"],
    )
    prepare(cfg, seed=0, progress=False)
    manifest = load_manifest(cfg.output, "train")
    assert manifest.total_docs == 5 + 8
    assert manifest.filters["dedup_exact"]["dropped"] == 15
    ids = doc_ids(cfg.output, "train")
    assert sorted(i >> 36 for i in ids) == [0] * 7 + [1, 1, 2, 2, 3, 3]


def test_named_sources_are_blended_by_weight(local_ray, texts, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "web.jsonl").write_bytes(jsonl(texts[:20]))
    (inp / "code.jsonl").write_bytes(jsonl(texts[20:40]))
    cfg = DataConfig(
        sources=[
            {"name": "web", "inputs": [str(inp / "web.jsonl")], "weight": 3},
            {"name": "code", "inputs": [str(inp / "code.jsonl")], "weight": 1},
        ],
        val_fraction=0.1,
        output=str(tmp_path / "out"),
        vocab_size=600,
        tokenizer_sample_mb=1,
    )
    prepare(cfg, seed=0, progress=False)
    manifest = load_manifest(cfg.output, "train")
    assert {n: s.weight for n, s in manifest.sources.items()} == {"web": 3.0, "code": 1.0}
    loader = GlobalBatchLoader(cfg.output, "train", seed=0, seq_len=32, global_batch=8)
    for _ in range(10):
        loader.next_batch()
    assert loader.state_dict()["source_consumed"] == {"code": 20, "web": 60}


def test_user_supplied_tokenizer_is_used_as_is(local_ray, texts, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.jsonl").write_bytes(jsonl(texts[:20]))
    first = DataConfig(inputs=[str(inp / "a.jsonl")], output=str(tmp_path / "first"), vocab_size=700, tokenizer_sample_mb=1)
    prepare(first, seed=0, progress=False)
    model = tmp_path / "first" / "tokenizer" / "tokenizer.model"
    second = DataConfig(inputs=[str(inp / "a.jsonl")], output=str(tmp_path / "second"), vocab_size=8000, tokenizer=str(model))
    prepare(second, seed=5, progress=False)
    assert (tmp_path / "second" / "tokenizer" / "tokenizer.model").read_bytes() == model.read_bytes()
    manifest = load_manifest(str(tmp_path / "second"), "train")
    assert manifest.vocab_size == 700
    assert manifest.tokenizer_sha256 == Tokenizer.load(str(tmp_path / "first")).sha256


def test_new_tokenizer_uncommits_data_made_with_the_old_one(local_ray, texts, tmp_path):
    from data_shards import prepare as prepare_module
    from data_shards.errors import DataError
    from data_shards.tokenizer import train_tokenizer

    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.jsonl").write_bytes(jsonl(texts[:20]))
    out = str(tmp_path / "out")
    prepare(
        DataConfig(inputs=[str(inp / "a.jsonl")], output=out, vocab_size=600, tokenizer_sample_mb=1), seed=0, progress=False
    )
    old = load_manifest(out, "train").tokenizer_sha256
    with pytest.raises(DataError, match="missing.jsonl does not exist"):
        prepare(DataConfig(inputs=[str(inp / "a.jsonl"), str(inp / "missing.jsonl")], output=out), seed=0, progress=False)
    assert load_manifest(out, "train").tokenizer_sha256 == old  # a failing config changes nothing
    other = train_tokenizer([line for t in texts for line in t.split("\n") if line.strip()], 650, seed=0, num_threads=1)
    assert other.sha256 != old
    prepare_module._save_tokenizer(other, out, {})
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()
    assert not (tmp_path / "out" / "val" / "manifest.json").exists()
    assert Tokenizer.load(out).sha256 == other.sha256


def test_one_big_file_is_shared_by_several_tasks_without_losing_documents(local_ray, texts, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "big.jsonl").write_bytes(jsonl(texts))
    cfg = DataConfig(
        inputs=[str(inp / "big.jsonl")],
        val_fraction=0,
        output=str(tmp_path / "out"),
        vocab_size=600,
        tokenizer_sample_mb=1,
        partition_mb=0.05,
    )
    summary = prepare(cfg, seed=0, progress=False)
    assert summary["partitions"] > 3
    assert summary["train_docs"] == len(texts)
    assert sorted(decoded_docs(cfg.output, "train")) == sorted(texts)
