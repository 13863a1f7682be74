"""prepare() on a real local Ray cluster: the shard contract, determinism and bad input."""

import gzip
import hashlib
import json

import pyarrow as pa
import pytest

from data_shards.config import DataConfig
from data_shards.errors import DataError
from data_shards.loader import GlobalBatchLoader
from data_shards.manifest import load_manifest
from data_shards.manifest import is_prepared
from data_shards.prepare import prepare
from data_shards.shard_format import lengths_from_bytes
from data_shards.tokenizer import Tokenizer

pytestmark = pytest.mark.slow


def corpus_texts(files):
    texts = []
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts.extend(json.loads(line)["text"] for line in f if line.strip())
    return texts


@pytest.fixture(scope="module")
def corpus(kit, tmp_path_factory):
    folder = kit.corpus_dir(tmp_path_factory.mktemp("corpus"))
    return folder, sorted(folder.glob("train-*.jsonl.gz")), sorted(folder.glob("val-*.jsonl.gz"))


def config(folder, output, **overrides):
    base = dict(
        inputs=[str(folder / "train-*.jsonl.gz")],
        val_inputs=[str(folder / "val-*.jsonl.gz")],
        output=str(output),
        vocab_size=1200,
        shard_mb=0.25,
        tokenizer_sample_mb=1,
        tokenizer_threads=2,
    )
    base.update(overrides)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def prepared(local_ray, corpus, tmp_path_factory):
    folder, _, _ = corpus
    root = tmp_path_factory.mktemp("prepared")
    first = prepare(config(folder, root / "a"), seed=7, progress=False)
    second = prepare(config(folder, root / "b"), seed=7, progress=False)
    return root, first, second


def test_prepare_commits_shards_that_match_their_manifest(prepared, corpus):
    root, summary, _ = prepared
    _, train_files, val_files = corpus
    assert is_prepared(str(root / "a"))
    for split, files in (("train", train_files), ("val", val_files)):
        manifest = load_manifest(str(root / "a"), split)
        assert manifest.total_docs == len(corpus_texts(files)) == summary[f"{split}_docs"]
        assert len(manifest.shards) == summary[f"{split}_shards"]
        ids = []
        for entry in manifest.shards:
            path = root / "a" / split / entry.path
            data = path.read_bytes()
            assert (entry.bytes, entry.sha256) == (len(data), hashlib.sha256(data).hexdigest())
            table = pa.ipc.open_file(pa.OSFile(str(path))).read_all()
            tokens = table.column("tokens").to_pylist()
            assert sum(map(len, tokens)) == entry.tokens and len(tokens) == entry.docs
            assert all(t[-1] == manifest.eos_id for t in tokens)
            index = (root / "a" / split / entry.index).read_bytes()
            assert hashlib.sha256(index).hexdigest() == entry.index_sha256
            assert lengths_from_bytes(index, entry.index).tolist() == [len(t) for t in tokens]
            ids.extend(table.column("doc_id").to_pylist())
        assert len(ids) == len(set(ids))
    assert len(load_manifest(str(root / "a"), "train").shards) > 1  # shard_mb honoured


def test_documents_decode_back_to_the_input_text(prepared, corpus):
    root, _, _ = prepared
    _, _, val_files = corpus
    tok = Tokenizer.load(str(root / "a"))
    manifest = load_manifest(str(root / "a"), "val")
    table = pa.ipc.open_file(pa.OSFile(str(root / "a" / "val" / manifest.shards[0].path))).read_all()
    decoded = [tok.decode(t[:-1]) for t in table.column("tokens").to_pylist()[:5]]
    assert decoded == corpus_texts(val_files)[:5]


def test_same_config_and_seed_give_byte_identical_tokenizer_and_shards(prepared):
    root, first, second = prepared
    assert (root / "a/tokenizer/tokenizer.model").read_bytes() == (root / "b/tokenizer/tokenizer.model").read_bytes()
    for split in ("train", "val"):
        a, b = load_manifest(str(root / "a"), split), load_manifest(str(root / "b"), split)
        assert a.fingerprint == b.fingerprint
        assert [(s.path, s.sha256) for s in a.shards] == [(s.path, s.sha256) for s in b.shards]


def test_prepared_data_feeds_the_loader(prepared):
    root, _, _ = prepared
    loader = GlobalBatchLoader(str(root / "a"), "train", seed=7, seq_len=64, global_batch=4)
    batch = loader.next_batch()
    assert batch.shape == (4, 65) and batch.max() < 1200


def test_second_prepare_reuses_finished_work(prepared, corpus, tmp_path):
    import shutil

    root, first, _ = prepared
    folder, _, _ = corpus
    assert first["tokenizer_trained"] and first["partitions_tokenized"] == first["partitions"] > 1
    out = tmp_path / "a"
    shutil.copytree(root / "a", out)  # the module's data stays as the first prepare left it
    again = prepare(config(folder, out), seed=7, progress=False)
    assert (again["tokenizer_trained"], again["partitions_tokenized"]) == (False, 0)
    work = {"seconds", "tokenizer_trained", "partitions_tokenized"}
    assert {k: v for k, v in again.items() if k not in work} == {k: v for k, v in first.items() if k not in work}

    markers = sorted((out / "_work").rglob("part-*.json"))
    markers[1].unlink()  # as if the first prepare had died before this partition's marker
    third = prepare(config(folder, out), seed=7, progress=False)
    assert (third["tokenizer_trained"], third["partitions_tokenized"]) == (False, 1)
    for split in ("train", "val"):
        before, after = load_manifest(str(root / "a"), split), load_manifest(str(out), split)
        assert [(s.path, s.sha256) for s in after.shards] == [(s.path, s.sha256) for s in before.shards]


def test_held_out_fraction_splits_train_documents_when_no_val_inputs(local_ray, corpus, tmp_path):
    folder, train_files, _ = corpus
    summary = prepare(config(folder, tmp_path / "d", val_inputs=[], val_fraction=0.2), seed=1, progress=False)
    assert summary["val_docs"] > 0 and summary["train_docs"] > summary["val_docs"]
    assert summary["train_docs"] + summary["val_docs"] == len(corpus_texts(train_files))


def test_missing_input_file_and_empty_glob_are_named(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl does not exist"):
        prepare(DataConfig(inputs=[str(tmp_path / "nope.jsonl")], output=str(tmp_path / "o")), seed=0, progress=False)
    with pytest.raises(DataError, match=r"glob .*\*.jsonl.gz matches no files"):
        prepare(DataConfig(inputs=[str(tmp_path / "*.jsonl.gz")], output=str(tmp_path / "o")), seed=0, progress=False)
    with pytest.raises(DataError, match="data.inputs is empty"):
        prepare(DataConfig(output=str(tmp_path / "o")), seed=0, progress=False)


def test_empty_corpus_is_a_data_error(local_ray, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text('{"text": ""}\n{"text": ""}\n')
    with pytest.raises(DataError, match="empty corpus"):
        prepare(DataConfig(inputs=[str(path)], output=str(tmp_path / "o"), vocab_size=300), seed=0, progress=False)


def test_malformed_line_stops_with_file_and_line_or_is_skipped_and_counted(local_ray, corpus, tmp_path):
    folder, train_files, _ = corpus
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine line of text"}\n{"text": broken\n{"other": "x"}\n')
    inputs = [str(train_files[0]), str(bad)]
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON line"):
        prepare(config(folder, tmp_path / "o1", inputs=inputs), seed=0, progress=False)
    with pytest.raises(DataError, match=r"bad.jsonl:2: no string field 'text'"):
        bad.write_text('{"text": "fine line of text"}\n{"other": "x"}\n')
        prepare(config(folder, tmp_path / "o2", inputs=inputs), seed=0, progress=False)
    bad.write_text('{"text": "fine line of text"}\n{"text": broken\n{"other": "x"}\n{"text": ""}\n')
    prepare(config(folder, tmp_path / "o3", inputs=inputs, on_error="skip"), seed=0, progress=False)
    errors = load_manifest(str(tmp_path / "o3"), "train").errors
    assert errors == {
        "malformed_lines": 1,
        "missing_field": 1,
        "empty_docs": 1,
        "invalid_utf8": 0,
        "too_long": 0,
        "too_deep": 0,
        "cut_files": 0,
    }


def test_inspect_shows_splits_sources_and_decoded_samples(prepared):
    from rich.console import Console

    from data_shards.inspect import inspect

    root, summary, _ = prepared
    console = Console(record=True, width=160)
    console.print(inspect(str(root / "a")))
    text = console.export_text()
    assert "train" in text and "val" in text and "default" in text
    assert f"{summary['train_tokens']:,}" in text
    assert "first 64 tokens" in text


def test_kiln_data_inspect_prints_the_manifests_counts_and_a_decoded_sample(prepared, tmp_path):
    import os
    import subprocess
    import sys

    root, summary, _ = prepared
    data = root / "a"
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "data", "inspect", str(data)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        cells[0]: cells[1:]
        for cells in ([c.strip() for c in line.strip().strip("│").split("│")] for line in proc.stdout.splitlines())
        if len(cells) == 7
    }
    for split in ("train", "val"):
        manifest = load_manifest(str(data), split)
        assert rows[split][:5] == [
            str(summary[f"{split}_shards"]),
            f"{summary[f'{split}_docs']:,}",
            f"{summary[f'{split}_tokens']:,}",
            f"{sum(s.bytes for s in manifest.shards):,}",
            manifest.dtype,
        ]
    assert f"vocab {Tokenizer.load(str(data)).vocab_size:,}" in proc.stdout
    first = load_manifest(str(data), "train").shards[0]
    tokens = pa.ipc.open_file(pa.OSFile(str(data / "train" / first.path))).read_all().column("tokens").to_pylist()[0]
    sample_line = next(line for line in Tokenizer.load(str(data)).decode(tokens[:64]).splitlines() if line.strip())
    assert sample_line.strip() in proc.stdout

    missing = subprocess.run(
        [sys.executable, "-m", "launch.cli", "data", "inspect", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("kiln: error: ") and missing.stderr.count("\n") == 1
