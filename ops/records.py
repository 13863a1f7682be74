"""Run records: metrics, heartbeats and events under a run URL.

These records are the only interface between a running job and whoever watches it
(`kiln monitor`, `kiln status`), so they are plain JSON lines readable over any fsspec URL.
Where they live is ``ops.record_layout``'s business; how rows reach storage is
``ops.record_writer``'s (buffered, flushed as segments every few seconds and at exit);
how they are read back incrementally is ``ops.record_readers``'s.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from ops import storage
from ops.record_layout import EVENTS_STREAM, HEARTBEATS_DIR, METRICS_STREAM, heartbeat_name
from ops.record_readers import ChangedFiles, StreamFollower
from ops.record_writer import RecordWriter, existing_writer, writer_for

LOCAL_FLUSH_EVERY_S = 0.05  # an append to a local file is cheap: rows show up about as soon as written
OBJECT_FLUSH_EVERY_S = 5.0  # each flush is one PUT


class MetricsFollower(StreamFollower):
    """Metrics rows written since the last call (the local launcher's progress bar)."""

    def __init__(self, run: storage.Place):
        super().__init__(run, METRICS_STREAM)


class RunRecords:
    """Writer and reader of one run's records.

    Writes return at once: rows wait in this process's buffer for the next flush (every
    ``flush_every_s``; events wake it at once).  Reads see this process's own rows, since they
    flush it first.
    """

    def __init__(self, run: storage.Place, flush_every_s: float | None = None):
        self.run = storage.location(run)
        if flush_every_s is None:
            flush_every_s = LOCAL_FLUSH_EVERY_S if storage.is_local(self.run) else OBJECT_FLUSH_EVERY_S
        self.flush_every_s = flush_every_s

    def _writer(self) -> RecordWriter:
        return writer_for(self.run, self.flush_every_s)

    def log_metrics(self, row: dict[str, Any]) -> None:
        self._writer().append(METRICS_STREAM, {"time": time.time(), **row})

    def event(self, kind: str, **fields: Any) -> None:
        row = {"time": time.time(), "event": kind, "host": socket.gethostname(), "pid": os.getpid(), **fields}
        self._writer().append(EVENTS_STREAM, row, urgent=True)

    def heartbeat(self, rank: int, step: int, **fields: Any) -> None:
        """Overwrite rank ``rank``'s heartbeat now (one small object; ``ops.heartbeat`` calls it off the training thread)."""
        beat = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "step": step, "time": time.time(), **fields}
        storage.write_json(self.run.join(HEARTBEATS_DIR, heartbeat_name(rank)), beat)

    def flush(self) -> bool:
        """Write this process's buffered rows now; False when storage refused them (they stay buffered)."""
        writer = existing_writer(self.run)
        return writer.flush() if writer is not None else True

    def close(self) -> bool:
        """Flush and stop this process's background writer (a later write starts it again)."""
        writer = existing_writer(self.run)
        return writer.close() if writer is not None else True

    def metrics(self) -> list[dict]:
        self.flush()
        return StreamFollower(self.run, METRICS_STREAM).new_rows()

    def events(self) -> list[dict]:
        self.flush()
        return StreamFollower(self.run, EVENTS_STREAM).new_rows()

    def preempted_since(self, since: float) -> bool:
        """Whether the ranks recorded a preemption save at or after ``since`` (a launcher's start time)."""
        return any(e.get("event") == "preemption" and e.get("time", 0) >= since for e in self.events())

    def heartbeats(self) -> list[dict]:
        beats = []
        for data in ChangedFiles(self.run.join(HEARTBEATS_DIR)).changed().values():
            try:
                beats.append(json.loads(data))
            except json.JSONDecodeError:
                continue
        return sorted(beats, key=lambda b: b.get("rank", 0))
