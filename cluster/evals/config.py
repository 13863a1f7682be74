"""The ``eval`` config section: which tasks, which checkpoints, and how the work fans out over workers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cluster.evals.tasks import AnyTaskEntry
from cluster.evals.tasks.base import TaskEntry
from cluster.evals.tasks.heldout import HeldOutEntry


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[AnyTaskEntry] = Field(
        default_factory=list,
        description="task entries, e.g. {name: cloze, type: multiple_choice, path: tasks/cloze.jsonl}",
    )
    heldout: bool = Field(default=True, description="run the held-out language-modelling task (named 'heldout')")
    steps: Literal["latest", "all"] | list[int] = Field(default="latest", description="latest, all, or a list of steps")
    batch_size: int = Field(default=8, ge=1, description="sequences per forward pass")
    max_windows_per_shard: int | None = Field(
        default=None, ge=1, description="held-out: cap per val shard; none evaluates all"
    )
    slice_size: int = Field(default=64, ge=1, description="windows or examples per unit of work sent to a worker")
    workers: int | None = Field(
        default=None, ge=1, description="eval workers; none: one per GPU, else one per CPU of the cluster"
    )
    max_retries: int = Field(default=3, ge=0, description="restarts of a dead worker, and retries of its unfinished work")
    follow_interval_s: float = Field(default=30.0, gt=0, description="--follow: seconds between looks for new checkpoints")

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        names = [entry.name for entry in self.task_entries()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"task name '{repeated[0]}' is used twice; each task needs its own name")
        return self

    def task_entries(self) -> list[TaskEntry]:
        """Every task to run: the held-out one first (unless switched off or listed), then ``tasks``."""
        listed = any(isinstance(entry, HeldOutEntry) for entry in self.tasks)
        implicit = [HeldOutEntry(max_windows_per_shard=self.max_windows_per_shard)] if self.heldout and not listed else []
        return implicit + list(self.tasks)
