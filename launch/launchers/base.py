"""The launcher interface and the one loop that drives every launcher.

A launcher knows how to start the ranks of a training job once (an *attempt*) and how to
ask them to save and stop.  :func:`run_job` does the rest the same way for all of them:
stop signals, restarts up to ``train.max_restarts``, failure and restart events, and the
progress bar.  Adding a launcher is one new module with one :class:`Launcher` subclass.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict, Field

from launch.progress import follow_training
from llm.checkpoint import latest_committed_step
from llm.job import TrainJob
from llm.exit_codes import REQUEUE_EXIT_CODE, STOP_SIGNALS
from ops.rank_failure import RankFailure
from ops.records import RunRecords

if TYPE_CHECKING:
    from launch.config import KilnConfig

# Ctrl-C asks for a save and a clean stop too.
HANDLED_SIGNALS = (*STOP_SIGNALS, signal.SIGINT)


class AttemptResult(BaseModel):
    """How one attempt ended: its exit code, and the ranks that failed when the launcher can tell."""

    model_config = ConfigDict(extra="forbid")
    exit_code: int
    failures: list[RankFailure] = Field(default_factory=list)


class Launcher(ABC):
    """One way of starting the ranks of a job.

    ``restarts_failed_attempts``: whether :func:`run_job` restarts a failed attempt up to
    ``train.max_restarts`` times.  A launcher whose backend restarts ranks on its own (Ray
    Train's FailureConfig) or whose ranks are not its children (started by srun) says no.
    """

    name: ClassVar[str]
    restarts_failed_attempts: ClassVar[bool] = True
    shows_progress: ClassVar[bool] = True

    def __init__(self, job: TrainJob):
        self.job = job

    @classmethod
    def from_config(cls, cfg: "KilnConfig") -> "Launcher":
        return cls(cfg.train_job())

    @abstractmethod
    def run_attempt(self, attempt: int) -> AttemptResult:
        """Start the ranks and block until every rank process of this attempt has exited."""

    @abstractmethod
    def request_stop(self, reason: str) -> None:
        """Ask the running ranks to save at the next step and stop.  Called from a signal handler:
        it must return at once."""

    def session(self) -> contextlib.AbstractContextManager:
        """What every attempt runs inside (a connection to a cluster); entered before the stop signals'
        handlers are installed, so a client library that installs its own cannot replace them."""
        return contextlib.nullcontext()

    def close(self) -> None:
        """Release what the launcher made (temporary folders); called once, after the last attempt."""

    def __enter__(self) -> "Launcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StopSignals:
    """Turns SIGTERM, SIGUSR1, SIGUSR2 and SIGINT into one stop request to the launcher."""

    def __init__(self, launcher: Launcher):
        self.launcher = launcher
        self.reason: str | None = None

    def _handle(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self.reason is None:
            self.reason = name
            print(f"kiln: {name} received: the ranks save at the next step, then stop", file=sys.stderr)
        self.launcher.request_stop(self.reason)

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopSignals"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in HANDLED_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def run_job(launcher: Launcher) -> int:
    """Run the job to the end; 0 when done, 75 when stopped to be requeued, else the failing exit code."""
    job = launcher.job
    records = RunRecords(job.run)
    max_restarts = job.train.max_restarts
    attempt = 0
    with launcher.session(), StopSignals(launcher).installed() as stop:
        while True:
            started = time.time()
            progress = follow_training(job) if launcher.shows_progress else contextlib.nullcontext()
            with progress:
                result = launcher.run_attempt(attempt)
            if result.exit_code == REQUEUE_EXIT_CODE or records.preempted_since(started):
                return REQUEUE_EXIT_CODE  # the ranks saved on a stop request
            if result.exit_code == 0:
                return 0
            if stop.reason is not None:
                return REQUEUE_EXIT_CODE  # stopped while failing: resume from the last committed checkpoint
            failures = [f.model_dump(exclude_none=True) for f in result.failures]
            if not launcher.restarts_failed_attempts or attempt >= max_restarts:
                records.event(
                    "failure",
                    launcher=launcher.name,
                    exit_code=result.exit_code,
                    failures=failures,
                    attempts=attempt + 1,
                    max_restarts=max_restarts,
                )
                return result.exit_code
            attempt += 1
            records.event(
                "restart",
                launcher=launcher.name,
                exit_code=result.exit_code,
                failures=failures,
                attempt=attempt,
                max_restarts=max_restarts,
                step=latest_committed_step(job.run) or 0,
            )
