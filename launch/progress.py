"""The training progress bar: steps, loss and throughput as rank 0 records them, whatever the launcher."""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from llm.checkpoint import latest_committed_step
from llm.job import TrainJob
from ops.records import MetricsFollower

POLL_S = 1.0


def training_progress() -> Progress:
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]} · {task.fields[tokens_per_s]} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


@contextlib.contextmanager
def follow_training(job: TrainJob) -> Iterator[None]:
    """Show a progress bar fed from the run's metrics for as long as the block runs."""
    follower = MetricsFollower(job.run)
    follower.new_rows()  # rows of earlier attempts are history, not progress
    start = latest_committed_step(job.run) or 0
    done = threading.Event()
    with training_progress() as progress:
        task = progress.add_task("train", total=job.train.steps, completed=start, loss="—", tokens_per_s="—")

        def follow() -> None:
            while True:
                finished = done.wait(POLL_S)
                for row in follower.new_rows():
                    progress.update(
                        task,
                        completed=row.get("step", start),
                        loss=f"{row['loss']:.4f}" if row.get("loss") is not None else "—",
                        tokens_per_s=f"{row['tokens_per_s']:,.0f}" if row.get("tokens_per_s") else "—",
                    )
                if finished:
                    return

        thread = threading.Thread(target=follow, name="kiln-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
