"""`kiln ckpt verify|prune`: check and trim a run's checkpoints from outside the job."""
from __future__ import annotations

import math

from rich.console import Console

from llm.checkpoint import COMMITTED, LATEST, checkpoints_url, load_model_state, prune, read_commit, step_name, step_url
from ops import storage
from ops.checkpoints import list_checkpoints


def verify(run_url: str, options: dict | None = None) -> list[str]:
    """Problems found (empty when sound): ``latest`` names a committed step, every committed step's
    marker is readable, and the newest committed step consolidates into finite weights."""
    problems = []
    entries = list_checkpoints(run_url, options)
    committed = [e.step for e in entries if e.committed]
    if not committed:
        return [f"{checkpoints_url(run_url)}: no committed checkpoint"]
    latest_url = storage.join(checkpoints_url(run_url), LATEST)
    if not storage.exists(latest_url, options):
        problems.append(f"{latest_url} is missing")
    elif storage.read_text(latest_url, options).strip() != step_name(committed[-1]):
        problems.append(f"{latest_url} does not name the newest committed step {step_name(committed[-1])}")
    for step in committed:
        try:
            read_commit(run_url, step, options)
        except ValueError:
            problems.append(f"{storage.join(step_url(run_url, step), COMMITTED)} is not valid JSON")
    _, state = load_model_state(run_url, committed[-1], options)
    bad = [name for name, tensor in state.items() if not math.isfinite(float(tensor.abs().sum()))]
    if bad:
        problems.append(f"{step_url(run_url, committed[-1])}: non-finite weights in {', '.join(bad[:3])}")
    return problems


def print_verify(run_url: str, options: dict | None = None) -> int:
    problems = verify(run_url, options)
    console = Console()
    if problems:
        for p in problems:
            console.print(f"[red]✗[/red] {p}")
        return 1
    newest = max(e.step for e in list_checkpoints(run_url, options) if e.committed)
    console.print(f"[green]✓[/green] {checkpoints_url(run_url)}: latest → {step_name(newest)}, weights load and are finite")
    return 0


def print_prune(run_url: str, keep: int, options: dict | None = None) -> int:
    removed = prune(run_url, keep, options)
    Console().print(f"removed {len(removed)} checkpoint(s): {', '.join(step_name(s) for s in removed) or 'none'}")
    return 0
