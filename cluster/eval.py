"""Evaluation jobs: which checkpoints, their tasks fanned out over eval workers, the results gathered.

Each evaluated step writes ``RUN_URL/eval/step-NNNNNNNN.json`` (in one write, after
every slice of every task is in)::

    {
      "step": 100,                      the checkpoint evaluated
      "loss": 4.1, "perplexity": 60.3, "bits_per_byte": 1.9,
      "unigram_loss": 5.6, "unigram_perplexity": 270.4, "unigram_bits_per_byte": 2.6,
      "tokens": 65536, "bytes": 180000, "val_shards": 1,
                                        the held-out task's values, at the top level as before
                                        (absent when eval.heldout is off)
      "tasks": {                        every task's values by task name
        "heldout": {"loss": 4.1, ..., "examples": 256},
        "cloze": {"acc": 0.41, "acc_norm": 0.39, "examples": 200, "correct": 82, ...}
      },
      "display": {                      how to show each task's values, in order
        "cloze": {"type": "multiple_choice",
                  "metrics": [{"key": "acc", "label": "accuracy", "format": ".4f"}, ...]},
        ...
      }
    }

``format`` is a Python format spec (``format(value, spec)``).  Every task has
``examples``; a multiple-choice task also has ``acc`` and ``acc_norm``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import reduce
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict

from cluster.config import EvalConfig
from cluster.eval_pool import EvalPool
from data_shards.tokenizer import Tokenizer
from llm.checkpoint import checkpoints_url, committed_steps, latest_committed_step, read_commit
from llm.tasks import build_task
from llm.tasks.base import EvalTask, Metric, ModelShape, Slice, Tally, TaskInputs, TaskResult
from llm.tasks.heldout import HeldOutTask
from ops import storage
from ops.records import RunRecords

Progress = Callable[[int, int, int], None]  # (step, slices done, slices in all)


def eval_url(run_url: str, step: int) -> str:
    return storage.join(run_url, f"eval/step-{step:08d}.json")


class EvalReport(BaseModel):
    """Every task's result for one checkpoint."""

    model_config = ConfigDict(extra="forbid")
    step: int
    results: list[TaskResult]

    def to_json(self) -> dict:
        out: dict = {"step": self.step}
        for result in self.results:
            if result.type == HeldOutTask.type:
                out.update(result.values())
        out["tasks"] = {r.name: r.values() for r in self.results}
        out["display"] = {
            r.name: {"type": r.type, "metrics": [m.model_dump(exclude={"value"}) for m in r.metrics]} for r in self.results
        }
        return out

    @classmethod
    def from_json(cls, doc: dict) -> "EvalReport":
        results = [
            TaskResult(
                name=name,
                type=shown["type"],
                metrics=[Metric(value=doc["tasks"][name][m["key"]], **m) for m in shown["metrics"]],
            )
            for name, shown in doc["display"].items()
        ]
        return cls(step=doc["step"], results=results)


def steps_to_evaluate(
    spec: Literal["latest", "all"] | list[int], committed: list[int], latest: int | None, where: str
) -> list[int]:
    """The steps ``eval.steps`` names, checked against the committed ones; FileNotFoundError naming a missing one."""
    if not committed:
        raise FileNotFoundError(f"{where} holds no committed checkpoint")
    if spec == "latest":
        return [latest if latest is not None else committed[-1]]
    if spec == "all":
        return list(committed)
    for step in spec:
        if step not in committed:
            raise FileNotFoundError(
                f"eval.steps: step {step} has no committed checkpoint in {where} (committed: {', '.join(map(str, committed))})"
            )
    return sorted(set(spec))


def already_evaluated(run_url: str, step: int, task_names: list[str], options: dict | None = None) -> bool:
    """Whether eval/step-N.json exists and holds a result for every one of these tasks."""
    url = eval_url(run_url, step)
    if not storage.exists(url, options):
        return False
    return set(task_names) <= set(storage.read_json(url, options).get("tasks", {}))


def run_finished(events: list[dict]) -> bool:
    """Whether the run's last start was followed by its finish, or by its launcher giving up (a rank's own
    failure is not the end: the launcher may restart it; a later `kiln train` starts the run again)."""
    lifecycle = [
        e["event"]
        for e in events
        if e.get("event") in ("start", "finish") or (e.get("event") == "failure" and "launcher" in e)
    ]
    return bool(lifecycle) and lifecycle[-1] in ("finish", "failure")


def build_tasks(eval_cfg: EvalConfig, data_url: str, options: dict | None = None) -> list[EvalTask]:
    """Every configured task, its inputs read and checked."""
    options = options or {}
    inputs = TaskInputs(
        data_url=data_url, storage_options=options, tokenizer=Tokenizer.load(data_url, options), batch_size=eval_cfg.batch_size
    )
    return [build_task(entry, inputs) for entry in eval_cfg.task_entries()]


def plan_steps(run_url: str, eval_cfg: EvalConfig, options: dict | None = None) -> list[int]:
    committed = committed_steps(run_url, options)
    latest = latest_committed_step(run_url, options) if committed else None
    return steps_to_evaluate(eval_cfg.steps, committed, latest, checkpoints_url(run_url))


@dataclass(frozen=True)
class StepPlan:
    """One checkpoint's work: the model's shape as the checkpoint recorded it, and every task's slices."""

    step: int
    shape: ModelShape
    slices: dict[str, list[Slice]]


def plan_step(run_url: str, step: int, tasks: list[EvalTask], slice_size: int, options: dict | None = None) -> StepPlan:
    """Slice every task for a step (this is where a task rejects what the model cannot score)."""
    record = read_commit(run_url, step, options)
    shape = ModelShape(seq_len=record.model.seq_len, vocab_size=record.vocab_size)
    return StepPlan(step, shape, {task.name: task.slices(shape, slice_size) for task in tasks})


class EvalJob:
    """Tasks and a pool of workers for any number of checkpoints of one run (inside a Ray session).

    Slices that do not use the model are scored once, for the first step, and their
    tallies reused for every later one.
    """

    def __init__(
        self,
        run_url: str,
        tasks: list[EvalTask],
        eval_cfg: EvalConfig,
        options: dict | None = None,
        on_progress: Progress | None = None,
    ):
        self.run_url = run_url
        self.tasks = tasks
        self.options = options or {}
        self.on_progress = on_progress
        self.model_free: dict[Slice, Tally] = {}
        self.pool = EvalPool(run_url, self.options, tasks, eval_cfg.workers, eval_cfg.max_retries)

    def __enter__(self) -> "EvalJob":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.close()

    def evaluate(self, plan: StepPlan) -> EvalReport:
        """Score every task on one committed step, write eval/step-N.json and return the report."""
        step = plan.step
        todo = [s for pieces in plan.slices.values() for s in pieces if s.uses_model or s not in self.model_free]
        progress = (lambda done, total: self.on_progress(step, done, total)) if self.on_progress else None
        tallies = dict(zip(todo, self.pool.run(step, todo, progress)))
        self.model_free.update({s: t for s, t in tallies.items() if not s.uses_model})
        results = []
        for task in self.tasks:
            parts = [tallies[s] if s in tallies else self.model_free[s] for s in plan.slices[task.name]]
            total = reduce(lambda a, b: a + b, parts, task.new_tally())
            expected = task.totals(plan.shape)
            if (total.examples, total.tokens) != (expected.examples, expected.tokens):
                raise RuntimeError(
                    f"task '{task.name}' at step {step}: gathered {total.examples} examples and "
                    f"{total.tokens} tokens, expected {expected.examples} and {expected.tokens}"
                )
            results.append(task.compute(total))
        report = EvalReport(step=step, results=results)
        storage.write_json(eval_url(self.run_url, step), report.to_json(), self.options)
        return report


def evaluate_steps(
    run_url: str,
    plans: list[StepPlan],
    tasks: list[EvalTask],
    eval_cfg: EvalConfig,
    options: dict | None = None,
    on_progress: Progress | None = None,
    on_report: Callable[[EvalReport], None] | None = None,
) -> list[EvalReport]:
    """Evaluate planned steps in order (inside a Ray session); each writes its eval/step-N.json."""
    reports = []
    with EvalJob(run_url, tasks, eval_cfg, options, on_progress) as job:
        for plan in plans:
            reports.append(job.evaluate(plan))
            if on_report is not None:
                on_report(reports[-1])
    return reports


def follow_run(
    run_url: str,
    tasks: list[EvalTask],
    eval_cfg: EvalConfig,
    options: dict | None = None,
    on_progress: Progress | None = None,
    on_report: Callable[[EvalReport], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[EvalReport]:
    """Evaluate every committed step without a complete result, then each new one as it is committed,
    until the run records its finish (inside a Ray session)."""
    options = options or {}
    names = [task.name for task in tasks]
    records = RunRecords(run_url, options)
    seen: set[int] = set()
    reports = []
    with EvalJob(run_url, tasks, eval_cfg, options, on_progress) as job:
        while True:
            finished = run_finished(records.events())  # read first: the scan below then sees the last checkpoint
            for step in committed_steps(run_url, options):
                if step in seen:
                    continue
                seen.add(step)
                if already_evaluated(run_url, step, names, options):
                    continue
                try:
                    reports.append(job.evaluate(plan_step(run_url, step, tasks, eval_cfg.slice_size, options)))
                except FileNotFoundError:
                    if step in committed_steps(run_url, options):
                        raise
                    warnings.warn(f"step {step} was pruned before it could be evaluated", stacklevel=1)
                    continue
                if on_report is not None:
                    on_report(reports[-1])
            if finished:
                return reports
            sleep(eval_cfg.follow_interval_s)
