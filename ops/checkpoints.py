"""Read-side view of ``RUN_URL/checkpoints/``: which steps exist and which are committed.

The layout (README, "Launchers and resume"): ``checkpoints/step-00000100/`` with a ``COMMITTED`` marker
written after every rank's files, and ``checkpoints/latest`` naming the newest
committed step.  A directory without ``COMMITTED`` is a save that never finished.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from ops import storage

CHECKPOINTS_DIR = "checkpoints"
COMMITTED = "COMMITTED"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def parse_step(name: str) -> int | None:
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class CheckpointEntry:
    step: int
    url: str
    committed: bool
    latest: bool


def list_checkpoints(run_url: str, options: dict | None = None) -> list[CheckpointEntry]:
    root = storage.join(run_url, CHECKPOINTS_DIR)
    latest_url = storage.join(root, LATEST)
    latest = storage.read_text(latest_url, options).strip() if storage.exists(latest_url, options) else None
    entries = []
    for name in storage.list_names(root, options):
        step = parse_step(name)
        if step is None:
            continue
        url = storage.join(root, name)
        entries.append(
            CheckpointEntry(
                step=step,
                url=url,
                committed=storage.exists(storage.join(url, COMMITTED), options),
                latest=name == latest,
            )
        )
    return sorted(entries, key=lambda e: e.step)


def print_checkpoints(entries: list[CheckpointEntry]) -> None:
    table = Table(title="checkpoints")
    table.add_column("step", justify="right")
    table.add_column("state")
    table.add_column("url")
    for e in entries:
        state = "committed" + (" · latest" if e.latest else "") if e.committed else "incomplete"
        table.add_row(str(e.step), state, e.url)
    if not entries:
        table.caption = "no checkpoints yet"
    Console().print(table)
