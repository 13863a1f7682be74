"""Fetching shards ahead of the reader, as far ahead as the download and consumption rates ask."""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

# Weight of the newest measurement in the running averages of the two rates.
RATE_SMOOTHING = 0.3
START_DEPTH = 2


def prefetch_depth(fetch_s: float | None, consume_s: float | None, room: int) -> int:
    """Shards to keep fetched ahead of the reader: enough that the next download finishes before
    the reader gets to it, one more for jitter, never more than ``room`` (shards that fit beside
    what the reader holds).  ``fetch_s``: seconds to download a shard; ``consume_s``: seconds the
    reader spends per shard; None until measured."""
    if room <= 0:
        return 0
    if fetch_s is None or consume_s is None:
        return min(START_DEPTH, room)
    return max(1, min(room, math.ceil(fetch_s / max(consume_s, 1e-9)) + 1))


def _smoothed(previous: float | None, value: float) -> float:
    return value if previous is None else (1 - RATE_SMOOTHING) * previous + RATE_SMOOTHING * value


class Prefetcher:
    """A daemon thread that fetches the first shards of the reader's upcoming list.

    ``fetch(shard)`` returns "present", "fetched" or "no room"; ``room()`` says how many shards
    fit beside what the reader holds.  The reader calls :meth:`upcoming` after each batch.
    A failed fetch is left for the reader, which meets the same error where it can report it.
    """

    def __init__(self, fetch: Callable[[int], str], room: Callable[[], int]):
        self._fetch, self._room = fetch, room
        self._cond = threading.Condition()
        self._queue: list[int] = []
        self._generation = 0
        self._stopped = False
        self._failed: set[int] = set()
        self.fetch_s: float | None = None
        self.consume_s: float | None = None
        self._last_report: float | None = None
        self._thread = threading.Thread(target=self._run, name="kiln-shard-prefetch", daemon=True)
        self._thread.start()

    def upcoming(self, shards: list[int], started: int) -> None:
        """The shards the reader needs next, in first-use order; ``started``: shards it began since the last call."""
        now = time.perf_counter()
        if self._last_report is not None and started > 0:
            self.consume_s = _smoothed(self.consume_s, (now - self._last_report) / started)
        if started > 0 or self._last_report is None:
            self._last_report = now
        with self._cond:
            self._queue = list(shards)
            self._generation += 1
            self._cond.notify()

    def depth(self) -> int:
        return prefetch_depth(self.fetch_s, self.consume_s, self._room())

    def _run(self) -> None:
        seen = 0
        while True:
            with self._cond:
                while not self._stopped and self._generation == seen:
                    self._cond.wait()
                if self._stopped:
                    return
                seen, queue = self._generation, self._queue
            for shard in queue[: self.depth()]:
                if self._stopped or self._generation != seen:
                    break
                if shard in self._failed:
                    continue
                started = time.perf_counter()
                try:
                    outcome = self._fetch(shard)
                except Exception:  # the reader fetches it itself and reports the error
                    self._failed.add(shard)
                    continue
                if outcome == "no room":
                    break
                if outcome == "fetched":
                    self.fetch_s = _smoothed(self.fetch_s, time.perf_counter() - started)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()
