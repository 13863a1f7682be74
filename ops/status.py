"""The facts ``kiln status`` and ``kiln monitor`` show, gathered from a run's records.

``RunStatus`` is the documented, versioned schema of ``kiln status --json``.  ``RunWatcher``
follows one run: each ``refresh`` reads only the records that changed since the previous one
(new metrics and event segments, rewritten heartbeats, new evaluation results, checkpoint
markers not seen yet) and returns a ``Snapshot``: the status plus the curves the dashboard
draws.  The health judgements themselves are ``ops.health``'s pure functions.
"""

from __future__ import annotations

import json
import math
import time
from array import array
from collections import deque
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from ops import storage
from ops.checkpoints import LATEST, checkpoints_url, commit_url, latest_url, parse_step
from ops.event_sentences import sentence
from ops.health import (
    LIFECYCLE,
    TERMINAL_STATES,
    HealthThresholds,
    Heartbeat,
    RankHealth,
    RunState,
    StepTimeSpread,
    assess_ranks,
    eta_seconds,
    failures_by_rank,
    recent_throughput,
    run_state,
)
from ops.record_layout import EVENTS_STREAM, HEARTBEATS_DIR, METRICS_STREAM
from ops.record_readers import ChangedFiles, StreamFollower, fresh_listing

SCHEMA_VERSION = 1
RECENT_EVENTS = 8
RECENT_ROWS = 200
MAX_CHART_POINTS = 1000

EXIT_HEALTHY = 0
EXIT_FAILED_OR_DEAD = 1
EXIT_DEGRADED = 3


class CheckpointStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int
    state: Literal["committed", "incomplete"] = Field(
        description="incomplete: no COMMITTED marker (being written, or abandoned)"
    )
    latest: bool = Field(description="named by checkpoints/latest")


class OriginStatus(BaseModel):
    """The checkpoint of another run this run started from (``train.init_from``), as its checkpoints record it."""

    model_config = ConfigDict(extra="forbid")

    run: str
    step: int
    optimizer: bool = Field(description="the source's optimizer state was carried too")
    sha256: dict[str, str] = Field(description="every file of the source checkpoint: path -> sha256")


class EvalStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int | None
    metrics: dict[str, float] = Field(description="held-out numbers: loss, perplexity, bits_per_byte, unigram_*, …")
    tasks: dict[str, dict[str, Any]] = Field(default_factory=dict, description="task name → acc, acc_norm, examples, …")
    display: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="task name → how to show its values: type, metrics [{key, label, format}]"
    )


class EventStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time: float
    event: str
    rank: int | None = Field(description="the rank the event names, if any")
    sentence: str


class RunStatus(BaseModel):
    """``kiln status --json``: one object, stable field names; new fields may be added, none renamed.

    Exit code of ``kiln status``: 0 healthy (starting, running, restarting, preempted, finished;
    no rank unresponsive or dead), 1 failed or a rank dead, 3 stalled or a rank unresponsive,
    2 no run at the URL.  Times are seconds; ``None`` means not known yet.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    run_url: str
    name: str | None
    state: RunState
    step: int | None = Field(description="last step logged in the metrics")
    total_steps: int | None
    tokens: int | None = Field(description="tokens trained on up to ``step``")
    total_tokens: int | None
    loss: float | None
    lr: float | None
    tokens_per_s: float | None = Field(description="mean over the recent steps of the current attempt")
    mfu: float | None
    elapsed_s: float | None = Field(description="since the first start, until now or until the run ended")
    eta_s: float | None = Field(description="to total_steps at the recent step rate, while running")
    last_checkpoint: CheckpointStatus | None = Field(description="the newest committed checkpoint")
    origin: OriginStatus | None = Field(default=None, description="where the run started from, when train.init_from set it")
    checkpoints: list[CheckpointStatus]
    ranks: list[RankHealth]
    stragglers: list[int] = Field(description="ranks whose step time is far above the median")
    step_time: StepTimeSpread | None = Field(description="min / median / max step time of the live ranks")
    thresholds: HealthThresholds
    last_eval: EvalStatus | None
    recent_events: list[EventStatus]
    updated_at: float


class RunSeries(BaseModel):
    """Curves for the charts: at most MAX_CHART_POINTS points, each the mean of consecutive logged steps
    (NaN where no row had the value)."""

    model_config = ConfigDict(extra="forbid")

    step: list[float]
    loss: list[float]
    lr: list[float]
    tokens_per_s: list[float]


class Snapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: RunStatus
    series: RunSeries


def status_exit_code(status: RunStatus) -> int:
    states = {r.state for r in status.ranks}
    if status.state == "failed" or "dead" in states:
        return EXIT_FAILED_OR_DEAD
    if status.state == "stalled" or "unresponsive" in states:
        return EXIT_DEGRADED
    return EXIT_HEALTHY


def bucket_means(values: np.ndarray, buckets: int) -> list[float]:
    """``values`` averaged over at most ``buckets`` runs of consecutive points, ignoring NaNs."""
    if len(values) <= buckets:
        return values.tolist()
    edges = np.unique(np.linspace(0, len(values), buckets + 1).astype(np.int64)[:-1])
    present = ~np.isnan(values)
    sums = np.add.reduceat(np.where(present, values, 0.0), edges)
    counts = np.add.reduceat(present.astype(np.int64), edges)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).tolist()


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def eval_status(result: dict[str, Any]) -> EvalStatus:
    metrics = {
        k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
    }
    tasks = result.get("tasks") if isinstance(result.get("tasks"), dict) else {}
    display = result.get("display") if isinstance(result.get("display"), dict) else {}
    return EvalStatus(
        step=result.get("step") if isinstance(result.get("step"), int) else None,
        metrics=metrics,
        tasks={str(k): v for k, v in tasks.items() if isinstance(v, dict)},
        display={str(k): v for k, v in display.items() if isinstance(v, dict)},
    )


class CheckpointFollower:
    """Checkpoint steps and their commit state; a step already seen committed is not asked again."""

    def __init__(self, run: storage.Place):
        self.run = run
        self.fs, self.path = storage.filesystem(checkpoints_url(run))
        self.committed: set[int] = set()
        self._origin: tuple[int, OriginStatus | None] | None = None

    def origin(self, step: int) -> OriginStatus | None:
        """The origin committed step ``step`` records (its COMMITTED is read once per step)."""
        if self._origin is None or self._origin[0] != step:
            try:
                record = json.loads(storage.read_bytes(commit_url(self.run, step)))
                origin = record.get("origin") if isinstance(record, dict) else None
                self._origin = (step, OriginStatus.model_validate(origin) if origin else None)
            except (OSError, ValueError):
                return None
        return self._origin[1]

    def checkpoints(self) -> list[CheckpointStatus]:
        names = {e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fresh_listing(self.fs, self.path)}
        steps = sorted(s for s in (parse_step(n) for n in names) if s is not None)
        for step in steps:
            if step not in self.committed and storage.exists(commit_url(self.run, step)):
                self.committed.add(step)
        latest = None
        if steps and LATEST in names:
            latest = parse_step(storage.read_text(latest_url(self.run)).strip())
        return [
            CheckpointStatus(step=s, state="committed" if s in self.committed else "incomplete", latest=s == latest)
            for s in steps
        ]


class RunWatcher:
    def __init__(self, run: storage.Place):
        self.run_url = str(run)
        self.metrics = StreamFollower(run, METRICS_STREAM)
        self.event_follower = StreamFollower(run, EVENTS_STREAM)
        self.beat_files = ChangedFiles(storage.join(run, HEARTBEATS_DIR))
        self.eval_files = ChangedFiles(storage.join(run, "eval"))
        self.config_file = ChangedFiles(run, suffix="/config.yaml")
        self.checkpoint_follower = CheckpointFollower(run)
        self.config: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.beats: dict[int, Heartbeat] = {}
        self.evals: dict[str, dict[str, Any]] = {}
        self.recent_rows: deque[dict[str, Any]] = deque(maxlen=RECENT_ROWS)
        self.curves = {name: array("d") for name in RunSeries.model_fields}
        self.refreshed = False

    def refresh(self, now: float | None = None) -> Snapshot:
        for data in self.config_file.changed().values():
            self.config = yaml.safe_load(data) or {}
        rows = self.metrics.new_rows()
        for row in rows:
            self.recent_rows.append(row)
            for name, curve in self.curves.items():
                curve.append(_number(row.get(name)))
        new_events = self.event_follower.new_rows()
        if new_events:
            self.events = sorted(self.events + new_events, key=lambda e: e.get("time", 0.0))
        for data in self.beat_files.changed().values():
            try:
                beat = Heartbeat.model_validate_json(data)
            except ValueError:
                continue
            self.beats[beat.rank] = beat
        for name, data in self.eval_files.changed().items():
            try:
                self.evals[name] = json.loads(data)
            except json.JSONDecodeError:
                continue
        checkpoints = self.checkpoint_follower.checkpoints()
        if not self.refreshed and not (self.config or self.events or self.recent_rows or self.beats or checkpoints):
            raise FileNotFoundError(f"{self.run_url}: no Kiln run here (no config.yaml, run records or checkpoints)")
        self.refreshed = True
        return Snapshot(
            status=self._status(time.time() if now is None else now, checkpoints),
            series=RunSeries(
                **{
                    name: bucket_means(np.frombuffer(curve, dtype=np.float64), MAX_CHART_POINTS)
                    for name, curve in self.curves.items()
                }
            ),
        )

    def _status(self, now: float, checkpoints: list[CheckpointStatus]) -> RunStatus:
        last_lifecycle = next((e for e in reversed(self.events) if e.get("event") in LIFECYCLE), None)
        over = last_lifecycle is not None and LIFECYCLE[last_lifecycle["event"]] in TERMINAL_STATES
        report = assess_ranks(self._current_beats(), now, run_over=over, failures=failures_by_rank(self.events))
        state = run_state(self.events, report.ranks)
        last = self.recent_rows[-1] if self.recent_rows else {}
        pace = recent_throughput(list(self.recent_rows))
        total_steps = self._total_steps()
        step = last.get("step")
        committed = [c for c in checkpoints if c.state == "committed"]
        return RunStatus(
            run_url=self.run_url,
            name=(self.config.get("run") or {}).get("name"),
            state=state,
            step=step,
            total_steps=total_steps,
            tokens=last.get("tokens"),
            total_tokens=self._total_tokens(total_steps),
            loss=last.get("loss"),
            lr=last.get("lr"),
            tokens_per_s=pace.tokens_per_s,
            mfu=pace.mfu,
            elapsed_s=self._elapsed(now, state),
            eta_s=eta_seconds(step, total_steps, pace.steps_per_s) if state == "running" else None,
            last_checkpoint=committed[-1] if committed else None,
            origin=self.checkpoint_follower.origin(committed[-1].step) if committed else None,
            checkpoints=checkpoints,
            ranks=report.ranks,
            stragglers=report.stragglers,
            step_time=report.step_time,
            thresholds=report.thresholds,
            last_eval=self._last_eval(),
            recent_events=[
                EventStatus(
                    time=e.get("time", 0.0),
                    event=str(e.get("event")),
                    sentence=sentence(e),
                    rank=e.get("rank") if isinstance(e.get("rank"), int) else None,
                )
                for e in self.events[-RECENT_EVENTS:]
            ],
            updated_at=now,
        )

    def _current_beats(self) -> list[Heartbeat]:
        """Beats of the ranks of the latest attempt: a run resumed on fewer ranks leaves the files of the others."""
        worlds = [e["world_size"] for e in self.events if e.get("event") == "start" and isinstance(e.get("world_size"), int)]
        return [b for b in self.beats.values() if not worlds or b.rank < worlds[-1]]

    def _total_steps(self) -> int | None:
        starts = [e["steps"] for e in self.events if e.get("event") == "start" and isinstance(e.get("steps"), int)]
        if starts:
            return starts[-1]
        steps = (self.config.get("train") or {}).get("steps")
        return steps if isinstance(steps, int) else None

    def _total_tokens(self, total_steps: int | None) -> int | None:
        batch = (self.config.get("train") or {}).get("global_batch")
        seq_len = (self.config.get("model") or {}).get("seq_len")
        if not (total_steps and isinstance(batch, int) and isinstance(seq_len, int)):
            return None
        return total_steps * batch * seq_len

    def _elapsed(self, now: float, state: str) -> float | None:
        starts = [e["time"] for e in self.events if e.get("event") == "start" and isinstance(e.get("time"), (int, float))]
        if not starts:
            return None
        end = self.events[-1].get("time", now) if state in TERMINAL_STATES else now
        return max(0.0, end - starts[0])

    def _last_eval(self) -> EvalStatus | None:
        if not self.evals:
            return None
        results = [eval_status(r) for r in self.evals.values() if isinstance(r, dict)]
        return max(results, key=lambda r: r.step if r.step is not None else -1, default=None)


def run_status(run: storage.Place, now: float | None = None) -> RunStatus:
    """One summary of the run's records (``kiln status``)."""
    return RunWatcher(run).refresh(now).status
