"""Run and rank health, stragglers, throughput and ETA: pure functions over run records.

Every threshold is derived from the records themselves: how often ranks beat (``interval_s``
in their heartbeats) and how long their recent steps took.

A rank is
  ok            beating and finishing steps;
  waiting       beating, but no step finished for ``waiting_after_s`` (blocked in a collective
                for a peer, reading data, saving): its own thread is alive;
  unresponsive  no beat for ``unresponsive_after_s`` (three missed beats): frozen, swapped out,
                stopped, or just died;
  dead          no beat for ``dead_after_s``, a last beat saying it failed, or a failure recorded
                for it after its last beat;
  exited        a last beat saying it stopped by plan, or silent after the run ended.
"""

from __future__ import annotations

import statistics
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ops.heartbeat import DEFAULT_INTERVAL_S

RankState = Literal["ok", "waiting", "unresponsive", "dead", "exited"]
RunState = Literal["starting", "running", "restarting", "preempted", "stalled", "finished", "failed"]

LIFECYCLE = {
    "start": "running",
    "resume": "running",
    "restart": "restarting",
    "failure": "failed",
    "preemption": "preempted",
    "finish": "finished",
}
TERMINAL_STATES = ("finished", "failed", "preempted")

MISSED_BEATS_UNRESPONSIVE = 3
MISSED_BEATS_DEAD = 30
DEAD_AFTER_MIN_S = 60.0
WAITING_STEP_MULTIPLE = 5.0
WAITING_AFTER_MIN_S = 2.0
STRAGGLER_RATIO = 1.5
THROUGHPUT_WINDOW_ROWS = 50


class Heartbeat(BaseModel):
    """One rank's last beat as ``ops.heartbeat`` writes it, every beat with the interval its rank beats at."""

    model_config = ConfigDict(extra="ignore")

    rank: int
    time: float
    host: str = "?"
    pid: int | None = None
    step: int | None = None
    step_time_s: float | None = None
    last_step_at: float | None = None
    started_at: float | None = None
    interval_s: float = Field(gt=0)
    state: str = "running"


class HealthThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    waiting_after_s: float = Field(description="beating but no step finished for this long: waiting")
    unresponsive_after_s: float = Field(description="no beat for this long: unresponsive")
    dead_after_s: float = Field(description="no beat for this long: dead")
    straggler_ratio: float = Field(description="a step time this many times the median marks a straggler")


class RankHealth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int
    host: str
    pid: int | None
    step: int | None
    step_time_s: float | None = Field(description="duration of the rank's last step")
    idle_s: float = Field(description="time since the rank's last finished step, as of its last beat")
    age_s: float = Field(description="time since the rank's last beat")
    state: RankState
    straggler: bool


class StepTimeSpread(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_s: float
    median_s: float
    max_s: float


class RankReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ranks: list[RankHealth]
    thresholds: HealthThresholds
    step_time: StepTimeSpread | None
    stragglers: list[int]


class Throughput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps_per_s: float | None
    tokens_per_s: float | None
    mfu: float | None


def health_thresholds(beat_intervals: list[float], step_times: list[float]) -> HealthThresholds:
    interval = statistics.median(beat_intervals) if beat_intervals else DEFAULT_INTERVAL_S
    step = statistics.median(step_times) if step_times else 0.0
    return HealthThresholds(
        waiting_after_s=max(WAITING_AFTER_MIN_S, WAITING_STEP_MULTIPLE * step),
        unresponsive_after_s=MISSED_BEATS_UNRESPONSIVE * interval,
        dead_after_s=max(DEAD_AFTER_MIN_S, MISSED_BEATS_DEAD * interval),
        straggler_ratio=STRAGGLER_RATIO,
    )


def rank_state(
    beat: Heartbeat, now: float, thresholds: HealthThresholds, run_over: bool, failed_at: float | None = None
) -> RankState:
    """State of one rank; ``failed_at``: time of the newest failure recorded for this rank, if any."""
    if beat.state == "failed" or (failed_at is not None and failed_at >= beat.time):
        return "dead"
    if beat.state == "exited":
        return "exited"
    age = now - beat.time
    if age > thresholds.unresponsive_after_s:
        if run_over:
            return "exited"
        return "dead" if age > thresholds.dead_after_s else "unresponsive"
    if _idle(beat) > thresholds.waiting_after_s:
        return "waiting"
    return "ok"


def _idle(beat: Heartbeat) -> float:
    since = beat.last_step_at if beat.last_step_at is not None else beat.started_at
    return max(0.0, beat.time - since) if since is not None else 0.0


def assess_ranks(
    beats: list[Heartbeat], now: float, run_over: bool = False, failures: dict[int, float] | None = None
) -> RankReport:
    """Health of every rank, the step-time spread of the live ones and who among them straggles.

    ``failures``: rank → time of the newest failure event naming it.
    """
    failures = failures or {}
    step_times = [b.step_time_s for b in beats if b.step_time_s is not None]
    thresholds = health_thresholds([b.interval_s for b in beats], step_times)
    states = {b.rank: rank_state(b, now, thresholds, run_over, failures.get(b.rank)) for b in beats}
    live = [b for b in beats if states[b.rank] in ("ok", "waiting") and b.step_time_s is not None]
    spread = None
    stragglers: list[int] = []
    if live:
        times = [b.step_time_s for b in live]
        median = statistics.median(times)
        spread = StepTimeSpread(min_s=min(times), median_s=median, max_s=max(times))
        if len(live) > 1:
            stragglers = sorted(b.rank for b in live if b.step_time_s > thresholds.straggler_ratio * median)
    ranks = [
        RankHealth(
            rank=b.rank,
            host=b.host,
            pid=b.pid,
            step=b.step,
            step_time_s=b.step_time_s,
            idle_s=_idle(b),
            age_s=max(0.0, now - b.time),
            state=states[b.rank],
            straggler=b.rank in stragglers,
        )
        for b in sorted(beats, key=lambda b: b.rank)
    ]
    return RankReport(ranks=ranks, thresholds=thresholds, step_time=spread, stragglers=stragglers)


def run_state(events: list[dict[str, Any]], ranks: list[RankHealth]) -> RunState:
    """The run's state from its last lifecycle event and, while it runs, from its ranks."""
    lifecycle = next((LIFECYCLE[e["event"]] for e in reversed(events) if e.get("event") in LIFECYCLE), None)
    if lifecycle is not None and lifecycle != "running":
        return lifecycle
    if not ranks:
        return "running" if lifecycle else "starting"
    return "running" if any(r.state == "ok" for r in ranks) else "stalled"


def failures_by_rank(events: list[dict[str, Any]]) -> dict[int, float]:
    """Rank → time of the newest failure or restart event that names it (itself or in its ``failures``)."""
    out: dict[int, float] = {}
    for e in events:
        if e.get("event") not in ("failure", "restart"):
            continue
        named = [e.get("rank")] + [f.get("rank") for f in e.get("failures") or [] if isinstance(f, dict)]
        for rank in named:
            if isinstance(rank, int):
                out[rank] = max(out.get(rank, 0.0), float(e.get("time", 0.0)))
    return out


def recent_throughput(rows: list[dict[str, Any]], window: int = THROUGHPUT_WINDOW_ROWS) -> Throughput:
    """Steps/s, tokens/s and MFU over the last ``window`` metrics rows of the current attempt.

    A restart logs steps again from its checkpoint; rows before the last step that went
    backwards belong to an earlier attempt and are left out.
    """
    start = 0
    for i in range(1, len(rows)):
        if (rows[i].get("step") or 0) <= (rows[i - 1].get("step") or 0):
            start = i
    recent = rows[max(start, len(rows) - window) :]
    steps_per_s = None
    if len(recent) >= 2:
        dt = recent[-1].get("time", 0.0) - recent[0].get("time", 0.0)
        ds = (recent[-1].get("step") or 0) - (recent[0].get("step") or 0)
        steps_per_s = ds / dt if dt > 0 and ds > 0 else None
    return Throughput(steps_per_s=steps_per_s, tokens_per_s=_mean(recent, "tokens_per_s"), mfu=_mean(recent, "mfu"))


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return sum(values) / len(values) if values else None


def eta_seconds(step: int | None, total_steps: int | None, steps_per_s: float | None) -> float | None:
    if step is None or not total_steps or not steps_per_s:
        return None
    return max(0, total_steps - step) / steps_per_s
