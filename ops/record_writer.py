"""One process's writer of a run's records: rows are buffered and flushed as segments from a background thread.

Training calls ``append`` in its hot loop, so ``append`` only adds a line to a buffer: it never
waits for storage and never raises.  A background thread flushes every few seconds (at once
after an event), and ``close`` — called by the worker, the launcher's exit and ``atexit`` —
flushes whatever is left, so rows reach storage before the process ends by any path but a
kill.  A failed flush keeps its segment and writes it again at the next flush; the failure is
reported on stderr once, and so is the recovery.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
from typing import Any, Callable

from ops.record_layout import new_writer_id, partition_of
from ops.storage import Location
from ops.segment_sinks import Segment, SegmentSink, sink_for


def _stderr(message: str) -> None:
    print(f"kiln: run records: {message}", file=sys.stderr, flush=True)


class RecordWriter:
    def __init__(
        self, sink: SegmentSink, flush_every_s: float, describe: str = "run records", report: Callable[[str], None] = _stderr
    ):
        self.sink = sink
        self.flush_every_s = flush_every_s
        self.describe = describe
        self.report = report
        self.failed_flushes = 0
        self._buffers: dict[str, list[str]] = {}
        self._pending: list[Segment] = []
        self._seq = 0
        self._lock = threading.Lock()  # guards _buffers, _seq and the thread handle
        self._flush_lock = threading.Lock()  # one flush at a time, in segment order
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def append(self, stream: str, row: dict[str, Any], urgent: bool = False) -> None:
        """Buffer one row; ``urgent`` rows (events) wake the flusher instead of waiting for its next tick."""
        line = json.dumps(row, sort_keys=True, default=str) + "\n"
        with self._lock:
            self._buffers.setdefault(stream, []).append(line)
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="kiln-records", daemon=True)
                self._thread.start()
        if urgent:
            self._wake.set()

    def pending_rows(self) -> int:
        with self._lock:
            buffered = sum(len(lines) for lines in self._buffers.values())
        return buffered + sum(s.rows for s in list(self._pending))

    def flush(self) -> bool:
        """Write every buffered row now; False when some stayed behind (they are retried at the next flush)."""
        with self._flush_lock:
            self._seal()
            while self._pending:
                segment = self._pending[0]
                try:
                    self.sink.write(segment)
                except Exception as exc:  # storage of any kind: keep the rows, never crash the caller
                    self.failed_flushes += 1
                    if self.failed_flushes == 1:
                        self.report(
                            f"could not write {self.describe} ({type(exc).__name__}: {exc}); "
                            f"keeping the rows and retrying every {self.flush_every_s:g} s"
                        )
                    return False
                self._pending.pop(0)
            if self.failed_flushes:
                self.report(f"{self.describe} written again after {self.failed_flushes} failed attempt(s)")
                self.failed_flushes = 0
            return True

    def close(self) -> bool:
        """Stop the flusher and write what is left; False (after saying so) when rows could not be written."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        written = self.flush()
        if not written:
            self.report(f"{self.pending_rows()} row(s) of {self.describe} could not be written")
        return written

    def _seal(self) -> None:
        """Turn the buffers into numbered segments; from here on a segment's bytes never change."""
        with self._lock:
            buffers, self._buffers = self._buffers, {}
            partition = partition_of(time.time())
            for stream, lines in buffers.items():
                if lines:
                    self._seq += 1
                    self._pending.append(Segment(stream, partition, self._seq, "".join(lines).encode("utf-8"), len(lines)))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            self.flush()


_writers: dict[tuple[int, str, str], RecordWriter] = {}
_writers_lock = threading.Lock()


def _key(run: Location) -> tuple[int, str, str]:
    return os.getpid(), run.url.rstrip("/"), json.dumps(dict(run.options), sort_keys=True, default=str)


def writer_for(run: Location, flush_every_s: float) -> RecordWriter:
    """This process's writer for ``run``, made on first use: every handle on the run shares its buffer.

    The key includes the pid, so a forked child starts a writer (and a writer name) of its own.
    """
    key = _key(run)
    with _writers_lock:
        writer = _writers.get(key)
        if writer is None:
            sink = sink_for(run, new_writer_id())
            writer = _writers[key] = RecordWriter(sink, flush_every_s, describe=f"the records of {run}")
            _at_exit(writer.close)
        return writer


def _at_exit(fn: Callable[[], Any]) -> None:
    """Run ``fn`` when the interpreter exits, while thread pools still take work.

    Object-store clients (s3fs over aiohttp) resolve hosts in the event loop's thread pool, and
    ``concurrent.futures`` refuses new work once its own exit hook has run, which happens before
    plain ``atexit`` handlers.  Hooks registered with threading run in reverse order, before that
    refusal when registered after it: so import ``concurrent.futures.thread`` (which registers it)
    first, then register.
    """
    import concurrent.futures.thread  # noqa: F401  (registers its exit hook before ours)

    try:
        threading._register_atexit(fn)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # another Python, or already shutting down
        atexit.register(fn)


def existing_writer(run: Location) -> RecordWriter | None:
    with _writers_lock:
        return _writers.get(_key(run))
