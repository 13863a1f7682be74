"""Untrusted inputs are read in bounded memory: decompression bombs, endless lines and deep JSON
cost a bounded chunk and a per-document error, never the process."""

import gzip
import io
import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from data_shards.bounded_read import (
    CHUNK_BYTES,
    MAX_JSON_DEPTH,
    MAX_ZSTD_OUTPUT,
    Oversized,
    gzip_chunks,
    json_too_deep,
    read_capped,
    split_lines,
    zstd_chunks,
)
from data_shards.errors import DataError
from data_shards.inputs import ReadCounts, partitions_for, read_documents
from launch.config import ConfigError, load_config
from support.hostile_inputs import write_gzip_bomb, write_zstd_rle_bomb

MIB = 1 << 20


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def reference_lines(data: bytes, max_bytes: int) -> list[tuple[int, bytes | Oversized]]:
    out, start = [], 0
    pieces = data.split(b"\n")
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        if last and not piece:
            break
        line = piece if last else piece + b"\n"
        out.append((start, line if len(piece) <= max_bytes else Oversized.LINE))
        start += len(line)
    return out


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=200).map(lambda b: b.replace(b"\x00", b"\n")),
    cuts=st.lists(st.integers(0, 400), max_size=8),
    max_bytes=st.integers(0, 40),
)
def test_split_lines_gives_every_line_at_its_offset_and_marks_the_long_ones_however_the_stream_is_cut(data, cuts, max_bytes):
    assert list(split_lines(chunked(data, cuts), max_bytes)) == reference_lines(data, max_bytes)


def test_an_endless_line_is_dropped_as_it_is_read_and_the_next_line_is_kept():
    def stream():
        yield b'{"text": "before"}\n' + b"x" * (MIB - 20)
        for _ in range(255):  # 256 MiB with no newline
            yield b"y" * MIB
        yield b'\n{"text": "after"}\n'

    tracemalloc.start()
    try:
        lines = list(split_lines(stream(), max_bytes=4096))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [line for _, line in lines] == [b'{"text": "before"}\n', Oversized.LINE, b'{"text": "after"}\n']
    assert lines[2][0] == 256 * MIB
    assert peak < 4 * MIB  # one chunk in flight, not the line


def test_a_line_longer_than_the_discard_limit_ends_the_stream():
    chunks = iter([b"ok\n", b"z" * 100, b"z" * 100, b"z" * 100, b"\nnever read\n"])
    assert [line for _, line in split_lines(chunks, max_bytes=10, discard_limit=250)] == [
        b"ok\n",
        Oversized.LINE,
        Oversized.CUT,
    ]
    assert next(chunks) == b"\nnever read\n"  # reading stopped there


@pytest.mark.parametrize("bomb", ["zstd", "gzip"])
def test_a_decompression_bomb_comes_out_in_bounded_chunks(tmp_path, bomb):
    expanded = 1 << 30
    path = tmp_path / "bomb"
    (write_zstd_rle_bomb if bomb == "zstd" else write_gzip_bomb)(path, expanded)
    data = path.read_bytes()
    assert len(data) < expanded // 1000
    chunks = (
        zstd_chunks(io.BytesIO(data), zstandard.ZstdDecompressor().decompressobj)
        if bomb == "zstd"
        else gzip_chunks(io.BytesIO(data))
    )
    tracemalloc.start()
    try:
        seen = biggest = 0
        for chunk in chunks:
            seen += len(chunk)
            biggest = max(biggest, len(chunk))
            del chunk
            if seen >= 128 * MIB:
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert biggest <= CHUNK_BYTES + MAX_ZSTD_OUTPUT
    assert peak < 3 * (CHUNK_BYTES + MAX_ZSTD_OUTPUT)


@pytest.mark.parametrize("bomb", ["zstd", "gzip"])
def test_the_bombs_expand_to_what_they_claim(tmp_path, bomb):
    path = tmp_path / "bomb"
    (write_zstd_rle_bomb if bomb == "zstd" else write_gzip_bomb)(path, 128 * MIB, prefix=b"first\n")
    with open(path, "rb") as raw:
        chunks = zstd_chunks(raw, zstandard.ZstdDecompressor().decompressobj) if bomb == "zstd" else gzip_chunks(raw)
        head, total = b"", 0
        for chunk in chunks:
            head = head or chunk[:8]
            total += len(chunk)
    assert head == b"first\n\0\0" and total == len(b"first\n") + 128 * MIB


def test_zstd_chunks_read_every_frame_and_fail_inside_a_cut_frame():
    lines = b"".join(b"line %d\n" % i for i in range(50_000))
    frames = b"".join(zstandard.ZstdCompressor().compress(lines[i : i + 70_000]) for i in range(0, len(lines), 70_000))
    new_frame = zstandard.ZstdDecompressor().decompressobj
    assert b"".join(zstd_chunks(io.BytesIO(frames), new_frame, chunk_bytes=4096)) == lines
    with pytest.raises(EOFError):
        b"".join(zstd_chunks(io.BytesIO(frames[:-10]), new_frame))


def test_read_capped_stops_reading_past_the_limit():
    chunks = iter([b"a" * 10, b"b" * 10, b"c" * 10])
    assert read_capped(iter([b"a" * 10, b"b" * 10]), 20) == b"a" * 10 + b"b" * 10
    assert read_capped(chunks, 15) is None
    assert next(chunks) == b"c" * 10


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\n'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\ab'), inner, max_size=3),
    max_leaves=40,
)


def depth(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


@settings(max_examples=150, deadline=None)
@given(value=json_values, limit=st.integers(0, 8))
def test_json_depth_counts_nesting_but_not_brackets_inside_strings(value, limit):
    assert json_too_deep(json.dumps(value).encode(), limit) == (depth(value) > limit)


def test_json_nested_past_the_parsers_recursion_is_too_deep():
    line = b'{"text": "x", "deep": ' + b"[" * 1100 + b"]" * 1100 + b"}"
    assert json_too_deep(line)
    assert not json_too_deep(b'{"text": "' + b"[{" * 5000 + b'"}')
    assert not json_too_deep(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)


def read(partition, on_error):
    counts = ReadCounts()
    return list(read_documents(partition, on_error, counts)), counts


def test_long_and_deep_json_lines_are_skipped_and_counted_or_stop_at_their_line(tmp_path):
    good = [json.dumps({"text": f"document {i}"}) + "\n" for i in range(3)]
    long_line = json.dumps({"text": "w" * 5000}) + "\n"
    deep_line = '{"text": "x", "deep": ' + "[" * 1100 + "]" * 1100 + "}\n"
    body = (good[0] + long_line + good[1] + deep_line + good[2]).encode()
    (tmp_path / "a.jsonl").write_bytes(body)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst"):
        [part] = partitions_for([("s", "train", "text", [str(tmp_path / name)])], max_doc_bytes=4096)
        docs, counts = read(part, "skip")
        assert docs == ["document 0", "document 1", "document 2"]
        assert (counts.too_long, counts.too_deep, counts.cut_files) == (1, 1, 0)
        with pytest.raises(DataError, match=rf"{name}:2: document over data.max_doc_bytes \(4,096 bytes\)"):
            read(part, "stop")
    (tmp_path / "d.jsonl").write_bytes((good[0] + deep_line).encode())
    [part] = partitions_for([("s", "train", "text", [str(tmp_path / "d.jsonl")])])
    with pytest.raises(DataError, match=r"d.jsonl:2: JSON nested more than 100 levels deep"):
        read(part, "stop")


def test_an_endless_line_of_a_compressed_file_ends_that_file_and_is_counted(tmp_path):
    compressor = zstandard.ZstdCompressor().compressobj()
    first = (json.dumps({"text": "kept"}) + "\n").encode()
    parts = [compressor.compress(first)] + [compressor.compress(bytes(MIB)) for _ in range(64)]
    (tmp_path / "bomb.jsonl.zst").write_bytes(b"".join(parts) + compressor.compress(b"\n" + first) + compressor.flush())
    [part] = partitions_for([("s", "train", "text", [str(tmp_path / "bomb.jsonl.zst")])], max_doc_bytes=1 << 20)
    docs, counts = read(part, "skip")
    assert docs == ["kept"]  # the line after the 64 MiB one lies past 16 x max_doc_bytes
    assert (counts.too_long, counts.cut_files) == (1, 1)


def test_an_over_long_line_in_a_byte_range_is_located_by_byte_and_counted_once(tmp_path):
    good = json.dumps({"text": "fine"}) + "\n"
    path = tmp_path / "big.jsonl"
    long_line = json.dumps({"text": "v" * 3000}) + "\n"
    path.write_text(good * 100 + long_line + good * 50)
    parts = partitions_for([("s", "train", "text", [str(path)])], partition_bytes=1000, max_doc_bytes=2048)
    assert len(parts) > 3
    total, counts = [], ReadCounts()
    for p in parts:
        total.extend(read_documents(p, "skip", counts))
    assert total == ["fine"] * 150 and counts.too_long == 1
    with pytest.raises(DataError, match=rf"big.jsonl at byte {len(good) * 100}: document over data.max_doc_bytes"):
        for p in parts:
            read(p, "stop")


def test_text_files_and_parquet_values_over_the_limit_are_per_document_errors(tmp_path):
    (tmp_path / "ok.txt").write_text("short file")
    (tmp_path / "big.txt.gz").write_bytes(gzip.compress(b"para\n\n" * 2000))
    pq.write_table(pa.table({"text": ["a", "b" * 5000, "c"]}), tmp_path / "d.parquet", row_group_size=2)
    parts = partitions_for([("s", "train", "text", [str(tmp_path / "*")])], max_doc_bytes=4096)
    docs, counts = [], ReadCounts()
    for p in parts:
        docs.extend(read_documents(p, "skip", counts))
    assert docs == ["a", "c", "short file"] and counts.too_long == 2
    with pytest.raises(DataError, match=r"big.txt.gz: document over data.max_doc_bytes"):
        read(partitions_for([("s", "train", "text", [str(tmp_path / "*.txt.gz")])], max_doc_bytes=4096)[0], "stop")
    with pytest.raises(DataError, match=r"d.parquet row 2: document over data.max_doc_bytes"):
        read(partitions_for([("s", "train", "text", [str(tmp_path / "d.parquet")])], max_doc_bytes=4096)[0], "stop")


@pytest.mark.parametrize("value", ["0", "100", "2000000000", "lots"])
def test_max_doc_bytes_out_of_range_is_one_line_naming_the_key(tmp_path, value):
    config = tmp_path / "c.yaml"
    config.write_text("data: {inputs: [a.jsonl]}\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(config), [f"data.max_doc_bytes={value}"])
    assert "data.max_doc_bytes" in str(err.value) and "\n" not in str(err.value)
