"""The result of evaluating one checkpoint, and the file it is kept in: ``RUN_URL/eval/step-NNNNNNNN.json``.

:class:`EvalReport` is what the driver builds and the display shows: every task's result in
order.  :class:`EvalReportFile` is the file, field by field; a report is written through it
in one write (after every slice of every task is in) and read back through it, so a key this
Kiln does not know is an error that suggests the nearest one it does.

The monitor (``ops.status``, ``ops.compare``, ``ops.dashboard``) reads these files as plain
JSON: ``ops`` sits below this room and shows whatever part of a file it understands.
"""

from __future__ import annotations

import difflib
import typing

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError, model_validator

from cluster.evals.tasks.base import Metric, TaskResult
from cluster.evals.tasks.heldout import HeldOutTask
from data_shards.errors import DataError
from ops import storage


def report_url(run: storage.PlaceT, step: int) -> storage.PlaceT:
    return storage.join(run, f"eval/step-{step:08d}.json")


class EvalReport(BaseModel):
    """Every task's result for one checkpoint."""

    model_config = ConfigDict(extra="forbid")
    step: int
    results: list[TaskResult]

    def to_json(self) -> dict:
        return EvalReportFile.of(self).model_dump(exclude_none=True)

    @classmethod
    def from_json(cls, doc: dict) -> "EvalReport":
        return EvalReportFile.model_validate(doc).report()


class ShownMetric(BaseModel):
    """How one of a task's values is shown."""

    model_config = ConfigDict(extra="forbid")
    key: str = Field(description="the value's key under tasks.NAME")
    label: str = Field(description="what the value is called on screen")
    format: str = Field(description="a Python format spec: format(value, spec)")


class TaskDisplay(BaseModel):
    """How to show one task's values."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(description="the task's type: heldout, multiple_choice, …")
    metrics: list[ShownMetric] = Field(description="the values shown, in order")


Number = StrictInt | StrictFloat


class EvalReportFile(BaseModel):
    """``RUN_URL/eval/step-NNNNNNNN.json``.  Every task has ``examples``; a multiple-choice task also
    ``acc`` and ``acc_norm``.  The held-out task's values also sit at the top level (absent when
    ``eval.heldout`` is off), where files had them before there were other tasks."""

    model_config = ConfigDict(extra="forbid")
    step: int = Field(description="the checkpoint evaluated")
    loss: float | None = Field(default=None, description="held-out loss, nats per target token")
    perplexity: float | None = None
    bits_per_byte: float | None = None
    unigram_loss: float | None = Field(default=None, description="the unigram baseline on the same targets")
    unigram_perplexity: float | None = None
    unigram_bits_per_byte: float | None = None
    tokens: int | None = Field(default=None, description="held-out target tokens")
    bytes: int | None = Field(default=None, description="held-out target bytes")
    examples: int | None = Field(default=None, description="held-out windows")
    val_shards: int | None = None
    tasks: dict[str, dict[str, Number]] = Field(description="every task's values by task name")
    display: dict[str, TaskDisplay] = Field(description="how to show each task's values, in order")

    @model_validator(mode="after")
    def _every_shown_value_exists(self) -> "EvalReportFile":
        if set(self.tasks) != set(self.display):
            raise ValueError(f"tasks ({', '.join(self.tasks)}) and display ({', '.join(self.display)}) name different tasks")
        for name, shown in self.display.items():
            missing = [m.key for m in shown.metrics if m.key not in self.tasks[name]]
            if missing:
                raise ValueError(f"display.{name} shows '{missing[0]}', which tasks.{name} does not hold")
        return self

    @classmethod
    def of(cls, report: EvalReport) -> "EvalReportFile":
        top: dict = {}
        for result in report.results:
            if result.type == HeldOutTask.type:
                top.update(result.values())
        return cls(
            step=report.step,
            **top,
            tasks={r.name: r.values() for r in report.results},
            display={
                r.name: TaskDisplay(type=r.type, metrics=[ShownMetric(**m.model_dump(exclude={"value"})) for m in r.metrics])
                for r in report.results
            },
        )

    def report(self) -> EvalReport:
        results = [
            TaskResult(
                name=name,
                type=shown.type,
                metrics=[Metric(value=self.tasks[name][m.key], **m.model_dump()) for m in shown.metrics],
            )
            for name, shown in self.display.items()
        ]
        return EvalReport(step=self.step, results=results)


def write_report(run: storage.Place, report: EvalReport) -> None:
    storage.write_json(report_url(run, report.step), report.to_json())


def read_report(run: storage.Place, step: int) -> EvalReport | None:
    """The report of ``step``, None when there is none; DataError naming the file and key when it is not a report."""
    url = report_url(run, step)
    if not storage.exists(url):
        return None
    try:
        return EvalReportFile.model_validate(storage.read_json(url)).report()
    except ValidationError as error:
        raise DataError(f"{url} is not an evaluation report: {_problem(error)}") from None


def _problem(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = tuple(first["loc"])
    where = ".".join(map(str, loc))
    if first["type"] == "extra_forbidden":
        parent = _type_at(loc[:-1])
        valid = list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        if close:
            return f"unknown key '{where}' — did you mean '{'.'.join(map(str, loc[:-1] + (close[0],)))}'?"
        return f"unknown key '{where}' (valid keys here: {', '.join(valid)})"
    return f"{where + ': ' if where else ''}{first['msg'].removeprefix('Value error, ')}"


def _type_at(loc: tuple) -> object:
    """The type a key path leads to in :class:`EvalReportFile` (a dict key or list index leads to the value type)."""
    current: object = EvalReportFile
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            current = current.model_fields[str(part)].annotation
        else:
            current = typing.get_args(current)[-1]
    return current
