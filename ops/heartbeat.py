"""A rank's heartbeat, written by a background thread so that it tells apart "blocked" from "frozen".

A rank waiting in a collective for a peer still beats (its thread runs while the main thread
waits), only its last step grows old; a stopped, swapped-out or dead process stops beating.
``ops.health`` reads these beats.  The training loop only calls ``step_done`` (a few attribute
writes under a lock); storage is touched by the thread alone, so a slow or failing store never
holds up a step.
"""

from __future__ import annotations

import sys
import threading
import time

from ops.records import RunRecords

DEFAULT_INTERVAL_S = 10.0


class HeartbeatThread:
    def __init__(self, records: RunRecords, rank: int, interval_s: float = DEFAULT_INTERVAL_S):
        self.records = records
        self.rank = rank
        self.interval_s = interval_s
        self.started_at = time.time()
        self._step = 0
        self._step_time_s: float | None = None
        self._last_step_at: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        """Beat now (the rank is alive before its first, possibly long, step) and every ``interval_s`` after."""
        self._beat("running")
        self._thread = threading.Thread(target=self._run, name=f"kiln-heartbeat-{self.rank}", daemon=True)
        self._thread.start()

    def at_step(self, step: int) -> None:
        """The step the rank stands at without having run one (a resume)."""
        with self._lock:
            self._step = step

    def step_done(self, step: int, step_time_s: float) -> None:
        with self._lock:
            self._step, self._step_time_s, self._last_step_at = step, step_time_s, time.time()

    def stop(self, failed: bool = False) -> None:
        """Stop beating and leave a last beat that says the rank exited (``failed``: not by plan)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._beat("failed" if failed else "exited")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._beat("running")

    def _beat(self, state: str) -> None:
        with self._lock:
            fields = {"step_time_s": self._step_time_s, "last_step_at": self._last_step_at, "step": self._step}
        try:
            self.records.heartbeat(
                self.rank, fields.pop("step"), state=state, started_at=self.started_at, interval_s=self.interval_s, **fields
            )
        except Exception as exc:  # a store that is down must not end the rank; the next beat tries again
            if not self._failing:
                print(
                    f"kiln: rank {self.rank}: heartbeat not written ({type(exc).__name__}: {exc}); retrying",
                    file=sys.stderr,
                    flush=True,
                )
            self._failing = True
        else:
            self._failing = False
