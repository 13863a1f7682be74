"""Training and evaluation scalars for the viewers people already use: TensorBoard, and Weights & Biases offline.

``train.log_to`` names them; the run records stay the source of truth (``kiln metrics``), these are
copies.  Object stores cannot append, so TensorBoard's events are written as segments: each flush
turns the scalars buffered since the last one into one complete event file under
``RUN_URL/tensorboard/``, named so that names sort in the order written.  TensorBoard reads a
folder's files in name order and, meeting a step it has already seen (a resumed attempt), drops the
older values from that step on: the same resolution as ``kiln metrics``.  Like the records, a write
never blocks or crashes training: rows wait in a buffer that a background thread flushes.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import socket
import sys
import threading
import time
import warnings
from typing import Any, Iterable

from ops import storage

TENSORBOARD_DIR = "tensorboard"
BACKENDS = ("tensorboard", "wandb")
LOCAL_FLUSH_EVERY_S = 1.0
OBJECT_FLUSH_EVERY_S = 30.0  # each flush is one PUT of one small event file
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

Scalar = tuple[int, float, str, float]  # step, wall time, tag, value


def missing_backends(backends: Iterable[str]) -> list[str]:
    """The backends among ``backends`` whose package this Python cannot import."""
    import importlib.util

    return [b for b in backends if importlib.util.find_spec(b) is None]


def missing_backend_message(backend: str) -> str:
    return f"{backend} is not installed for {sys.executable}: `{sys.executable} -m pip install {backend}`, or leave it out"


def scalars_of(step: int, values: dict[str, Any], prefix: str, wall_time: float) -> list[Scalar]:
    """The finite numbers of ``values`` as scalars tagged ``prefix/key`` (None, NaN and non-numbers left out)."""
    import math

    return [
        (step, wall_time, f"{prefix}/{key}", float(value))
        for key, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ]


def event_file(scalars: list[Scalar], starts_attempt: bool = False) -> bytes:
    """One complete TensorBoard event file holding ``scalars``, one event per step.

    ``starts_attempt``: the scalars are the first of a (re)started process, so the file begins with
    the session-start event by which TensorBoard drops every value from that step on.
    """
    from itertools import groupby

    from tensorboard.compat.proto.event_pb2 import Event, SessionLog
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.record_writer import RecordWriter

    buffer = io.BytesIO()
    records = RecordWriter(buffer)
    records.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
    if starts_attempt and scalars:
        start = Event(wall_time=scalars[0][1], step=scalars[0][0], session_log=SessionLog(status=SessionLog.START))
        records.write(start.SerializeToString())
    for (step, wall_time), group in groupby(scalars, key=lambda s: (s[0], s[1])):
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for _, _, tag, value in group])
        records.write(Event(wall_time=wall_time, step=step, summary=summary).SerializeToString())
    return buffer.getvalue()


_last_stamp_us = 0
_stamp_lock = threading.Lock()


def _write_stamp_us() -> int:
    """The time in µs, strictly increasing within this process even when two segments share a clock tick."""
    global _last_stamp_us
    with _stamp_lock:
        _last_stamp_us = max(time.time_ns() // 1000, _last_stamp_us + 1)
        return _last_stamp_us


def segment_name() -> str:
    """A new event file's name: TensorBoard's ``tfevents`` marker, then the time in µs so names sort as written."""
    host = _UNSAFE.sub("-", socket.gethostname()) or "host"
    return f"events.out.tfevents.{_write_stamp_us():018d}.{host}.{os.getpid()}.{secrets.token_hex(3)}"


def write_tensorboard_segment(run: storage.Place, scalars: list[Scalar], starts_attempt: bool = False) -> None:
    if scalars:
        data = event_file(scalars, starts_attempt)
        storage.write_bytes(storage.join(run, TENSORBOARD_DIR, segment_name()), data)


def log_eval(run: storage.Place, backends: Iterable[str], step: int, tasks: dict[str, dict[str, Any]]) -> None:
    """One evaluation's values as ``eval/TASK/KEY`` scalars at its step, in one segment (TensorBoard only: a
    wandb offline run belongs to the training process)."""
    if "tensorboard" in backends:
        now = time.time()
        scalars = [s for task, values in tasks.items() for s in scalars_of(step, values, f"eval/{task}", now)]
        write_tensorboard_segment(run, scalars)


class TensorBoardSegments:
    """Buffered scalars, flushed as event-file segments every ``flush_every_s`` by a background thread."""

    def __init__(self, run: storage.Place, flush_every_s: float):
        self.run, self.flush_every_s = run, flush_every_s
        self._buffer: list[Scalar] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._warned = False
        self._started = False  # whether this process's first segment, which starts an attempt, is written
        self._thread = threading.Thread(target=self._run, name="kiln-tensorboard", daemon=True)
        self._thread.start()

    def add(self, scalars: list[Scalar]) -> None:
        with self._lock:
            self._buffer.extend(scalars)

    def flush(self) -> bool:
        """Write the buffered scalars as one segment; False when storage refused them (they stay buffered)."""
        with self._lock:
            scalars, self._buffer = self._buffer, []
        try:
            write_tensorboard_segment(self.run, scalars, starts_attempt=not self._started)
            self._started = self._started or bool(scalars)
        except Exception as exc:  # storage of any kind: keep the scalars, never crash training; the next flush retries
            with self._lock:
                self._buffer[:0] = scalars
            if not self._warned:
                warnings.warn(f"TensorBoard events not written to {self.run}, will retry: {exc}", stacklevel=2)
                self._warned = True
            return False
        return True

    def close(self) -> bool:
        self._stop.set()
        self._wake.set()
        self._thread.join()
        return self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_every_s)
            self.flush()


class WandbOffline:
    """A Weights & Biases run in offline mode (``wandb sync`` uploads it later), in ``WANDB_DIR`` or the current
    folder, named after the run folder."""

    def __init__(self, run_url: str):
        import wandb

        self.run = wandb.init(mode="offline", project="kiln", name=run_url.rstrip("/").rsplit("/", 1)[-1])

    def add(self, scalars: list[Scalar]) -> None:
        by_step: dict[int, dict[str, float]] = {}
        for step, _, tag, value in scalars:
            by_step.setdefault(step, {})[tag] = value
        for step, values in sorted(by_step.items()):
            self.run.log(values, step=step)

    def close(self) -> bool:
        self.run.finish()
        return True


class ScalarLogs:
    """The copies ``train.log_to`` asks for of one process's scalars (rank 0's metrics, an evaluation's results)."""

    def __init__(
        self,
        run: storage.Place,
        backends: Iterable[str],
        flush_every_s: float | None = None,
    ):
        backends = list(dict.fromkeys(backends))
        for backend in missing_backends(backends):
            raise ValueError(f"train.log_to: {missing_backend_message(backend)}")
        if flush_every_s is None:
            flush_every_s = LOCAL_FLUSH_EVERY_S if storage.is_local(run) else OBJECT_FLUSH_EVERY_S
        self.sinks: list[TensorBoardSegments | WandbOffline] = []
        if "tensorboard" in backends:
            self.sinks.append(TensorBoardSegments(run, flush_every_s))
        if "wandb" in backends:
            self.sinks.append(WandbOffline(str(run)))

    def add(self, step: int, values: dict[str, Any], prefix: str = "train") -> None:
        scalars = scalars_of(step, values, prefix, time.time())
        for sink in self.sinks:
            sink.add(scalars)

    def close(self) -> bool:
        return all([sink.close() for sink in self.sinks])
