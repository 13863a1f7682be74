"""``kiln monitor`` and ``kiln status``: draw a run's status (``ops.status``) with rich.

This module only draws: what the facts are is ``ops.status`` and ``ops.health``'s business.
``render`` lays one frame out for a terminal of the given size: charts side by side on a
wide terminal, stacked on a narrow one, shrunk or left out when the height is short.
"""

from __future__ import annotations

import time

from rich import box
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ops import storage
from ops.charts import line_chart
from ops.event_sentences import human_count
from ops.health import RankHealth
from ops.status import RunStatus, RunWatcher, Snapshot

WIDE = 120  # columns from which the three charts, and the bottom panels, sit side by side
CHART_HEIGHT = 12  # lines of one chart when the height is not limited (--once, kiln status)
MIN_CHART_HEIGHT = 8
MAX_CHART_HEIGHT = 16
BOTTOM_RESERVE = 10  # lines kept for checkpoints, evaluation and events below the charts
MAX_RANK_ROWS = 16

RUN_STYLES = {
    "running": "bold green",
    "starting": "yellow",
    "restarting": "bold yellow",
    "stalled": "bold red",
    "failed": "bold red",
    "preempted": "bold magenta",
    "finished": "bold cyan",
}
RANK_STYLES = {"ok": "green", "waiting": "yellow", "unresponsive": "bold red", "dead": "bold white on red", "exited": "dim"}
RANK_ORDER = {"dead": 0, "unresponsive": 1, "waiting": 2, "ok": 3, "exited": 4}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _num(value: float | int | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _of(done: int | None, total: int | None, fmt=str) -> str:
    if done is None:
        return "—" if total is None else f"— / {fmt(total)}"
    if not total:
        return fmt(done)
    return f"{fmt(done)} / {fmt(total)} ({done / total:.0%})"


def header(status: RunStatus, width: int, error: str | None = None) -> Panel:
    ckpt = status.last_checkpoint
    pairs = [
        ("state", Text(status.state, style=RUN_STYLES.get(status.state, "bold"))),
        ("step", _of(status.step, status.total_steps)),
        ("tokens", _of(status.tokens, status.total_tokens, human_count)),
        ("loss", _num(status.loss, ".4f")),
        ("lr", _num(status.lr, ".2e")),
        ("tokens/s", _num(status.tokens_per_s, ",.0f")),
        ("MFU", _num(status.mfu, ".1%")),
        ("elapsed", duration(status.elapsed_s)),
        ("ETA", duration(status.eta_s)),
        ("checkpoint", f"step {ckpt.step}" if ckpt else "—"),
    ]
    if status.origin is not None:
        pairs.append(("from", f"step {status.origin.step} of {status.origin.run}"))
    per_row = 3 if width >= WIDE else 2
    grid = Table.grid(padding=(0, 1), expand=True)
    for _ in range(per_row):
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(no_wrap=True, ratio=1)
    for i in range(0, len(pairs), per_row):
        cells: list[RenderableType] = []
        for label, value in pairs[i : i + per_row]:
            cells += [label, value]
        grid.add_row(*cells)
    body: RenderableType = grid
    if error:
        body = Group(grid, Text(f"records not read: {error}", style="bold red"))
    title = Text(" · ".join(p for p in ("kiln", status.name, status.run_url) if p))
    return Panel(body, title=title, title_align="left", box=box.ROUNDED)


def _rank_row(r: RankHealth) -> list[RenderableType]:
    state = Text(r.state, style=RANK_STYLES[r.state])
    if r.straggler:
        state.append(" straggler", style="bold yellow")
    return [
        str(r.rank),
        Text(r.host),
        _num(r.step, "d"),
        duration(r.step_time_s),
        duration(r.idle_s),
        duration(r.age_s),
        state,
    ]


def ranks_panel(status: RunStatus, max_rows: int = MAX_RANK_ROWS) -> Panel:
    counts: dict[str, int] = {}
    for r in status.ranks:
        counts[r.state] = counts.get(r.state, 0) + 1
    summary = " · ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: RANK_ORDER[kv[0]]))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    for name, justify in (
        ("rank", "right"),
        ("host", "left"),
        ("step", "right"),
        ("step time", "right"),
        ("idle", "right"),
        ("beat age", "right"),
        ("state", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)
    shown = sorted(status.ranks, key=lambda r: (RANK_ORDER[r.state], not r.straggler, r.rank))[:max_rows]
    for r in shown:
        table.add_row(*_rank_row(r))
    lines: list[RenderableType] = [table]
    if len(status.ranks) > len(shown):
        lines.append(Text(f"… {len(status.ranks) - len(shown)} more ranks, all {shown[-1].state} or better", style="dim"))
    if status.step_time:
        spread = status.step_time
        text = Text(
            f"step time min {duration(spread.min_s)} · median {duration(spread.median_s)} · max {duration(spread.max_s)}"
        )
        if status.stragglers:
            text.append(f" · stragglers: rank {', '.join(map(str, status.stragglers))}", style="bold yellow")
        lines.append(text)
    t = status.thresholds
    lines.append(
        Text(
            f"waiting after {duration(t.waiting_after_s)} without a step · unresponsive after "
            f"{duration(t.unresponsive_after_s)} without a beat · dead after {duration(t.dead_after_s)}",
            style="dim",
        )
    )
    if not status.ranks:
        lines = [Text("no heartbeats yet", style="dim")]
    return Panel(Group(*lines), title=f"ranks · {summary}" if summary else "ranks", title_align="left", box=box.ROUNDED)


def charts(snapshot: Snapshot, width: int, height: int) -> RenderableType:
    """Loss, learning rate and throughput over steps: one row when wide; else loss above the other two."""
    s = snapshot.series
    specs = [("loss", s.loss), ("learning rate", s.lr), ("tokens/s", s.tokens_per_s)]
    rows = [specs] if width >= WIDE else [specs[:1], specs[1:]]
    out = []
    for row in rows:
        grid = Table.grid(expand=True)
        for _ in row:
            grid.add_column(ratio=1)
        grid.add_row(*(line_chart(s.step, ys, title, width // len(row) - 1, height) for title, ys in row))
        out.append(grid)
    return Group(*out)


def checkpoints_panel(status: RunStatus, last: int = 4) -> Panel:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(justify="right")
    table.add_column()
    for c in status.checkpoints[-last:]:
        state = Text(c.state, style="green" if c.state == "committed" else "yellow")
        if c.latest:
            state.append(" · latest", style="bold")
        table.add_row(f"step {c.step}", state)
    body: RenderableType = table if status.checkpoints else Text("none yet", style="dim")
    return Panel(body, title="checkpoints", title_align="left", box=box.ROUNDED)


def eval_panel(status: RunStatus) -> Panel:
    """Each task once, as its report says to show it: readable labels, values in their formats, wrapped to fit."""
    ev = status.last_eval
    if ev is None:
        return Panel(Text("no evaluation yet", style="dim"), title="evaluation", title_align="left", box=box.ROUNDED)
    tasks = ev.tasks or ({"held-out": ev.metrics} if ev.metrics else {})
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(ratio=1)
    for name, values in tasks.items():
        pairs = [Text.assemble((f"{label} ", "dim"), value) for label, value in shown_metrics(values, ev.display.get(name))]
        grid.add_row(Text(name), FlowedPairs(pairs))
    return Panel(grid, title=f"evaluation · step {ev.step}", title_align="left", box=box.ROUNDED)


class FlowedPairs:
    """Label-value pairs filling lines like words: a line breaks between pairs, never inside one."""

    SEPARATOR = " · "

    def __init__(self, pairs: list[Text]):
        self.pairs = pairs

    def __rich_console__(self, console: Console, options):
        line = Text()
        for pair in self.pairs:
            if line and len(line) + len(self.SEPARATOR) + len(pair) > options.max_width:
                yield line
                line = Text()
            if line:
                line.append(self.SEPARATOR, style="dim")
            line.append_text(pair)
        yield line

    def __rich_measure__(self, console: Console, options) -> Measurement:
        widest = max((len(p) for p in self.pairs), default=0)
        return Measurement(min(widest, options.max_width), options.max_width)


def shown_metrics(values: dict, display: dict | None) -> list[tuple[str, str]]:
    """(label, formatted value) of a task's metrics: in the order and formats of its ``display``, when it has one."""
    specs = (display or {}).get("metrics")
    if not isinstance(specs, list):
        specs = [{"key": key} for key in values]
    shown = []
    for spec in specs:
        if not isinstance(spec, dict) or spec.get("key") not in values:
            continue
        value = values[spec["key"]]
        try:
            text = format(value, str(spec["format"])) if "format" in spec else _cell(value)
        except (TypeError, ValueError):  # a format that does not fit the value: written by hand, or by another version
            text = _cell(value)
        shown.append((str(spec.get("label") or spec["key"]), text))
    return shown


def _cell(value) -> Text:
    if isinstance(value, float):
        return Text(f"{value:.4g}")
    return Text("—" if value is None else str(value))


def events_panel(status: RunStatus) -> Panel:
    table = Table(box=None, show_header=False, expand=True, pad_edge=False)
    table.add_column(style="dim", no_wrap=True)
    table.add_column(ratio=1)
    for e in status.recent_events:
        table.add_row(time.strftime("%H:%M:%S", time.localtime(e.time)), Text(e.sentence))
    body: RenderableType = table if status.recent_events else Text("no events yet", style="dim")
    return Panel(body, title="events", title_align="left", box=box.ROUNDED)


def bottom(status: RunStatus, width: int) -> RenderableType:
    if width < WIDE:
        return Group(checkpoints_panel(status), eval_panel(status), events_panel(status))
    side = Table.grid(expand=True, padding=(0, 1))
    side.add_column(ratio=1)
    side.add_column(ratio=2)
    side.add_row(checkpoints_panel(status), eval_panel(status))
    return Group(side, events_panel(status))


def _measure(console: Console, renderable: RenderableType, width: int) -> int:
    return len(console.render_lines(renderable, console.options.update(width=width), pad=False))


def render(
    snapshot: Snapshot, width: int, height: int | None = None, error: str | None = None, console: Console | None = None
) -> RenderableType:
    """One dashboard frame ``width`` columns wide; with ``height``, charts shrink (or go) to fit it."""
    status = snapshot.status
    top = [header(status, width, error), ranks_panel(status)]
    chart_rows = 1 if width >= WIDE else 2
    chart_height = CHART_HEIGHT
    if height is not None:
        used = sum(_measure(console or Console(width=width), part, width) for part in top)
        chart_height = min(MAX_CHART_HEIGHT, (height - used - BOTTOM_RESERVE) // chart_rows)
        if chart_height < MIN_CHART_HEIGHT and height - used >= chart_rows * MIN_CHART_HEIGHT:
            chart_height = MIN_CHART_HEIGHT
    parts = list(top)
    if chart_height >= MIN_CHART_HEIGHT:
        parts.append(charts(snapshot, width, chart_height))
    parts.append(bottom(status, width))
    return Group(*parts)


def render_summary(status: RunStatus, width: int) -> RenderableType:
    """``kiln status``: the dashboard's facts without the charts."""
    return Group(header(status, width), ranks_panel(status), bottom(status, width))


def monitor(run: storage.Place, once: bool = False, interval_s: float = 2.0, console: Console | None = None) -> None:
    """Redraw the dashboard every ``interval_s`` until the run finishes or Ctrl-C; ``once``: print one frame.

    The live view uses the terminal's alternate screen, so Ctrl-C (or the end) gives back the
    terminal as it was; the final frame of a finished run is printed on the normal screen.
    """
    console = console or Console()
    watcher = RunWatcher(run)
    snapshot = watcher.refresh()  # a URL without a run is an error before anything is drawn
    if once:
        console.print(render(snapshot, console.width))
        return
    error = None
    try:
        with Live(console=console, screen=True, auto_refresh=False, vertical_overflow="crop") as live:
            while True:
                live.update(render(snapshot, console.width, console.height, error, console), refresh=True)
                if _watch_ends(snapshot.status):
                    break
                time.sleep(interval_s)
                try:
                    snapshot, error = watcher.refresh(), None
                except Exception as exc:  # storage hiccup: keep the last frame, say why it is stale, try again
                    error = f"{type(exc).__name__}: {exc}"
    except KeyboardInterrupt:
        return
    console.print(render(snapshot, console.width))


def _watch_ends(status: RunStatus) -> bool:
    """Finished, or failed by a launcher's final verdict; after anything else a restart or requeue may follow."""
    if status.state == "finished":
        return True
    last = status.recent_events[-1] if status.recent_events else None
    return status.state == "failed" and last is not None and last.event == "failure" and last.rank is None
