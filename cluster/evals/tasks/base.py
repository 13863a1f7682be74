"""The evaluation-task interface.

A task splits its work into slices (planned in the driver from its inputs and the
shape of the checkpoint's model), scores each slice batch by batch into an additive
:class:`Tally` (on whichever worker holds the model), and turns the sum of all its
tallies into named, formatted metrics.  Whoever fans the slices out needs to know
none of this: tallies of disjoint slices add up, and a task says how many examples
and tokens its slices hold in total, so a lost slice cannot go unnoticed.

Adding a task is one new module in this package with an :class:`EvalTask` subclass
and its config entry (a pydantic model whose ``type`` is a one-value ``Literal``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from data_shards.tokenizer import Tokenizer
from llm.model import Transformer
from ops.storage import Location

TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class TaskEntry(BaseModel):
    """One ``eval.tasks`` entry; each task type extends it with its own fields."""

    model_config = ConfigDict(extra="forbid")
    type: str
    name: str = Field(pattern=TASK_NAME, description="key of the task's results in eval/step-N.json")


@dataclass(frozen=True)
class TaskInputs:
    """What every task may build from: the run's prepared data (its location also reaches the task files)."""

    data: Location
    tokenizer: Tokenizer
    batch_size: int


class ModelShape(BaseModel):
    """What slicing needs to know of a checkpoint's model (from its commit record, not the current config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seq_len: int
    vocab_size: int


class Slice(BaseModel):
    """One unit of work: rows ``start:stop`` of part ``part`` of a task's input ``source``.

    A slice that does not use the model (``uses_model=False``) scores the same for
    every checkpoint, so a job computes it once.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    task: str
    source: str
    part: int = 0
    start: int = 0
    stop: int = 0
    uses_model: bool = True


class Tally(BaseModel):
    """The additive partial result of some slices: the tally of two disjoint sets of slices is their sum.

    Every field is a number or a numpy array; an empty array counts as zeros.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    examples: int = 0
    tokens: int = 0

    def __add__(self, other: "Tally") -> "Tally":
        if type(other) is not type(self):
            raise TypeError(f"cannot add {type(other).__name__} to {type(self).__name__}")
        return type(self)(**{name: _add(getattr(self, name), getattr(other, name)) for name in type(self).model_fields})


def _add(a, b):
    if isinstance(a, np.ndarray):
        if a.size == 0:
            return b
        if b.size == 0:
            return a
    return a + b


class Metric(BaseModel):
    """One named result with how to show it: ``format`` is a format spec such as ``.4f`` or ``,d``."""

    model_config = ConfigDict(extra="forbid")
    key: str
    label: str
    value: float | int
    format: str = ".4f"

    def formatted(self) -> str:
        return format(self.value, self.format)


class TaskResult(BaseModel):
    """What a task computes at the end: its metrics in display order."""

    model_config = ConfigDict(extra="forbid")
    name: str
    type: str
    metrics: list[Metric]

    def values(self) -> dict[str, float | int]:
        return {m.key: m.value for m in self.metrics}


class EvalTask(ABC):
    """An evaluation task (see the module docstring for the life of one)."""

    type: ClassVar[str]
    entry: ClassVar[type[TaskEntry]]

    def __init__(self, name: str):
        self.name = name

    @classmethod
    @abstractmethod
    def build(cls, entry: TaskEntry, inputs: TaskInputs) -> "EvalTask":
        """Read and check the task's inputs (in the driver, before any worker starts)."""

    @abstractmethod
    def slices(self, shape: ModelShape, slice_size: int) -> list[Slice]:
        """The task's work for one checkpoint, at most ``slice_size`` examples a slice."""

    @abstractmethod
    def totals(self, shape: ModelShape) -> Tally:
        """A tally whose ``examples`` and ``tokens`` are what all slices together must count."""

    @abstractmethod
    def new_tally(self) -> Tally:
        """The zero of this task's tallies."""

    @abstractmethod
    def batches(self, piece: Slice, model: Transformer | None) -> Iterable[Any]:
        """The batches of one slice (``model`` is None for a slice that does not use it)."""

    @abstractmethod
    def score(self, model: Transformer | None, batch: Any) -> Tally:
        """The tally of one batch."""

    @abstractmethod
    def compute(self, tally: Tally) -> TaskResult:
        """Metrics from the sum of every slice's tally."""

    def run(self, piece: Slice, model: Transformer | None) -> Tally:
        """Score one slice: update the tally batch by batch."""
        tally = self.new_tally()
        for batch in self.batches(piece, model):
            tally = tally + self.score(model, batch)
        return tally
