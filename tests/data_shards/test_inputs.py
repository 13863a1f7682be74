"""Input discovery and the streaming readers of every supported format."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data_shards.errors import DataError
from data_shards.inputs import ReadCounts, partitions_for, read_documents


def write_all_formats(folder):
    rows = [{"text": f"document {i}", "id": i} for i in range(3)]
    lines = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (folder / "a.jsonl").write_bytes(lines)
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(lines))
    (folder / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.table({"text": [r["text"] for r in rows], "id": [r["id"] for r in rows]}), folder / "d.parquet")
    (folder / "e.txt").write_text("a whole file\nis one document\n")
    (folder / "f.txt").write_text("another file")


def read(partition, on_error="stop"):
    counts = ReadCounts()
    return list(read_documents(partition, on_error, counts)), counts


def test_every_format_yields_its_documents(tmp_path):
    write_all_formats(tmp_path)
    parts = partitions_for([("default", "train", "text", [str(tmp_path / "*")])])
    by_file = {p.files[0].rsplit("/", 1)[-1]: read(p)[0] for p in parts}
    expected = [f"document {i}" for i in range(3)]
    for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.parquet"):
        assert by_file[name] == expected
    assert by_file["e.txt"] == ["a whole file\nis one document\n", "another file"]  # text files share a partition
    assert [p.index for p in parts] == list(range(len(parts)))


def test_file_urls_and_plain_paths_name_the_same_files(tmp_path):
    write_all_formats(tmp_path)
    plain = partitions_for([("default", "train", "text", [str(tmp_path / "a.jsonl")])])
    url = partitions_for([("default", "train", "text", [f"file://{tmp_path}/a.jsonl"])])
    assert read(plain[0])[0] == read(url[0])[0]


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "caf\xe9 ok"}\n{"text": "fine"}\n')
    docs, counts = read(partitions_for([("default", "train", "text", [str(tmp_path / "bad.jsonl")])])[0])
    assert docs == ["caf\ufffd ok", "fine"]
    assert counts.invalid_utf8 == 1


def test_missing_parquet_column_and_unknown_format_are_data_errors(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "d.parquet")
    part = partitions_for([("default", "train", "text", [str(tmp_path / "d.parquet")])])[0]
    with pytest.raises(DataError, match="no column 'text'"):
        read(part)
    (tmp_path / "notes.docx").write_bytes(b"x")
    with pytest.raises(DataError, match="notes.docx: unknown format"):
        partitions_for([("default", "train", "text", [str(tmp_path / "notes.docx")])])


def test_big_jsonl_split_by_byte_range_reads_every_line_once(tmp_path):
    rows = [{"text": f"doc {i} " + "x" * (i % 37)} for i in range(500)]
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    whole = read(partitions_for([("default", "train", "text", [str(path)])])[0])[0]
    for cut in (97, 1000, 4096):
        parts = partitions_for([("default", "train", "text", [str(path)])], partition_bytes=cut)
        assert len(parts) > 1 and all(p.span is not None for p in parts)
        assert [t for p in parts for t in read(p)[0]] == whole == [r["text"] for r in rows]


def test_big_parquet_split_by_row_groups_reads_every_row_once(tmp_path):
    texts = [f"row {i} " + "y" * 50 for i in range(1000)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "big.parquet", row_group_size=100)
    parts = partitions_for([("default", "train", "text", [str(tmp_path / "big.parquet")])], partition_bytes=2000)
    assert len(parts) > 1
    assert [t for p in parts for t in read(p)[0]] == texts


def test_malformed_line_in_a_later_range_is_located_by_byte_offset(tmp_path):
    good = json.dumps({"text": "fine"}) + "\n"
    path = tmp_path / "big.jsonl"
    path.write_text(good * 50 + "{broken\n" + good * 50)
    parts = partitions_for([("default", "train", "text", [str(path)])], partition_bytes=len(good) * 20)
    with pytest.raises(DataError, match=rf"big.jsonl at byte {len(good) * 50}: malformed JSON line"):
        for p in parts:
            read(p)
    docs, counts = read(parts[2], on_error="skip")
    assert counts.malformed_lines == 1 and len(docs) == 20  # 10 lines before it, 10 that start after it


@pytest.mark.parametrize("name", ["cut.jsonl.gz", "cut.jsonl.zst", "cut.txt.gz"])
def test_a_truncated_compressed_input_is_a_data_error_naming_it(tmp_path, name):
    lines = "".join(json.dumps({"text": f"document {i} " * 30}) + "\n" for i in range(300)).encode()
    whole = gzip.compress(lines) if name.endswith(".gz") else zstandard.ZstdCompressor().compress(lines)
    path = tmp_path / name
    path.write_bytes(whole[: len(whole) // 2])
    [partition] = partitions_for([("default", "train", "text", [str(path)])])
    with pytest.raises(DataError, match=f"input {path} is truncated or corrupt"):
        read(partition)


def test_an_input_url_with_an_unknown_scheme_is_a_data_error():
    with pytest.raises(DataError, match="data.inputs: nosuch://bucket/x.jsonl has an unknown scheme"):
        partitions_for([("default", "train", "text", ["nosuch://bucket/x.jsonl"])])


def test_a_zst_input_of_many_frames_reads_every_line(tmp_path):
    compressor = zstandard.ZstdCompressor()
    lines = [json.dumps({"text": f"document {i}"}) + "\n" for i in range(1000)]
    path = tmp_path / "frames.jsonl.zst"
    path.write_bytes(b"".join(compressor.compress("".join(lines[i : i + 70]).encode()) for i in range(0, 1000, 70)))
    [partition] = partitions_for([("default", "train", "text", [str(path)])])
    docs, _ = read(partition)
    assert docs == [f"document {i}" for i in range(1000)]
