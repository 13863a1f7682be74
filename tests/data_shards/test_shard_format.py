import hashlib
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from data_shards.errors import DataError
from data_shards.manifest import load_manifest
from data_shards.shard_format import doc_index, read_docs, token_dtype


def test_shards_open_with_plain_pyarrow_and_match_manifest(tmp_path, kit):
    docs = kit.random_docs(0, 40, 500)
    kit.write_split(str(tmp_path), "train", {"default": [docs[:25], docs[25:]]})
    manifest = load_manifest(str(tmp_path), "train")
    assert len(manifest.shards) == 2
    for i, entry in enumerate(manifest.shards):
        path = tmp_path / "train" / entry.path
        data = path.read_bytes()
        assert entry.bytes == len(data)
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
        table = pa.ipc.open_file(pa.OSFile(str(path))).read_all()
        assert table.schema.field("tokens").type == pa.large_list(pa.uint16())
        assert table.schema.field("doc_id").type == pa.uint64()
        assert pa.types.is_dictionary(table.schema.field("source").type)
        assert table.num_rows == entry.docs
        assert sum(len(t) for t in table.column("tokens").to_pylist()) == entry.tokens
        assert all(t[-1] == manifest.eos_id for t in table.column("tokens").to_pylist())
    assert manifest.total_tokens == sum(len(d) for d in docs)


def test_small_record_batches_split_a_shard(tmp_path, kit):
    docs = kit.random_docs(1, 30, 500)
    kit.write_split(str(tmp_path), "train", {"default": [docs]}, batch_bytes=200)
    reader = pa.ipc.open_file(pa.OSFile(str(tmp_path / "train" / "shard-00000.arrow")))
    assert reader.num_record_batches > 3


def test_doc_index_points_at_each_documents_bytes(tmp_path, kit):
    docs = kit.random_docs(2, 30, 500)
    kit.write_split(str(tmp_path), "train", {"default": [docs]}, batch_bytes=100)
    path = str(tmp_path / "train" / "shard-00000.arrow")
    index = doc_index(path, path)
    raw = open(path, "rb").read()
    got = [np.frombuffer(raw[o : o + 2 * n], dtype=np.uint16) for o, n in zip(index.file_offsets, index.lengths)]
    assert [g.tolist() for g in got] == [d.tolist() for d in docs]
    assert [r.tolist() for r in read_docs(path)] == [d.tolist() for d in docs]


def test_indexing_a_shard_leaves_pandas_unimported(tmp_path, kit):
    """Every rank indexes its shards as it starts; through pyarrow's ``to_numpy`` that imported pandas, about
    a second of each rank's start."""
    kit.write_split(str(tmp_path), "train", {"default": [kit.random_docs(3, 10, 500)]}, batch_bytes=100)
    probe = (
        "import sys; from data_shards.shard_format import doc_index; doc_index(sys.argv[1], 'shard'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pandas'))"
    )
    path = str(tmp_path / "train" / "shard-00000.arrow")
    proc = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_large_vocab_uses_uint32_tokens(tmp_path, kit):
    assert token_dtype(65_499) == "uint16"
    docs = [np.array([70_000, 2], dtype=np.int64)]
    kit.write_split(str(tmp_path), "train", {"default": [docs]}, vocab=70_001)
    table = pa.ipc.open_file(pa.OSFile(str(tmp_path / "train" / "shard-00000.arrow"))).read_all()
    assert table.schema.field("tokens").type == pa.large_list(pa.uint32())
    assert table.column("tokens").to_pylist() == [[70_000, 2]]


def test_missing_manifest_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="run `kiln prepare` first"):
        load_manifest(str(tmp_path), "train")


def test_fingerprint_tracks_shard_content(tmp_path, kit):
    docs = kit.random_docs(3, 10, 500)
    a = kit.write_split(str(tmp_path / "a"), "train", {"default": [docs]})
    b = kit.write_split(str(tmp_path / "b"), "train", {"default": [docs]})
    c = kit.write_split(str(tmp_path / "c"), "train", {"default": [docs[:-1]]})
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint
    assert load_manifest(str(tmp_path / "a"), "train").fingerprint == a.fingerprint
