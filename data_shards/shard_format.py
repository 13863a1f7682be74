"""Arrow IPC token shards: the schema, a size-bounded writer and a byte-offset index for reading.

A shard is an Arrow IPC *file* (footer with batch offsets, uncompressed) with
``tokens: large_list<uint16|uint32>`` (EOS already appended), ``doc_id: uint64`` and
``source: dictionary<string>``.  Any Arrow reader opens it.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from data_shards.errors import DataError

UINT32_VOCAB = 65_500


def token_dtype(vocab_size: int) -> str:
    return "uint32" if vocab_size >= UINT32_VOCAB else "uint16"


def shard_schema(dtype: str) -> pa.Schema:
    value_type = pa.uint32() if dtype == "uint32" else pa.uint16()
    return pa.schema(
        [
            pa.field("tokens", pa.large_list(value_type)),
            pa.field("doc_id", pa.uint64()),
            pa.field("source", pa.dictionary(pa.int32(), pa.string())),
        ]
    )


def record_batch(docs: list[np.ndarray], doc_ids: list[int], source: str, dtype: str) -> pa.RecordBatch:
    """One record batch from token arrays (EOS included) of a single source."""
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(docs).astype(dtype, copy=False) if docs else np.zeros(0, dtype=dtype)
    tokens = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
    ids = pa.array(np.asarray(doc_ids, dtype=np.uint64))
    sources = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(docs), dtype=np.int32)), pa.array([source]))
    return pa.RecordBatch.from_arrays([tokens, ids, sources], schema=shard_schema(dtype))


@dataclass
class WrittenShard:
    local_path: str
    bytes: int
    sha256: str
    docs: int
    tokens: int
    doc_lengths: np.ndarray  # int64[docs], EOS included


def lengths_bytes(lengths: np.ndarray) -> bytes:
    """The document-length index of a shard: a ``.npy`` of uint32 token counts in file order.

    It lets a reader build the sample order without fetching the shards themselves.
    """
    out = io.BytesIO()
    np.save(out, np.asarray(lengths, dtype="<u4"), allow_pickle=False)
    return out.getvalue()


def lengths_from_bytes(data: bytes, name: str) -> np.ndarray:
    try:
        lengths = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"document index {name} is not a .npy array ({exc})") from None
    return lengths.astype(np.int64)


class ShardWriter:
    """Append documents to a local Arrow IPC file in batches of about ``batch_bytes``."""

    def __init__(self, local_path: str, source: str, dtype: str, batch_bytes: int):
        self.local_path = local_path
        self.source = source
        self.dtype = dtype
        self.itemsize = np.dtype(dtype).itemsize
        self.batch_bytes = max(1, int(batch_bytes))
        self._sink = pa.OSFile(local_path, "wb")
        self._writer = pa.ipc.new_file(self._sink, shard_schema(dtype))
        self._docs: list[np.ndarray] = []
        self._ids: list[int] = []
        self._pending_bytes = 0
        self._lengths: list[int] = []
        self.docs = 0
        self.tokens = 0

    @property
    def payload_bytes(self) -> int:
        """Token and id bytes written or pending: the quantity ``shard_mb`` bounds."""
        return self.tokens * self.itemsize + self.docs * 16

    def add(self, tokens: np.ndarray, doc_id: int) -> None:
        self._docs.append(tokens)
        self._ids.append(doc_id)
        self._lengths.append(len(tokens))
        self.docs += 1
        self.tokens += len(tokens)
        self._pending_bytes += len(tokens) * self.itemsize + 16
        if self._pending_bytes >= self.batch_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._docs:
            self._writer.write_batch(record_batch(self._docs, self._ids, self.source, self.dtype))
        self._docs, self._ids, self._pending_bytes = [], [], 0

    def close(self) -> WrittenShard:
        self._flush()
        self._writer.close()
        self._sink.close()
        return WrittenShard(
            self.local_path,
            os.path.getsize(self.local_path),
            file_sha256(self.local_path),
            self.docs,
            self.tokens,
            np.asarray(self._lengths, dtype=np.int64),
        )


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class DocIndex:
    """Where each document's tokens lie inside one local shard file."""

    file_offsets: np.ndarray  # int64[docs]: byte offset of the first token
    lengths: np.ndarray  # int64[docs]: tokens, EOS included
    dtype: str


def doc_index(local_path: str, name: str) -> DocIndex:
    """Byte offsets of every document, read from the list offsets only (the token bodies stay on disk)."""
    try:
        source = pa.memory_map(local_path, "r")
        reader = pa.ipc.open_file(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"shard {name} is not a readable Arrow IPC file ({exc})") from None
    base = _map_start(source)
    offsets_parts, lengths_parts = [], []
    dtype = None
    for i in range(reader.num_record_batches):
        tokens = reader.get_batch(i).column(0)
        dtype = str(tokens.type.value_type)
        itemsize = np.dtype(dtype).itemsize
        list_offsets = _list_offsets(tokens)
        values_buf = tokens.buffers()[3]
        if values_buf is None or values_buf.size == 0:
            continue
        start = values_buf.address - base + tokens.values.offset * itemsize
        offsets_parts.append(start + list_offsets[:-1] * itemsize)
        lengths_parts.append(np.diff(list_offsets))
    source.close()
    if dtype is None:
        dtype = str(reader.schema.field("tokens").type.value_type)
    if not offsets_parts:
        return DocIndex(np.zeros(0, np.int64), np.zeros(0, np.int64), dtype)
    return DocIndex(np.concatenate(offsets_parts).astype(np.int64), np.concatenate(lengths_parts).astype(np.int64), dtype)


def _list_offsets(tokens: pa.LargeListArray) -> np.ndarray:
    """The list offsets of ``tokens`` read straight from its buffer: ``Array.to_numpy`` imports pandas, about a
    second of every rank's start."""
    return np.frombuffer(tokens.buffers()[1], dtype=np.int64)[tokens.offset : tokens.offset + len(tokens) + 1]


def _map_start(source: pa.MemoryMappedFile) -> int:
    """Address of the first byte of a memory map: buffers read from it are zero-copy slices."""
    source.seek(0)
    start = source.read_buffer(1).address
    source.seek(0)
    return start


def read_docs(local_path: str) -> list[np.ndarray]:
    """Every document of a shard, in file order (small shards, tests, eval)."""
    with pa.memory_map(local_path, "r") as source:
        table = pa.ipc.open_file(source).read_all()
    column = table.column("tokens")
    return [
        np.asarray(chunk.values.to_numpy()[o0:o1]) for chunk in column.chunks for o0, o1 in _pairs(chunk.offsets.to_numpy())
    ]


def _pairs(offsets: np.ndarray):
    base = offsets[0]
    for a, b in zip(offsets[:-1], offsets[1:]):
        yield a - base, b - base
