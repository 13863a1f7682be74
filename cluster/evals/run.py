"""The evaluation stage's one entry point, for `kiln eval` and `kiln run`: plan, fan out, show and record."""

from __future__ import annotations

from typing import Iterable

from cluster.config import ClusterConfig
from cluster.connect import ray_session
from cluster.evals.config import EvalConfig
from cluster.evals.display import EvalProgress, print_eval_table, stage_console
from cluster.evals.driver import build_tasks, complete_report, evaluate_steps, follow_run, plan_step, plan_steps
from cluster.evals.report import EvalReport, report_url
from ops.scalar_logs import log_eval
from ops.storage import Place


def evaluate_run(
    eval_cfg: EvalConfig,
    cluster_cfg: ClusterConfig,
    run: Place,
    data: Place,
    log_to: Iterable[str] = (),
    follow: bool = False,
    skip_evaluated: bool = False,
) -> list[EvalReport]:
    """Evaluate the checkpoints ``eval.steps`` names, or with ``follow`` every new one until the run finishes.

    Each report is printed as a table and logged as scalars to the ``log_to`` viewers.  With
    ``skip_evaluated`` (`kiln run`), ``eval.steps: latest`` whose report already holds every
    task's result is shown, not evaluated again.  Steps and task files are checked before Ray
    starts, so a bad one costs nothing and writes nothing.
    """
    steps = [] if follow else plan_steps(run, eval_cfg)
    if skip_evaluated and not follow and eval_cfg.steps == "latest":
        stored = complete_report(run, steps[0], [e.name for e in eval_cfg.task_entries()])
        if stored is not None:
            stage_console.print(f"eval: skipped — {report_url(run, steps[0])} holds every task's result")
            print_eval_table(stored, run)
            return [stored]
    tasks = build_tasks(eval_cfg, data)
    plans = [plan_step(run, step, tasks, eval_cfg.slice_size) for step in steps]
    backends = list(log_to)

    def show(report: EvalReport) -> None:
        print_eval_table(report, run)
        log_eval(run, backends, report.step, {r.name: r.values() for r in report.results})

    with ray_session(cluster_cfg), EvalProgress() as progress:
        if follow:
            stage_console.print(f"eval: following {run}: each committed checkpoint is evaluated until the run finishes")
            return follow_run(run, tasks, eval_cfg, progress.update, show)
        return evaluate_steps(run, plans, tasks, eval_cfg, progress.update, show)
