"""The files of a checkpoint on any fsspec URL: written with their sha256 computed on the way out,
read back (or checked in place) against the size and sha256 the record lists.

Nothing here knows what is inside a file; that is ``llm.deepspeed_files``'s business.
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO, Callable

from data_shards.errors import DataError
from llm.checkpoint_record import FileEntry
from ops import storage

CHUNK = 8 * 2**20


class CheckpointError(DataError):
    """A checkpoint that cannot be used as it is; the message is one line naming the file or step."""


class _HashingWriter:
    """A write-only stream that hashes and counts what passes through it to ``sink``."""

    def __init__(self, sink: BinaryIO):
        self.sink = sink
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.bytes += len(view)
        self.sink.write(view)
        return len(view)

    def flush(self) -> None:
        self.sink.flush()


def write_file(step_dir: storage.Place, name: str, produce: Callable[[_HashingWriter], None], rank: int) -> FileEntry:
    """Write ``step_dir/name`` through ``produce(stream)``; returns its entry once the bytes are durable
    (fsynced on a local disk, the upload completed on an object store)."""
    url = storage.join(step_dir, name)
    fs, path = storage.filesystem(url)
    if storage.is_local(url):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            stream = _HashingWriter(f)
            produce(stream)
            f.flush()
            os.fsync(f.fileno())
        directory = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    else:
        with fs.open(path, "wb") as f:
            stream = _HashingWriter(f)
            produce(stream)
    return FileEntry(path=name, bytes=stream.bytes, sha256=stream.sha.hexdigest(), rank=rank)


def _check(url: storage.Place, entry: FileEntry, read: Callable[[], BinaryIO], sink: BinaryIO | None) -> str | None:
    """Read ``url`` through, hashing it (and copying it to ``sink``), but never more than one byte past
    the size the record lists: a file grown after its commit is refused without reading the rest."""
    sha, size, limit = hashlib.sha256(), 0, entry.bytes + 1
    try:
        with read() as f:
            while size < limit and (chunk := f.read(min(CHUNK, limit - size))):
                sha.update(chunk)
                size += len(chunk)
                if sink is not None:
                    sink.write(chunk)
    except FileNotFoundError:
        return f"{url} is missing"
    if size > entry.bytes:
        return f"{url} is larger than the {entry.bytes} bytes the record lists"
    if size != entry.bytes:
        return f"{url} is {size} bytes; the record lists {entry.bytes}"
    if sha.hexdigest() != entry.sha256:
        return f"{url} does not match the sha256 the record lists"
    return None


def verify(step_dir: storage.Place, entry: FileEntry) -> str | None:
    """What is wrong with ``step_dir/entry.path`` (one line), or None when it is as recorded."""
    url = storage.join(step_dir, entry.path)
    fs, path = storage.filesystem(url)
    if storage.is_local(url):
        return _check(url, entry, lambda: open(path, "rb"), None)
    return _check(url, entry, lambda: fs.open(path, "rb", block_size=CHUNK, cache_type="none"), None)


def fetch(step_dir: storage.Place, entry: FileEntry, local_dir: str) -> str | None:
    """Download ``step_dir/entry.path`` into ``local_dir``, checking it on the way; the problem or None.

    A file that does not match is removed again, so nothing unverified stays on disk.
    """
    url = storage.join(step_dir, entry.path)
    fs, path = storage.filesystem(url)
    target = os.path.join(local_dir, entry.path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if storage.is_local(url):

        def read():
            return open(path, "rb")
    else:

        def read():
            return fs.open(path, "rb", block_size=CHUNK, cache_type="none")

    with open(target, "wb") as sink:
        problem = _check(url, entry, read, sink)
    if problem is not None:
        os.remove(target)
    return problem
