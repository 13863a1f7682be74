"""Run records: metrics, heartbeats and events under a run URL.

These files are the only interface between a running job and whoever watches it
(`kiln monitor`, `kiln status`), so they are plain JSON and readable over any
fsspec URL.

    RUN_URL/metrics/train.jsonl        one object per logged step
    RUN_URL/heartbeats/rank-00003.json last sign of life of each rank
    RUN_URL/events.jsonl               start, restart, failure, checkpoint, preemption, finish
"""
from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from ops import storage

METRICS_PATH = "metrics/train.jsonl"
EVENTS_PATH = "events.jsonl"
HEARTBEATS_DIR = "heartbeats"


def _append_jsonl(url: str, row: dict, options: dict | None) -> None:
    line = json.dumps(row, sort_keys=True) + "\n"
    fs, path = storage.filesystem(url, options)
    if storage.is_local(url):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
        return
    # Object stores cannot append: rewrite the whole object in one PUT.
    old = storage.read_text(url, options) if storage.exists(url, options) else ""
    storage.write_text(url, old + line, options)


def _read_jsonl(url: str, options: dict | None) -> list[dict]:
    if not storage.exists(url, options):
        return []
    rows = []
    for line in storage.read_text(url, options).splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write
    return rows


class MetricsFollower:
    """Reads the metrics rows appended since the last call, from a byte offset (range reads on object stores)."""

    def __init__(self, run_url: str, options: dict | None = None):
        self.url = storage.join(run_url, METRICS_PATH)
        self.options = options or {}
        self.offset = 0

    def new_rows(self) -> list[dict]:
        fs, path = storage.filesystem(self.url, self.options)
        try:
            size = fs.size(path)
        except FileNotFoundError:
            return []
        if size < self.offset:  # rewritten from scratch
            self.offset = 0
        if size == self.offset:
            return []
        with fs.open(path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        rows = []
        for line in complete.decode("utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows


class RunRecords:
    """Writer and reader of one run's records."""

    def __init__(self, run_url: str, options: dict | None = None):
        self.run_url = run_url
        self.options = options or {}

    def url(self, rel: str) -> str:
        return storage.join(self.run_url, rel)

    def log_metrics(self, row: dict[str, Any]) -> None:
        row = {"time": time.time(), **row}
        _append_jsonl(self.url(METRICS_PATH), row, self.options)

    def event(self, kind: str, **fields: Any) -> None:
        row = {"time": time.time(), "event": kind, "host": socket.gethostname(), "pid": os.getpid(), **fields}
        _append_jsonl(self.url(EVENTS_PATH), row, self.options)

    def heartbeat(self, rank: int, step: int, **fields: Any) -> None:
        beat = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "step": step, "time": time.time(), **fields}
        storage.write_json(self.url(f"{HEARTBEATS_DIR}/rank-{rank:05d}.json"), beat, self.options)

    def metrics(self) -> list[dict]:
        return _read_jsonl(self.url(METRICS_PATH), self.options)

    def events(self) -> list[dict]:
        return _read_jsonl(self.url(EVENTS_PATH), self.options)

    def preempted_since(self, since: float) -> bool:
        """Whether the ranks recorded a preemption save at or after ``since`` (a launcher's start time)."""
        return any(e.get("event") == "preemption" and e.get("time", 0) >= since for e in self.events())

    def heartbeats(self) -> list[dict]:
        beats = []
        for name in storage.list_names(self.url(HEARTBEATS_DIR), self.options):
            if name.startswith("rank-") and name.endswith(".json"):
                try:
                    beats.append(storage.read_json(self.url(f"{HEARTBEATS_DIR}/{name}"), self.options))
                except (json.JSONDecodeError, FileNotFoundError):
                    continue
        return sorted(beats, key=lambda b: b.get("rank", 0))
