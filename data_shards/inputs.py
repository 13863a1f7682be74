"""Input discovery and streaming document readers for every supported format.

Formats by file name: ``.jsonl``/``.ndjson`` (optionally ``.gz`` or ``.zst``), ``.txt``
(the whole file is one document) and ``.parquet``.  Inputs may be paths, globs or
fsspec URLs.  Readers stream: memory stays bounded whatever the file size.  Files
bigger than the partition size are split so several tasks share them: uncompressed
JSON lines by byte range (a line belongs to the range it starts in), parquet by row group.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
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
    raise DataError(f"input {url}: unknown format; use .jsonl/.jsonl.gz/.jsonl.zst, .txt or .parquet")


@dataclass
class Partition:
    """The unit of work of a prepare task: one jsonl/parquet file, or a group of text files."""

    index: int
    source: str
    split: str  # "train", "val", or "holdout" (train with a seeded fraction held out)
    text_field: str
    files: list[str]
    sizes: list[int] = field(default_factory=list)
    # Part of a single file: [start, end) bytes of uncompressed JSON lines, or row groups of parquet.
    span: tuple[int, int] | None = None

    @property
    def bytes(self) -> int:
        return sum(self.sizes)


def filesystem_for(url: str, key: str, storage_options: dict | None = None):
    """``storage.filesystem`` with a URL the user wrote under config key ``key``: an unknown scheme
    or a missing filesystem package is a DataError naming both."""
    try:
        return storage.filesystem(url, storage_options)
    except ValueError as exc:
        raise DataError(
            f"{key}: {url} has an unknown scheme ({exc}); use a local path or a URL such as s3://bucket/path"
        ) from None
    except ImportError as exc:
        raise DataError(f"{key}: {url} needs a package that is not installed ({exc})") from None


def unreachable(url: str, key: str, exc: Exception) -> DataError:
    first = (str(exc).splitlines() or [""])[0]
    return DataError(
        f"{key}: cannot reach {url} ({type(exc).__name__}: {first}); check the address, the credentials "
        f"(AWS_* variables, AWS_ENDPOINT_URL, storage.options) and the network"
    )


def expand(pattern: str, storage_options: dict | None = None) -> list[tuple[str, int]]:
    """(url, size) of every file a path, glob or URL names, sorted; DataError if none."""
    fs, path = filesystem_for(pattern, "data.inputs", storage_options)
    try:
        return _expand(fs, path, pattern)
    except (DataError, FileNotFoundError):
        raise
    except Exception as exc:  # whatever the store's client raises when it cannot be reached
        raise unreachable(pattern, "data.inputs", exc) from None


def _expand(fs, path: str, pattern: str) -> list[tuple[str, int]]:
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


def _spans(url: str, size: int, partition_bytes: int, storage_options) -> list[tuple[int, int] | None]:
    """How a file is cut into partitions: the whole file, byte ranges, or row-group ranges."""
    name = url.lower()
    if size <= partition_bytes:
        return [None]
    if any(name.endswith(s) for s in JSONL_SUFFIXES):
        return [(start, min(start + partition_bytes, size)) for start in range(0, size, partition_bytes)]
    if name.endswith(PARQUET_SUFFIXES):
        import pyarrow.parquet as pq

        fs, path = storage.filesystem(url, storage_options)
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        spans, first, held = [], 0, 0
        for g in range(meta.num_row_groups):
            held += meta.row_group(g).total_byte_size
            if held >= partition_bytes:
                spans.append((first, g + 1))
                first, held = g + 1, 0
        if first < meta.num_row_groups:
            spans.append((first, meta.num_row_groups))
        return spans or [None]
    return [None]  # compressed streams cannot be entered in the middle


def partitions_for(
    groups: list[tuple[str, str, str, list[str]]], storage_options: dict | None = None, partition_bytes: int = 1 << 62
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
                spans = _spans(url, size, partition_bytes, storage_options)
                for span in spans:
                    if span is None or url.lower().endswith(PARQUET_SUFFIXES):
                        part_size = size // len(spans)  # row groups: an even share is close enough for sampling
                    else:
                        part_size = span[1] - span[0]
                    out.append(Partition(len(out), source, split, text_field, [url], [part_size], span))
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


def _decompress_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (EOFError, gzip.BadGzipFile, zlib.error)
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


def _whole(chunks, url: str):
    """The items of a decompressing stream; a truncated or corrupt file is a DataError naming it."""
    try:
        yield from chunks
    except _decompress_errors() as exc:
        raise DataError(f"input {url} is truncated or corrupt ({exc}); replace it or remove it from data.inputs") from None


def _decompressed(raw, url: str):
    name = url.lower()
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise DataError(
                f"input {url}: reading .zst needs the zstandard package (pip install 'kiln-pretrain[zstd]')"
            ) from None
        return io.BufferedReader(_ZstdFrames(raw, zstandard.ZstdDecompressor().decompressobj), 1 << 20)
    return raw


class _ZstdFrames(io.RawIOBase):
    """The frames of a zstd stream decompressed one after another.  Unlike zstandard's stream
    reader, a stream that ends inside a frame (a truncated file) raises EOFError instead of ending quietly."""

    def __init__(self, raw, new_frame):
        self._raw, self._new_frame = raw, new_frame
        self._frame = None
        self._out = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            data = self._raw.read(1 << 20)
            if not data:
                if self._frame is not None and not self._frame.eof:
                    raise EOFError("the zstd stream ends inside a frame")
                return 0
            self._out = self._decompress(data)
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompress(self, data: bytes) -> bytes:
        parts = []
        while data:
            if self._frame is None or self._frame.eof:
                self._frame = self._new_frame()
            parts.append(self._frame.decompress(data))
            data = self._frame.unused_data if self._frame.eof else b""
        return b"".join(parts)


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
            yield from _parquet_texts(fs, path, url, partition.text_field, partition.span)
            continue
        with storage.with_retries(lambda: fs.open(path, "rb")) as raw:
            if partition.span is not None:
                lines = _lines_in_range(raw, url, *partition.span)
            else:
                stream = _decompressed(raw, url)
                if fmt == "txt":
                    yield _decode(b"".join(_whole(iter(lambda: stream.read(1 << 20), b""), url)), counts)
                    continue
                lines = ((f"{url}:{n}", line) for n, line in enumerate(_whole(stream, url), start=1))
            for where, line in lines:
                if not line.strip():
                    continue
                text = _json_text(line, where, partition.text_field, on_error, counts)
                if text is not None:
                    yield text


def _lines_in_range(raw, url: str, start: int, end: int):
    """(location, line) of the lines that start in bytes [start, end) of an uncompressed file.

    The location is ``url:line`` in the first range and ``url at byte N`` after it,
    where counting lines would mean reading everything before the range.
    """
    if start > 0:
        raw.seek(start - 1)
        raw.readline()  # the rest of a line that started before this range
    line_no = 0
    while True:
        pos = raw.tell()
        if pos >= end:
            return
        line = raw.readline()
        if not line:
            return
        line_no += 1
        yield (f"{url}:{line_no}" if start == 0 else f"{url} at byte {pos}"), line


def _json_text(line: bytes, where: str, field: str, on_error: str, counts: ReadCounts) -> str | None:
    """The text field of one JSON line; ``where`` names the file and line for errors."""
    decoded = _decode(line, counts)
    try:
        row = json.loads(decoded)
    except json.JSONDecodeError as exc:
        counts.malformed_lines += 1
        if on_error == "skip":
            return None
        raise DataError(f"{where}: malformed JSON line ({exc.msg}); set data.on_error=skip to skip such lines") from None
    text = row.get(field) if isinstance(row, dict) else None
    if not isinstance(text, str):
        counts.missing_field += 1
        if on_error == "skip":
            return None
        raise DataError(f"{where}: no string field {field!r} (data.text_field); set data.on_error=skip to skip such lines")
    return text


def _parquet_texts(fs, path: str, url: str, field: str, span: tuple[int, int] | None) -> Iterator[str]:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as f:
        reader = pq.ParquetFile(f)
        if field not in reader.schema_arrow.names:
            raise DataError(f"{url}: no column {field!r} (data.text_field); columns are {reader.schema_arrow.names}")
        groups = list(range(*span)) if span is not None else None
        for batch in reader.iter_batches(batch_size=1024, columns=[field], row_groups=groups):
            for text in batch.column(0).to_pylist():
                yield text if isinstance(text, str) else ""
