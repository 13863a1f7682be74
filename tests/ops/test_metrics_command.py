"""`kiln metrics RUN_URL`: the merged metrics table of every writer, a resumed attempt's rows replacing the abandoned ones."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap

from launch.cli import main
from ops.metrics_table import COLUMNS, print_metrics
from ops.records import RunRecords


NOW = 1_700_000_000.0


def _row(step: int, attempt: int) -> dict:
    return {"time": NOW + attempt * 1000 + step * 0.5, "step": step, "tokens": step * 128, "loss": 10.0 * attempt - step / 100}


def _log_in_another_process(run: str, rows: list[dict]) -> None:
    """Rows written by another process (a restarted rank), so by a writer of its own."""
    script = textwrap.dedent(
        f"""
        from ops.records import RunRecords
        records = RunRecords({run!r})
        for row in {rows!r}:
            records.log_metrics(row)
        records.close()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def _restarted_run(runs) -> str:
    """Attempt 1 logs steps 1-14 and dies; attempt 2 resumes from step 10 and logs steps 11-20."""
    run = runs.make(steps=0)
    records = RunRecords(run)
    for step in range(1, 15):
        records.log_metrics(_row(step, attempt=1))
    records.close()
    _log_in_another_process(run, [_row(step, attempt=2) for step in range(11, 21)])
    return run


def test_the_csv_table_has_one_row_per_step_with_the_resumed_attempts_values(runs, capsys):
    run = _restarted_run(runs)
    assert main(["metrics", run]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["step"]) for r in table] == list(range(1, 21))
    assert [float(r["loss"]) for r in table] == [_row(s, 1 if s <= 10 else 2)["loss"] for s in range(1, 21)]
    assert tuple(table[0]) == COLUMNS


def test_jsonl_carries_each_row_as_written(runs, capsys):
    run = _restarted_run(runs)
    assert main(["metrics", run, "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [_row(s, 1 if s <= 10 else 2) for s in range(1, 21)]


def test_follow_prints_new_steps_as_they_are_logged_and_ends_with_the_run(runs):
    run = runs.make(steps=3)
    records = RunRecords(run)
    batches = iter([[4, 5], [6]])

    def meanwhile(_seconds: float) -> None:  # while the follower waits, the run logs more steps, then finishes
        batch = next(batches, None)
        if batch is None:
            records.event("finish", step=6)
        for step in batch or []:
            records.log_metrics(runs.row(step))
        records.flush()

    out = io.StringIO()
    printed = print_metrics(run, fmt="jsonl", follow=True, out=out, interval_s=0, sleep=meanwhile)
    records.close()
    assert printed == 6
    assert [json.loads(line)["step"] for line in out.getvalue().splitlines()] == [1, 2, 3, 4, 5, 6]


def test_a_url_without_metrics_is_a_one_line_error(tmp_path, capsys):
    assert main(["metrics", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kiln: error: ") and err.count("\n") == 1 and "no metrics" in err
