"""Reading untrusted input files in bounded memory: decompression in bounded chunks, lines of
bounded length, JSON of bounded nesting.

Everything here is a pure function of a stream (or of bytes), so the limits are tested without files.
What a reader holds at any moment is one chunk of about ``CHUNK_BYTES`` (at most
``MAX_ZSTD_OUTPUT`` for zstd) plus the document being read, at most ``max_doc_bytes``, whatever
the input: a line longer than the limit is dropped while it is read, never held whole.
"""

from __future__ import annotations

import enum
import gzip
import re
import zlib
from typing import BinaryIO, Iterable, Iterator

CHUNK_BYTES = 1 << 20
# A zstd block expands to at most 128 KiB and takes at least 4 bytes of input (an RLE block:
# a 3-byte header and the repeated byte), so 512 compressed bytes at a time expand to at most
# (512 / 4 + 1) * 128 KiB, about 16 MiB, however hostile the frame.  Feeding the decompressor this
# little costs nothing measurable on ordinary text.
ZSTD_FEED_BYTES = 512
MAX_ZSTD_OUTPUT = (ZSTD_FEED_BYTES // 4 + 1) * (128 << 10)
# Real JSON-lines records nest a handful of levels; Python's parser recurses once per level and
# fails near a thousand.
MAX_JSON_DEPTH = 100


class Oversized(enum.Enum):
    """What ``split_lines`` yields in place of a line longer than its limit."""

    LINE = "a line over the limit; its bytes are discarded up to its end"
    CUT = "the line's end lies more than the discard limit further: the rest of the stream is left unread"


def decompression_errors() -> tuple[type[BaseException], ...]:
    """What a truncated or corrupt compressed stream raises while it is read."""
    errors: tuple[type[BaseException], ...] = (EOFError, gzip.BadGzipFile, zlib.error)
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


def plain_chunks(raw: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    return iter(lambda: raw.read(chunk_bytes), b"")


def gzip_chunks(raw: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The decompressed bytes of every gzip member, ``chunk_bytes`` at a time (``GzipFile.read(n)``
    asks zlib for at most ``n`` bytes, so a bomb never expands further than that per read)."""
    return plain_chunks(gzip.GzipFile(fileobj=raw), chunk_bytes)


def zstd_chunks(raw: BinaryIO, new_frame, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The decompressed bytes of every zstd frame, in pieces of about ``chunk_bytes`` and never
    more than ``chunk_bytes + MAX_ZSTD_OUTPUT``.

    ``new_frame`` makes a decompression object for one frame (``ZstdDecompressor().decompressobj``).
    Unlike zstandard's stream reader, a stream that ends inside a frame (a truncated file) raises
    EOFError instead of ending quietly.
    """
    frame = None
    held: list[bytes] = []
    size = 0
    while data := raw.read(chunk_bytes):
        view = memoryview(data)
        for start in range(0, len(view), ZSTD_FEED_BYTES):
            piece: bytes | memoryview = view[start : start + ZSTD_FEED_BYTES]
            while piece:
                if frame is None or frame.eof:
                    frame = new_frame()
                out = frame.decompress(piece)
                piece = frame.unused_data if frame.eof else b""
                if out:
                    held.append(out)
                    size += len(out)
            if size >= chunk_bytes:
                yield b"".join(held)
                held, size = [], 0
    if frame is not None and not frame.eof:
        raise EOFError("the zstd stream ends inside a frame")
    if held:
        yield b"".join(held)


def split_lines(
    chunks: Iterable[bytes], max_bytes: int, discard_limit: int | None = None
) -> Iterator[tuple[int, bytes | Oversized]]:
    """(offset of the line's first byte, line with its newline) of every line of a chunked stream.

    A line whose bytes (newline excluded) pass ``max_bytes`` is yielded as ``Oversized.LINE`` as soon
    as it passes, and the rest of it is read and dropped chunk by chunk.  With ``discard_limit``, a
    line longer than that is followed by ``Oversized.CUT`` and nothing more is read: for compressed
    input, where a few bytes of file can hide gigabytes without a newline, this bounds the work an
    over-long line costs as well as the memory.
    """
    held: list[bytes] = []  # pieces of the line being read, unless it is being dropped
    size = 0  # bytes of the line read so far, newline excluded
    start = offset = 0  # where the line starts; where the chunk starts
    dropping = False
    for chunk in chunks:
        pos = 0
        while pos < len(chunk):
            newline = chunk.find(b"\n", pos)
            end = len(chunk) if newline < 0 else newline + 1
            size += (end - pos) - (newline >= 0)
            if not dropping:
                if size > max_bytes:
                    dropping = True
                    held = []
                    yield start, Oversized.LINE
                else:
                    held.append(chunk[pos:end])
            if dropping and discard_limit is not None and size > discard_limit:
                yield start, Oversized.CUT
                return
            pos = end
            if newline >= 0:
                if not dropping:
                    yield start, b"".join(held)
                held, size, dropping, start = [], 0, False, offset + end
        offset += len(chunk)
    if held:
        yield start, b"".join(held)


def read_capped(chunks: Iterable[bytes], max_bytes: int) -> bytes | None:
    """The whole stream, or None (having stopped reading) once it passes ``max_bytes``."""
    held: list[bytes] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            return None
        held.append(chunk)
    return b"".join(held)


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def json_too_deep(line: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``line`` nests arrays and objects more than ``limit`` deep.

    Brackets inside strings do not count.  Cheap for ordinary records: a line with no more than
    ``limit`` opening brackets in all is never scanned.  For a malformed line the answer may be
    too high, never too low, before the point where a parser would give up.
    """
    if line.count(b"[") + line.count(b"{") <= limit:
        return False
    depth = 0
    for byte in _JSON_STRING.sub(b"", line).translate(None, _NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        if depth > limit:
            return True
    return False
