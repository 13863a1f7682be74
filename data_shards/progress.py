"""The rich progress display of ``kiln prepare``: documents and tokens per second."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


class _RateColumn(ProgressColumn):
    """Totals and per-second rates of the fields a task carries."""

    def render(self, task) -> Text:
        docs = task.fields.get("docs", 0)
        tokens = task.fields.get("tokens", 0)
        elapsed = max(task.fields.get("elapsed", 0.0), 1e-9)
        if not docs:
            return Text("")
        return Text(f"{_si(docs / elapsed)} docs/s {_si(tokens / elapsed)} tok/s", style="cyan")


class PrepareProgress:
    """One line per phase; a no-op when disabled (tests, non-interactive callers)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress = None
        self._started: dict[int, float] = {}

    def __enter__(self) -> "PrepareProgress":
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=16),
                MofNCompleteColumn(),
                TextColumn("{task.fields[tokens_total]}"),
                _RateColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                refresh_per_second=4,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def phase(self, name: str, total: int) -> int | None:
        if self._progress is None:
            return None
        task = self._progress.add_task(name, total=total, docs=0, tokens=0, elapsed=0.0, tokens_total="")
        self._started[task] = time.perf_counter()
        return task

    def update(self, task: int | None, completed: int, docs: int = 0, tokens: int = 0) -> None:
        if self._progress is None or task is None:
            return
        elapsed = time.perf_counter() - self._started[task]
        totals = f"{_si(docs)} docs {_si(tokens)} tok" if docs else ""
        self._progress.update(task, completed=completed, docs=docs, tokens=tokens, elapsed=elapsed, tokens_total=totals)
