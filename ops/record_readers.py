"""Incremental readers of run records: each call fetches only what changed since the previous one.

``StreamFollower`` merges every writer's segments of one stream, reading each file from the
byte where it stopped and only up to its last complete line, so a half-written last line is picked up once it is whole.
``ChangedFiles`` returns the small whole-object records (heartbeats, evaluation results)
that are new or were rewritten since the last call.
"""

from __future__ import annotations

import json
from typing import Any

from ops import storage
from ops.record_layout import partition_start

# Partitions this close to the newest one are listed again at every call: a writer whose clock
# runs behind, or a slow flush, can still add segments to them.
RELIST_WINDOW_S = 2 * 3600.0


def parse_lines(data: bytes) -> list[dict[str, Any]]:
    """JSON objects of ``data``, one per line; a line cut by a crash or a failed write is skipped."""
    rows = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _by_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: r.get("time", 0.0) if isinstance(r.get("time"), (int, float)) else 0.0)


def fresh_listing(fs, path: str) -> list[dict[str, Any]]:
    """Entries directly under ``path`` as the store has them now (empty when it does not exist)."""
    fs.invalidate_cache(path)  # object-store clients cache listings; a follower needs the current one
    try:
        return storage.with_retries(lambda: fs.ls(path, detail=True))
    except FileNotFoundError:
        return []


class StreamFollower:
    """Rows of one record stream (``metrics/train``, ``events``) written since the last call, oldest first."""

    def __init__(self, run: storage.Place, stream: str):
        self.fs, self.root = storage.filesystem(storage.join(run, stream))
        self.consumed: dict[str, int] = {}
        self.listed: set[str] = set()

    def new_rows(self) -> list[dict[str, Any]]:
        grown = [
            (path, self.consumed.get(path, 0), size)
            for path, size in self._sizes().items()
            if size > self.consumed.get(path, 0)
        ]
        if not grown:
            return []
        paths, starts, ends = zip(*grown)
        chunks = storage.with_retries(lambda: self.fs.cat_ranges(list(paths), list(starts), list(ends), on_error="raise"))
        rows: list[dict[str, Any]] = []
        for path, start, chunk in zip(paths, starts, chunks):
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self.consumed[path] = start + len(complete)
            rows.extend(parse_lines(complete))
        return _by_time(rows)

    def _sizes(self) -> dict[str, int]:
        sizes = {}
        partitions = {
            e["name"].rstrip("/"): partition_start(e["name"].rstrip("/").rsplit("/", 1)[-1])
            for e in fresh_listing(self.fs, self.root)
            if e.get("type") == "directory"
        }
        partitions = {p: start for p, start in partitions.items() if start is not None}
        newest = max(partitions.values(), default=0.0)
        for path, start in sorted(partitions.items()):
            if path in self.listed and start < newest - RELIST_WINDOW_S:
                continue
            for entry in fresh_listing(self.fs, path):
                if entry.get("type") == "file" and entry["name"].endswith(".jsonl"):
                    sizes[entry["name"]] = int(entry.get("size") or 0)
            self.listed.add(path)
        return sizes


def _version(entry: dict[str, Any]) -> tuple:
    """What tells a rewritten object from the one read before: size plus whatever the store reports."""
    return tuple(str(entry.get(k)) for k in ("size", "mtime", "ETag", "LastModified", "etag", "last_modified"))


class ChangedFiles:
    """Objects directly under one folder ending in ``suffix`` that are new or rewritten since the last call."""

    def __init__(self, folder: storage.Place, suffix: str = ".json"):
        self.fs, self.root = storage.filesystem(folder)
        self.suffix = suffix
        self.seen: dict[str, tuple] = {}

    def changed(self) -> dict[str, bytes]:
        """Base name → content of each new or rewritten object (one vanished while read is left out)."""
        fresh = {}
        for entry in fresh_listing(self.fs, self.root):
            path = entry["name"]
            if entry.get("type") == "file" and path.endswith(self.suffix) and self.seen.get(path) != _version(entry):
                fresh[path] = _version(entry)
        if not fresh:
            return {}
        contents = storage.with_retries(lambda: self.fs.cat(list(fresh), on_error="omit"))
        self.seen.update({path: fresh[path] for path in contents})
        return {path.rsplit("/", 1)[-1]: data for path, data in contents.items()}
