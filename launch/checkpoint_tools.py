"""`kiln ckpt verify|prune`: check and trim a run's checkpoints from outside the job."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from llm import checkpoint_files
from llm.checkpoint import CheckpointError, load_model_state, prune, read_commit
from ops import storage
from ops.checkpoints import checkpoints_url, latest_url, list_checkpoints, step_name, step_url
from ops.storage import Place


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]verify"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def verify(run: Place) -> list[str]:
    """Problems found (empty when sound): ``latest`` names the newest committed step, every committed
    step's record is readable and every file it lists has the listed size and sha256, and the newest
    committed step consolidates (weights only) into finite weights."""
    problems = []
    entries = list_checkpoints(run)
    committed = [e.step for e in entries if e.committed]
    if not committed:
        return [f"{checkpoints_url(run)}: no committed checkpoint"]
    pointer = latest_url(run)
    if not storage.exists(pointer):
        problems.append(f"{pointer} is missing")
    elif storage.read_text(pointer).strip() != step_name(committed[-1]):
        problems.append(f"{pointer} does not name the newest committed step {step_name(committed[-1])}")
    records = {}
    for step in committed:
        try:
            records[step] = read_commit(run, step)
        except CheckpointError as error:
            problems.append(str(error))
    sound = set(records)
    with _progress() as progress:
        task = progress.add_task("verify", total=sum(f.bytes for r in records.values() for f in r.files))
        for step, record in records.items():
            for entry in record.files:
                problem = checkpoint_files.verify(step_url(run, step), entry)
                if problem:
                    problems.append(problem)
                    sound.discard(step)
                progress.advance(task, entry.bytes)
    newest = committed[-1]
    if newest in sound:
        try:
            _, state = load_model_state(run, newest)
        except CheckpointError as error:
            return problems + [str(error)]
        bad = [name for name, tensor in state.items() if not math.isfinite(float(tensor.abs().sum()))]
        if bad:
            problems.append(f"{step_url(run, newest)}: non-finite weights in {', '.join(bad[:3])}")
    return problems


def print_verify(run: Place) -> int:
    problems = verify(run)
    console = Console()
    if problems:
        for p in problems:
            console.print(f"[red]✗[/red] {p}", soft_wrap=True)
        return 1
    committed = [e for e in list_checkpoints(run) if e.committed]
    console.print(
        f"[green]✓[/green] {checkpoints_url(run)}: {len(committed)} committed checkpoint(s), every "
        f"file as recorded; latest → {step_name(committed[-1].step)}, its weights load and are finite",
        soft_wrap=True,
    )
    return 0


def print_prune(run: Place, keep: int) -> int:
    removed = prune(run, keep)
    Console().print(f"removed {len(removed)} checkpoint(s): {', '.join(step_name(s) for s in removed) or 'none'}")
    return 0
