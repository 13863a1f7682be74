"""Evaluation jobs: which checkpoints, their tasks fanned out over eval workers, the results gathered.

Each evaluated step's report is written to ``RUN_URL/eval/step-NNNNNNNN.json`` in one write,
after every slice of every task is in (:mod:`cluster.evals.report` holds its format).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import reduce
from typing import Callable, Literal

from cluster.evals.config import EvalConfig
from cluster.evals.pool import EvalPool
from cluster.evals.report import EvalReport, read_report, write_report
from data_shards.tokenizer import Tokenizer
from llm.checkpoint import checkpoints_url, committed_steps, latest_committed_step, read_commit
from cluster.evals.tasks import build_task
from cluster.evals.tasks.base import EvalTask, ModelShape, Slice, Tally, TaskInputs
from ops.records import RunRecords
from ops.storage import Place, location

Progress = Callable[[int, int, int], None]  # (step, slices done, slices in all)


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


def complete_report(run: Place, step: int, task_names: list[str]) -> EvalReport | None:
    """The report eval/step-N.json holds, when it holds a result for every one of these tasks."""
    report = read_report(run, step)
    return report if report is not None and set(task_names) <= {r.name for r in report.results} else None


def run_finished(events: list[dict]) -> bool:
    """Whether the run's last start was followed by its finish, or by its launcher giving up (a rank's own
    failure is not the end: the launcher may restart it; a later `kiln train` starts the run again)."""
    lifecycle = [
        e["event"]
        for e in events
        if e.get("event") in ("start", "finish") or (e.get("event") == "failure" and "launcher" in e)
    ]
    return bool(lifecycle) and lifecycle[-1] in ("finish", "failure")


def build_tasks(eval_cfg: EvalConfig, data: Place) -> list[EvalTask]:
    """Every configured task, its inputs read and checked."""
    data = location(data)
    inputs = TaskInputs(data=data, tokenizer=Tokenizer.load(data), batch_size=eval_cfg.batch_size)
    return [build_task(entry, inputs) for entry in eval_cfg.task_entries()]


def plan_steps(run: Place, eval_cfg: EvalConfig) -> list[int]:
    committed = committed_steps(run)
    latest = latest_committed_step(run) if committed else None
    return steps_to_evaluate(eval_cfg.steps, committed, latest, checkpoints_url(run))


@dataclass(frozen=True)
class StepPlan:
    """One checkpoint's work: the model's shape as the checkpoint recorded it, and every task's slices."""

    step: int
    shape: ModelShape
    slices: dict[str, list[Slice]]


def plan_step(run: Place, step: int, tasks: list[EvalTask], slice_size: int) -> StepPlan:
    """Slice every task for a step (this is where a task rejects what the model cannot score)."""
    record = read_commit(run, step)
    shape = ModelShape(seq_len=record.model.seq_len, vocab_size=record.vocab_size)
    return StepPlan(step, shape, {task.name: task.slices(shape, slice_size) for task in tasks})


class EvalJob:
    """Tasks and a pool of workers for any number of checkpoints of one run (inside a Ray session).

    Slices that do not use the model are scored once, for the first step, and their
    tallies reused for every later one.
    """

    def __init__(
        self,
        run: Place,
        tasks: list[EvalTask],
        eval_cfg: EvalConfig,
        on_progress: Progress | None = None,
    ):
        self.run = location(run)
        self.tasks = tasks
        self.on_progress = on_progress
        self.model_free: dict[Slice, Tally] = {}
        self.pool = EvalPool(self.run, tasks, eval_cfg.workers, eval_cfg.max_retries)

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
        write_report(self.run, report)
        return report


def evaluate_steps(
    run: Place,
    plans: list[StepPlan],
    tasks: list[EvalTask],
    eval_cfg: EvalConfig,
    on_progress: Progress | None = None,
    on_report: Callable[[EvalReport], None] | None = None,
) -> list[EvalReport]:
    """Evaluate planned steps in order (inside a Ray session); each writes its eval/step-N.json."""
    reports = []
    with EvalJob(run, tasks, eval_cfg, on_progress) as job:
        for plan in plans:
            reports.append(job.evaluate(plan))
            if on_report is not None:
                on_report(reports[-1])
    return reports


def follow_run(
    run: Place,
    tasks: list[EvalTask],
    eval_cfg: EvalConfig,
    on_progress: Progress | None = None,
    on_report: Callable[[EvalReport], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[EvalReport]:
    """Evaluate every committed step without a complete result, then each new one as it is committed,
    until the run records its finish (inside a Ray session)."""
    names = [task.name for task in tasks]
    records = RunRecords(run)
    seen: set[int] = set()
    reports = []
    with EvalJob(run, tasks, eval_cfg, on_progress) as job:
        while True:
            finished = run_finished(records.events())  # read first: the scan below then sees the last checkpoint
            for step in committed_steps(run):
                if step in seen:
                    continue
                seen.add(step)
                if complete_report(run, step, names) is not None:
                    continue
                try:
                    reports.append(job.evaluate(plan_step(run, step, tasks, eval_cfg.slice_size)))
                except FileNotFoundError:
                    if step in committed_steps(run):
                        raise
                    warnings.warn(f"step {step} was pruned before it could be evaluated", stacklevel=1)
                    continue
                if on_report is not None:
                    on_report(reports[-1])
            if finished:
                return reports
            sleep(eval_cfg.follow_interval_s)
