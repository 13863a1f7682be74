"""One run's metrics as one table: every writer's segments merged, the rows of abandoned attempts dropped.

A rank that resumes from the checkpoint of step 10 after logging steps 11–14 logs steps 11–14 again;
the table keeps the later attempt's rows.  Rows are read in time order, so a row whose step is not
beyond the last kept one starts a new attempt: the kept rows from that step on are dropped.
"""

from __future__ import annotations

import csv
import json
import time
from typing import Any, Callable, Iterable, TextIO

from ops.record_layout import EVENTS_STREAM, METRICS_STREAM
from ops.record_readers import StreamFollower
from ops.storage import Place

# The columns of `kiln metrics --format csv`, in this order: the keys of a rank's metrics row
# (`metrics_row` in llm/trainer.py).
COLUMNS = (
    "step",
    "tokens",
    "loss",
    "lr",
    "grad_norm",
    "step_time_s",
    "tokens_per_s",
    "tflops",
    "mfu",
    "mem_gb",
    "data_wait_s",
    "time",
)
FORMATS = ("csv", "jsonl")


def resolve_restarts(rows: Iterable[dict[str, Any]], kept: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``kept`` (rows already resolved, steps increasing) extended by ``rows`` (oldest first)."""
    kept = [] if kept is None else kept
    for row in rows:
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        while kept and kept[-1]["step"] >= step:
            kept.pop()
        kept.append(row)
    return kept


def metrics_table(run: Place) -> list[dict[str, Any]]:
    """The run's metric rows, one per step, restarts resolved."""
    return resolve_restarts(StreamFollower(run, METRICS_STREAM).new_rows())


def _run_over(events: list[dict[str, Any]]) -> bool:
    """Finished, or failed by a launcher's final verdict (a rank's failure may still be followed by a restart)."""
    return any(e.get("event") == "finish" or (e.get("event") == "failure" and e.get("rank") is None) for e in events)


class _Printer:
    def __init__(self, out: TextIO, fmt: str):
        self.out = out
        self.csv = None
        if fmt == "csv":
            self.csv = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
            self.csv.writeheader()

    def rows(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if self.csv:
                self.csv.writerow(row)
            else:
                self.out.write(json.dumps(row) + "\n")
        self.out.flush()


def print_metrics(
    run: Place,
    fmt: str = "csv",
    follow: bool = False,
    out: TextIO | None = None,
    interval_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Write the table to ``out``; ``follow``: then each new step as it is logged, until the run ends.

    While following, a step is printed once: a resumed attempt's repeat of steps already printed is
    left out (the table printed afterwards has the repeat's values).  Returns the rows printed.
    """
    import sys

    out = out or sys.stdout
    metrics = StreamFollower(run, METRICS_STREAM)
    events = StreamFollower(run, EVENTS_STREAM)
    kept = resolve_restarts(metrics.new_rows())
    if not kept and not follow:
        raise FileNotFoundError(f"{run}: no metrics here (no rows under {METRICS_STREAM}/)")
    printer = _Printer(out, fmt)
    printer.rows(kept)
    printed = len(kept)
    if not follow:
        return printed
    last = kept[-1]["step"] if kept else 0
    over = _run_over(events.new_rows())
    while True:
        new = [r for r in resolve_restarts(metrics.new_rows(), kept[-1:] if kept else []) if r["step"] > last]
        printer.rows(new)
        printed += len(new)
        if new:
            last = new[-1]["step"]
            kept = new[-1:]
        if over:
            return printed
        sleep(interval_s)
        over = _run_over(events.new_rows())
