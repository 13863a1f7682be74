"""``kiln status`` and ``kiln monitor``: a summary and a live rich dashboard built only from run records.

Both read nothing but files under the run URL (any fsspec URL), so they work from
anywhere, during or after a run, without touching the job.
"""
from __future__ import annotations

import time
from typing import Any

import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from ops import storage
from ops.checkpoints import list_checkpoints
from ops.records import RunRecords

SPARK = "▁▂▃▄▅▆▇█"
STALE_HEARTBEAT_S = 120.0
TERMINAL_EVENTS = {"finish": "finished", "failure": "failed", "preemption": "preempted"}


def bucket_means(values: list[float], width: int) -> list[float]:
    """``values`` averaged into at most ``width`` consecutive buckets, so a long noisy curve shows its trend."""
    if len(values) <= width:
        return list(values)
    edges = [round(i * len(values) / width) for i in range(width + 1)]
    return [sum(values[a:b]) / (b - a) for a, b in zip(edges, edges[1:])]


def sparkline(values: list[float], width: int = 60) -> str:
    """Unicode sparkline of the whole curve in ``width`` cells (min at the bottom, max at the top)."""
    values = bucket_means([v for v in values if v is not None], width)
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1) + 0.5))] for v in values)


def run_state(events: list[dict], heartbeats: list[dict], now: float) -> str:
    """finished / failed / preempted / running / stalled / not started, from the last events and heartbeats."""
    for event in reversed(events):
        kind = event.get("event")
        if kind in TERMINAL_EVENTS:
            return TERMINAL_EVENTS[kind]
        if kind in ("start", "resume", "restart"):
            break
    if not events and not heartbeats:
        return "not started"
    newest = max((b.get("time", 0) for b in heartbeats), default=0)
    return "running" if now - newest < STALE_HEARTBEAT_S else "stalled"


def _total_steps(run_url: str, options: dict | None) -> int | None:
    url = storage.join(run_url, "config.yaml")
    if not storage.exists(url, options):
        return None
    config = yaml.safe_load(storage.read_text(url, options)) or {}
    return (config.get("train") or {}).get("steps")


def _evals(run_url: str, options: dict | None) -> list[dict]:
    root = storage.join(run_url, "eval")
    return [storage.read_json(storage.join(root, n), options) for n in storage.list_names(root, options) if n.endswith(".json")]


def run_status(run_url: str, options: dict | None = None, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    records = RunRecords(run_url, options)
    metrics = records.metrics()
    events = records.events()
    beats = records.heartbeats()
    checkpoints = list_checkpoints(run_url, options)
    last = metrics[-1] if metrics else {}
    committed = [c.step for c in checkpoints if c.committed]
    return {
        "run_url": run_url,
        "state": run_state(events, beats, now),
        "step": last.get("step"),
        "total_steps": _total_steps(run_url, options),
        "latest": last,
        "loss_history": [m.get("loss") for m in metrics],
        "ranks": [{**b, "age_s": round(now - b.get("time", now), 1)} for b in beats],
        "latest_checkpoint": max(committed) if committed else None,
        "checkpoints": [c.step for c in checkpoints],
        "events": events[-8:],
        "evals": _evals(run_url, options),
    }


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "—"
    return format(value, spec) if spec else str(value)


def render(status: dict[str, Any]):
    last = status["latest"]
    progress = f"{_fmt(status['step'])}/{_fmt(status['total_steps'])}"
    header = Table.grid(padding=(0, 2))
    for label, value in (
        ("state", status["state"]),
        ("step", progress),
        ("loss", _fmt(last.get("loss"), ".4f")),
        ("lr", _fmt(last.get("lr"), ".2e")),
        ("tokens/s", _fmt(last.get("tokens_per_s"), ",.0f")),
        ("MFU", _fmt(last.get("mfu"), ".1%")),
        ("checkpoint", _fmt(status["latest_checkpoint"])),
    ):
        header.add_row(label, value)
    loss = Panel(sparkline(status["loss_history"]) or "no metrics yet", title="loss", expand=True)

    ranks = Table(title="ranks", expand=True)
    for col in ("rank", "host", "pid", "step", "age s"):
        ranks.add_column(col)
    for r in status["ranks"]:
        ranks.add_row(str(r.get("rank")), str(r.get("host")), str(r.get("pid")), str(r.get("step")), f"{r['age_s']:.0f}")

    events = Table(title="events", expand=True)
    events.add_column("time")
    events.add_column("event")
    events.add_column("detail")
    for e in status["events"]:
        detail = {k: v for k, v in e.items() if k not in ("time", "event", "host", "pid")}
        events.add_row(time.strftime("%H:%M:%S", time.localtime(e.get("time", 0))), str(e.get("event")), str(detail))

    parts = [Panel(header, title=status["run_url"]), loss, ranks, events]
    if status["evals"]:
        evals = Table(title="evaluations", expand=True)
        for col in ("step", "loss", "ppl", "bits/byte", "unigram loss"):
            evals.add_column(col)
        for ev in status["evals"]:
            evals.add_row(
                str(ev.get("step")), _fmt(ev.get("loss"), ".4f"), _fmt(ev.get("perplexity"), ".2f"),
                _fmt(ev.get("bits_per_byte"), ".4f"), _fmt(ev.get("unigram_loss"), ".4f"),
            )
        parts.append(evals)
    return Group(*parts)


def print_status(status: dict[str, Any]) -> None:
    Console().print(render(status))


def monitor(run_url: str, once: bool = False, interval_s: float = 2.0, options: dict | None = None) -> None:
    """Refresh the dashboard until the run reaches a terminal state (or Ctrl-C); ``once`` prints one frame."""
    if once:
        print_status(run_status(run_url, options))
        return
    with Live(render(run_status(run_url, options)), refresh_per_second=4, screen=False) as live:
        try:
            while True:
                status = run_status(run_url, options)
                live.update(render(status))
                if status["state"] in TERMINAL_EVENTS.values():
                    return
                time.sleep(interval_s)
        except KeyboardInterrupt:
            return
