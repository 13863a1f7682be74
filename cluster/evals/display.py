"""What `kiln eval` shows: a progress bar per evaluated step, and a table of whatever the tasks report."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cluster.evals.report import EvalReport
from ops.storage import Place

stage_console = Console(stderr=True)  # the stage's own lines ("eval: skipped — …"), where the other stages print theirs


def eval_table(report: EvalReport, run: Place) -> Table:
    table = Table(title=Text(f"evaluation · {run} · step {report.step}"))
    table.add_column("task")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for result in report.results:
        for i, metric in enumerate(result.metrics):
            table.add_row(Text(result.name if i == 0 else ""), Text(metric.label), Text(metric.formatted()))
        table.add_section()
    return table


def print_eval_table(report: EvalReport, run: Place) -> None:
    Console().print(eval_table(report, run))


class EvalProgress:
    """Slices scored per step, on stderr."""

    def __init__(self):
        self._progress = Progress(
            TextColumn("[bold]eval step {task.fields[step]}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("slices"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._tasks: dict[int, int] = {}

    def __enter__(self) -> "EvalProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def update(self, step: int, done: int, total: int) -> None:
        if step not in self._tasks:
            self._tasks[step] = self._progress.add_task("eval", total=total, step=step)
        self._progress.update(self._tasks[step], completed=done, total=total)
