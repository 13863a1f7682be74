"""Hostile input files, written cheaply and in bounded memory: decompression bombs and endless lines."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

MIB = 1 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_BLOCK = 128 << 10


def write_zstd_rle_bomb(path: Path, expanded: int, prefix: bytes = b"") -> Path:
    """One zstd frame of RLE blocks of zero bytes (4 bytes of file per 128 KiB), after ``prefix`` as
    its own frame: the frame zstandard's one-shot decompression objects expand whole in one call.

    Frame header: no content size, no checksum, a 128 KiB window (descriptor 0x38: 2**(10 + 7)).
    Each block header is 3 little-endian bytes: last-block bit, type 1 (RLE), size << 3; then the byte.
    """
    import zstandard

    blocks = expanded // ZSTD_BLOCK
    block = ((ZSTD_BLOCK << 3) | (1 << 1)).to_bytes(3, "little") + b"\x00"
    last = ((ZSTD_BLOCK << 3) | (1 << 1) | 1).to_bytes(3, "little") + b"\x00"
    with open(path, "wb") as f:
        if prefix:
            f.write(zstandard.ZstdCompressor().compress(prefix))
        f.write(ZSTD_MAGIC + b"\x00\x38")
        per_write = 1 << 16
        for done in range(0, blocks - 1, per_write):
            f.write(block * min(per_write, blocks - 1 - done))
        f.write(last)
    return path


def write_gzip_bomb(path: Path, expanded: int, prefix: bytes = b"") -> Path:
    """A gzip file of ``prefix`` and then ``expanded`` zero bytes: members of 64 MiB of zeros
    (about 64 KiB each, deflate's best ratio), compressed once and written again and again."""
    member = gzip.compress(bytes(64 * MIB), compresslevel=9, mtime=0)
    with open(path, "wb") as f:
        if prefix:
            f.write(gzip.compress(prefix, mtime=0))
        for _ in range(expanded // (64 * MIB)):
            f.write(member)
    return path


def write_long_json_line(f, size: int, field: str = "text") -> None:
    """One JSON line of about ``size`` bytes to the open binary file ``f``, written a MiB at a time."""
    f.write(json.dumps({field: ""})[:-2].encode())  # {"text": "
    chunk = b"a" * MIB
    for _ in range(size // MIB):
        f.write(chunk)
    f.write(b'"}\n')
