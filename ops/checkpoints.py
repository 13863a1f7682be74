"""The layout of ``RUN_URL/checkpoints/``, the one place that knows it, and the listing of its steps.

    checkpoints/step-00000100/           every rank's files of step 100
    checkpoints/step-00000100/COMMITTED  the checkpoint record, written after every rank's files
    checkpoints/latest                   the name of the newest committed step folder, written after COMMITTED

A folder without ``COMMITTED`` is a save that never finished.  What ``COMMITTED`` holds is
``llm.checkpoint_record``; saving and reading checkpoints is ``llm.checkpoint*``, which build
their URLs here, as ``kiln status`` and ``kiln ckpt`` do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from ops import storage
from ops.storage import Place, PlaceT

CHECKPOINTS_DIR = "checkpoints"
COMMITTED = "COMMITTED"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def parse_step(name: str) -> int | None:
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else None


def checkpoints_url(run: PlaceT) -> PlaceT:
    return storage.join(run, CHECKPOINTS_DIR)


def step_url(run: PlaceT, step: int) -> PlaceT:
    return storage.join(run, CHECKPOINTS_DIR, step_name(step))


def commit_url(run: PlaceT, step: int) -> PlaceT:
    """Step ``step``'s ``COMMITTED`` marker: the step is committed when it exists."""
    return storage.join(step_url(run, step), COMMITTED)


def latest_url(run: PlaceT) -> PlaceT:
    return storage.join(run, CHECKPOINTS_DIR, LATEST)


@dataclass(frozen=True)
class CheckpointEntry:
    step: int
    url: str
    committed: bool
    latest: bool


def list_checkpoints(run: Place) -> list[CheckpointEntry]:
    pointer = latest_url(run)
    latest = storage.read_text(pointer).strip() if storage.exists(pointer) else None
    entries = []
    for name in storage.list_names(checkpoints_url(run)):
        step = parse_step(name)
        if step is None:
            continue
        entries.append(
            CheckpointEntry(
                step=step,
                url=str(step_url(run, step)),
                committed=storage.exists(commit_url(run, step)),
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
