"""Input discovery and streaming document readers for every supported format.

Formats by file name: ``.jsonl``/``.ndjson`` (optionally ``.gz`` or ``.zst``), ``.txt``
(optionally ``.gz`` or ``.zst``; the whole file is one document, like a book or a source file)
and ``.parquet``.  Inputs may be paths, globs or fsspec URLs.  Readers stream in bounded chunks
(``bounded_read``): memory stays bounded whatever the file holds, and a document over
``data.max_doc_bytes`` (a JSON line, a text file, a parquet value) is a per-document error.  Files
bigger than the partition size are split so several tasks share them: uncompressed
JSON lines by byte range (a line belongs to the range it starts in), parquet by row group.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from data_shards.bounded_read import (
    MAX_JSON_DEPTH,
    Oversized,
    decompression_errors,
    gzip_chunks,
    json_too_deep,
    plain_chunks,
    read_capped,
    split_lines,
    zstd_chunks,
)
from data_shards.config import DEFAULT_MAX_DOC_BYTES
from data_shards.errors import DataError
from ops import storage

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
COMPRESSIONS = ("", ".gz", ".zst")
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")
PARQUET_SUFFIXES = (".parquet",)
# Plain-text files are grouped into partitions of about this many bytes.
TEXT_PARTITION_BYTES = 64 << 20
# An over-long line of a compressed file is followed for at most this many times max_doc_bytes.
COMPRESSED_DISCARD_FACTOR = 16
PARQUET_BATCH_BYTES = 16 << 20


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
    # Longest document (JSON line, text file, parquet value) read; longer ones are per-document errors.
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES
    # The storage options that reach the files (and every other input file, such as decontamination sources).
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def bytes(self) -> int:
        return sum(self.sizes)


def filesystem_for(place: storage.Place, key: str):
    """``storage.filesystem`` with a URL the user wrote under config key ``key``: an unknown scheme
    or a missing filesystem package is a DataError naming both."""
    try:
        return storage.filesystem(place)
    except ValueError as exc:
        raise DataError(
            f"{key}: {place} has an unknown scheme ({exc}); use a local path or a URL such as s3://bucket/path"
        ) from None
    except ImportError as exc:
        raise DataError(f"{key}: {place} needs a package that is not installed ({exc})") from None


def unreachable(url: str, key: str, exc: Exception) -> DataError:
    first = (str(exc).splitlines() or [""])[0]
    return DataError(
        f"{key}: cannot reach {url} ({type(exc).__name__}: {first}); check the address, the credentials "
        f"(AWS_* variables, AWS_ENDPOINT_URL, storage.options) and the network"
    )


def check_output(output: storage.Place) -> None:
    """``data.output`` must be a URL with a known scheme whose store answers: checked before any work,
    so a bad one is one line and nothing is written."""
    fs, path = filesystem_for(output, "data.output")
    try:
        storage.with_retries(lambda: fs.exists(path))
    except Exception as exc:  # whatever the store's client raises when it cannot be reached
        raise unreachable(str(output), "data.output", exc) from None


def expand(pattern: storage.Place) -> list[tuple[str, int]]:
    """(url, size) of every file a path, glob or URL names, sorted; DataError if none."""
    fs, path = filesystem_for(pattern, "data.inputs")
    try:
        return _expand(fs, path, str(pattern))
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


def _spans(file: storage.Location, size: int, partition_bytes: int) -> list[tuple[int, int] | None]:
    """How a file is cut into partitions: the whole file, byte ranges, or row-group ranges."""
    name = file.url.lower()
    if size <= partition_bytes:
        return [None]
    if any(name.endswith(s) for s in JSONL_SUFFIXES):
        return [(start, min(start + partition_bytes, size)) for start in range(0, size, partition_bytes)]
    if name.endswith(PARQUET_SUFFIXES):
        import pyarrow.parquet as pq

        fs, path = storage.filesystem(file)
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
    groups: list[tuple[str, str, str, list[str]]],
    options: Mapping[str, Any] | None = None,
    partition_bytes: int = 1 << 62,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
) -> list[Partition]:
    """Partitions of (source, split, text_field, inputs) groups, numbered in a fixed order; ``options``
    are the storage options that reach every input URL."""
    options = dict(options or {})
    out: list[Partition] = []
    for source, split, text_field, inputs in groups:
        files: list[tuple[str, int]] = []
        seen = set()
        for pattern in inputs:
            for url, size in expand(storage.Location(pattern, options)):
                if url not in seen:
                    seen.add(url)
                    files.append((url, size))
        texts = [(u, s) for u, s in files if file_format(u) == "txt"]
        for url, size in files:
            if file_format(url) != "txt":
                spans = _spans(storage.Location(url, options), size, partition_bytes)
                for span in spans:
                    if span is None or url.lower().endswith(PARQUET_SUFFIXES):
                        part_size = size // len(spans)  # row groups: an even share is close enough for sampling
                    else:
                        part_size = span[1] - span[0]
                    out.append(
                        Partition(len(out), source, split, text_field, [url], [part_size], span, max_doc_bytes, options)
                    )
        group: list[tuple[str, int]] = []
        for url, size in texts:
            group.append((url, size))
            if sum(s for _, s in group) >= TEXT_PARTITION_BYTES:
                out.append(_text_partition(len(out), source, split, text_field, group, max_doc_bytes, options))
                group = []
        if group:
            out.append(_text_partition(len(out), source, split, text_field, group, max_doc_bytes, options))
    return out


def _text_partition(
    index: int,
    source: str,
    split: str,
    text_field: str,
    group: list[tuple[str, int]],
    max_doc_bytes: int,
    options: Mapping[str, Any],
) -> Partition:
    urls, sizes = [u for u, _ in group], [s for _, s in group]
    return Partition(index, source, split, text_field, urls, sizes, max_doc_bytes=max_doc_bytes, options=options)


@dataclass
class ReadCounts:
    """Documents skipped (with ``data.on_error=skip``) or repaired while reading, by cause."""

    invalid_utf8: int = 0
    malformed_lines: int = 0
    missing_field: int = 0
    too_long: int = 0  # over data.max_doc_bytes
    too_deep: int = 0  # JSON nested more than MAX_JSON_DEPTH levels
    cut_files: int = 0  # compressed files left unread after an over-long line with no end in sight


def _whole(chunks, url: str):
    """The items of a decompressing stream; a truncated or corrupt file is a DataError naming it."""
    try:
        yield from chunks
    except decompression_errors() as exc:
        raise DataError(f"input {url} is truncated or corrupt ({exc}); replace it or remove it from data.inputs") from None


def _is_compressed(url: str) -> bool:
    return url.lower().endswith((".gz", ".zst"))


def _chunks(raw, url: str):
    """The decompressed bytes of a text or JSON-lines file, in bounded chunks."""
    name = url.lower()
    if name.endswith(".gz"):
        return gzip_chunks(raw)
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise DataError(
                f"input {url}: reading .zst needs the zstandard package (pip install 'kiln-pretrain[zstd]')"
            ) from None
        return zstd_chunks(raw, zstandard.ZstdDecompressor().decompressobj)
    return plain_chunks(raw)


def _decode(data: bytes, counts: ReadCounts) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        counts.invalid_utf8 += 1
        return data.decode("utf-8", errors="replace")


def _too_long(where: str, limit: int, on_error: str, counts: ReadCounts) -> None:
    counts.too_long += 1
    if on_error != "skip":
        raise DataError(
            f"{where}: document over data.max_doc_bytes ({limit:,} bytes); raise data.max_doc_bytes "
            f"or set data.on_error=skip to skip such documents"
        )


def read_documents(partition: Partition, on_error: str, counts: ReadCounts) -> Iterator[str]:
    """Every document's text of a partition, in file order, in bounded memory (see ``bounded_read``).

    A document that cannot be read (a malformed JSON line, a missing or non-string text field, a
    line or text over ``partition.max_doc_bytes``, JSON nested deeper than ``MAX_JSON_DEPTH``)
    raises DataError naming its file and line, or is skipped and counted in ``counts`` when
    ``on_error == "skip"``.
    """
    for url in partition.files:
        fmt = file_format(url)
        fs, path = storage.filesystem(storage.Location(url, partition.options))
        if fmt == "parquet":
            yield from _parquet_texts(fs, path, url, partition, on_error, counts)
            continue
        with storage.with_retries(lambda: fs.open(path, "rb")) as raw:
            if fmt == "txt":
                data = read_capped(_whole(_chunks(raw, url), url), partition.max_doc_bytes)
                if data is None:
                    _too_long(url, partition.max_doc_bytes, on_error, counts)
                else:
                    yield _decode(data, counts)
                continue
            for where, line in _jsonl_lines(raw, url, partition, on_error, counts):
                if not line.strip():
                    continue
                text = _json_text(line, where, partition.text_field, on_error, counts)
                if text is not None:
                    yield text


def _jsonl_lines(raw, url: str, partition: Partition, on_error: str, counts: ReadCounts) -> Iterator[tuple[str, bytes]]:
    """(location, line) of the lines of a JSON-lines file (or of its byte range) up to the length limit.

    An over-long line is dropped as it is read.  In a compressed file the search for its end
    stops after ``COMPRESSED_DISCARD_FACTOR * max_doc_bytes`` bytes and the rest of the file is
    left unread (counted in ``cut_files``): a few KiB of gzip or zstd can expand to many GiB
    without a newline, and decompressing all of it would cost time in proportion to the bomb, not
    to the file.  An uncompressed file is always read to the line's end, which costs no more than
    the bytes the file really holds, so every line after it is kept.
    """
    limit = partition.max_doc_bytes
    if partition.span is not None:
        lines = _lines_in_range(raw, url, *partition.span, limit)
    else:
        discard = COMPRESSED_DISCARD_FACTOR * limit if _is_compressed(url) else None
        numbered = enumerate(split_lines(_whole(_chunks(raw, url), url), limit, discard), start=1)
        lines = ((f"{url}:{n}", line) for n, (_, line) in numbered)
    for where, line in lines:
        if line is Oversized.CUT:
            counts.cut_files += 1
            return
        if line is Oversized.LINE:
            _too_long(where, limit, on_error, counts)
            continue
        yield where, line


def _lines_in_range(raw, url: str, start: int, end: int, limit: int):
    """(location, line) of the lines that start in bytes [start, end) of an uncompressed file.

    The location is ``url:line`` in the first range and ``url at byte N`` after it,
    where counting lines would mean reading everything before the range.
    """
    first = max(start - 1, 0)
    raw.seek(first)
    lines = split_lines(plain_chunks(raw), limit)
    if start > 0:
        next(lines, None)  # the rest of a line that started before this range (or just its newline)
    for n, (offset, line) in enumerate(lines, start=1):
        pos = first + offset
        if pos >= end:
            return
        yield (f"{url}:{n}" if start == 0 else f"{url} at byte {pos}"), line


def _json_text(line: bytes, where: str, field: str, on_error: str, counts: ReadCounts) -> str | None:
    """The text field of one JSON line; ``where`` names the file and line for errors."""
    if json_too_deep(line):
        counts.too_deep += 1
        if on_error == "skip":
            return None
        raise DataError(
            f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep; set data.on_error=skip to skip such lines"
        )
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


def _parquet_batch_rows(row_group, field: str) -> int:
    """Rows per batch so that a batch of the text column holds about ``PARQUET_BATCH_BYTES``."""
    for i in range(row_group.num_columns):
        column = row_group.column(i)
        if column.path_in_schema == field:
            return max(1, min(1024, PARQUET_BATCH_BYTES * row_group.num_rows // max(1, column.total_uncompressed_size)))
    return 1024


def _parquet_texts(fs, path: str, url: str, partition: Partition, on_error: str, counts: ReadCounts) -> Iterator[str]:
    """The text column of a parquet file (or of its row groups), batch by batch.

    Batches are sized from the row group's recorded column size; a value over ``max_doc_bytes``
    is a per-document error located by row.  pyarrow decodes a data page whole, so one value is
    bounded by the format's page size rather than by ``max_doc_bytes``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    field, limit = partition.text_field, partition.max_doc_bytes
    with fs.open(path, "rb") as f:
        reader = pq.ParquetFile(f)
        if field not in reader.schema_arrow.names:
            raise DataError(f"{url}: no column {field!r} (data.text_field); columns are {reader.schema_arrow.names}")
        meta = reader.metadata
        groups = range(*partition.span) if partition.span is not None else range(meta.num_row_groups)
        row = sum(meta.row_group(g).num_rows for g in range(groups.start))
        for g in groups:
            batches = reader.iter_batches(
                batch_size=_parquet_batch_rows(meta.row_group(g), field), columns=[field], row_groups=[g]
            )
            for batch in batches:
                column = batch.column(0)
                is_text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
                sizes = pc.binary_length(column).to_pylist() if is_text else [0] * len(column)
                for text, size in zip(column.to_pylist(), sizes):
                    row += 1
                    if size is not None and size > limit:
                        _too_long(f"{url} row {row}", limit, on_error, counts)
                        continue
                    yield text if isinstance(text, str) else ""
