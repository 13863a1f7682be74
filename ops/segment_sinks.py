"""Where a record writer's flushed segments go: appended to a local file, or one new object per flush.

Object stores cannot append, and rewriting an object to add a row costs O(n²) bytes over a
run; so on them every flush is a new, immutable object with a name of its own.  Local (and
network) file systems can append cheaply, so there a writer keeps one file per partition.
Readers treat both alike: files whose size grew, read from where they stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from ops import storage
from ops.storage import Location


@dataclass(frozen=True)
class Segment:
    """Rows of one stream flushed together; ``seq`` numbers a writer's segments from 1."""

    stream: str
    partition: str
    seq: int
    data: bytes
    rows: int


class SegmentSink(Protocol):
    def write(self, segment: Segment) -> None:
        """Store ``segment`` or raise; a segment that raised is written again, unchanged, later."""


class ObjectSegmentSink:
    """One object per segment: ``<stream>/<partition>/<writer>-<seq>.jsonl``.

    Writing the same segment again after a failure PUTs the same bytes under the same name,
    so a write that failed only in its reply leaves no duplicate rows.
    """

    def __init__(self, run: Location, writer_id: str):
        self.run = run
        self.writer_id = writer_id

    def write(self, segment: Segment) -> None:
        name = f"{self.writer_id}-{segment.seq:06d}.jsonl"
        storage.write_bytes(self.run.join(segment.stream, segment.partition, name), segment.data)


class AppendSegmentSink:
    """One file per writer and partition, ``<stream>/<partition>/<writer>.jsonl``, appended at each flush.

    A write that failed part-way may have left a cut line; the retry starts on a new line so
    that only the cut fragment, never a whole row, is unreadable.
    """

    def __init__(self, run: Location, writer_id: str):
        _, self.root = storage.filesystem(run)
        self.writer_id = writer_id
        self._cut: set[str] = set()

    def write(self, segment: Segment) -> None:
        folder = os.path.join(self.root, segment.stream, segment.partition)
        path = os.path.join(folder, f"{self.writer_id}.jsonl")
        data = (b"\n" + segment.data) if path in self._cut else segment.data
        self._cut.add(path)
        os.makedirs(folder, exist_ok=True)
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
        self._cut.discard(path)


def sink_for(run: Location, writer_id: str) -> SegmentSink:
    if storage.is_local(run):
        return AppendSegmentSink(run, writer_id)
    return ObjectSegmentSink(run, writer_id)
