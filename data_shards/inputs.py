"""Input discovery and streaming document readers for every supported format.

Formats by file name: ``.jsonl``/``.ndjson`` (optionally ``.gz`` or ``.zst``), ``.txt``
(the whole file is one document) and ``.parquet``.  Inputs may be paths, globs or
fsspec URLs.  Readers stream: memory stays bounded whatever the file size.
"""
from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field
from typing import Iterator

from data_shards.errors import DataError
from ops import storage

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
COMPRESSIONS = ("", ".gz", ".zst")
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")
PARQUET_SUFFIXES = (".parquet",)
# Plain-text files are grouped into partitions of about this many bytes.
TEXT_PARTITION_BYTES = 64 << 20


def file_format(url: str) -> str:
    name = url.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(TEXT_SUFFIXES):
        return "txt"
    if any(name.endswith(s + c) for s in JSONL_SUFFIXES for c in COMPRESSIONS):
        return "jsonl"
    raise DataError(
        f"input {url}: unknown format; use .jsonl/.jsonl.gz/.jsonl.zst, .txt or .parquet"
    )


@dataclass
class Partition:
    """The unit of work of a prepare task: one jsonl/parquet file, or a group of text files."""

    index: int
    source: str
    split: str  # "train", "val", or "holdout" (train with a seeded fraction held out)
    text_field: str
    files: list[str]
    sizes: list[int] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(self.sizes)


def expand(pattern: str, storage_options: dict | None = None) -> list[tuple[str, int]]:
    """(url, size) of every file a path, glob or URL names, sorted; DataError if none."""
    fs, path = storage.filesystem(pattern, storage_options)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if any(ch in path for ch in "*?["):
        paths = sorted(storage.with_retries(lambda: fs.glob(path)))
        if not paths:
            raise DataError(f"input glob {pattern} matches no files")
    else:
        if not storage.with_retries(lambda: fs.exists(path)):
            raise DataError(f"input {pattern} does not exist")
        if storage.with_retries(lambda: fs.isdir(path)):
            paths = sorted(p for p in storage.with_retries(lambda: fs.find(path)))
            if not paths:
                raise DataError(f"input folder {pattern} holds no files")
        else:
            paths = [path]
    out = []
    for p in paths:
        url = p if protocol in ("file", "local") else f"{protocol}://{p}"
        if protocol in ("file", "local") and "://" in pattern:
            url = f"file://{p}"
        file_format(url)
        out.append((url, int(storage.with_retries(lambda: fs.size(p)) or 0)))
    return out


def partitions_for(
    groups: list[tuple[str, str, str, list[str]]], storage_options: dict | None = None
) -> list[Partition]:
    """Partitions of (source, split, text_field, inputs) groups, numbered in a fixed order."""
    out: list[Partition] = []
    for source, split, text_field, inputs in groups:
        files: list[tuple[str, int]] = []
        seen = set()
        for pattern in inputs:
            for url, size in expand(pattern, storage_options):
                if url not in seen:
                    seen.add(url)
                    files.append((url, size))
        texts = [(u, s) for u, s in files if file_format(u) == "txt"]
        for url, size in files:
            if file_format(url) != "txt":
                out.append(Partition(len(out), source, split, text_field, [url], [size]))
        group: list[tuple[str, int]] = []
        for url, size in texts:
            group.append((url, size))
            if sum(s for _, s in group) >= TEXT_PARTITION_BYTES:
                out.append(Partition(len(out), source, split, text_field, [u for u, _ in group], [s for _, s in group]))
                group = []
        if group:
            out.append(Partition(len(out), source, split, text_field, [u for u, _ in group], [s for _, s in group]))
    return out


@dataclass
class ReadCounts:
    invalid_utf8: int = 0
    malformed_lines: int = 0
    missing_field: int = 0


def _decompressed(raw, url: str):
    name = url.lower()
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    if name.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True), 1 << 20)
    return raw


def _decode(data: bytes, counts: ReadCounts) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        counts.invalid_utf8 += 1
        return data.decode("utf-8", errors="replace")


def read_documents(
    partition: Partition, on_error: str, counts: ReadCounts, storage_options: dict | None = None
) -> Iterator[str]:
    """Every document's text of a partition, in file order.

    A malformed JSON line or a missing/non-string text field raises DataError with file and line,
    or is skipped and counted when ``on_error == "skip"``.
    """
    for url in partition.files:
        fmt = file_format(url)
        fs, path = storage.filesystem(url, storage_options)
        if fmt == "parquet":
            yield from _parquet_texts(fs, path, url, partition.text_field)
            continue
        with storage.with_retries(lambda: fs.open(path, "rb")) as raw:
            stream = _decompressed(raw, url)
            if fmt == "txt":
                yield _decode(stream.read(), counts)
                continue
            for line_no, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                text = _json_text(line, url, line_no, partition.text_field, on_error, counts)
                if text is not None:
                    yield text


def _json_text(line: bytes, url: str, line_no: int, field: str, on_error: str, counts: ReadCounts) -> str | None:
    decoded = _decode(line, counts)
    try:
        row = json.loads(decoded)
    except json.JSONDecodeError as exc:
        counts.malformed_lines += 1
        if on_error == "skip":
            return None
        raise DataError(f"{url}:{line_no}: malformed JSON line ({exc.msg}); set data.on_error=skip to skip such lines") from None
    text = row.get(field) if isinstance(row, dict) else None
    if not isinstance(text, str):
        counts.missing_field += 1
        if on_error == "skip":
            return None
        raise DataError(
            f"{url}:{line_no}: no string field {field!r} (data.text_field); set data.on_error=skip to skip such lines"
        )
    return text


def _parquet_texts(fs, path: str, url: str, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as f:
        reader = pq.ParquetFile(f)
        if field not in reader.schema_arrow.names:
            raise DataError(f"{url}: no column {field!r} (data.text_field); columns are {reader.schema_arrow.names}")
        for batch in reader.iter_batches(batch_size=1024, columns=[field]):
            for text in batch.column(0).to_pylist():
                yield text if isinstance(text, str) else ""
