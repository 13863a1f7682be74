"""Evaluation jobs on a real local Ray over a checkpoint trained by 2 DeepSpeed ranks."""
import json
import os
import signal

import pytest

from cluster.config import EvalConfig
from cluster.eval import build_tasks, eval_url, evaluate_steps, plan_step, plan_steps
from launch.config import load_config
from ops import storage

pytestmark = pytest.mark.slow


def eval_config(run, **changes) -> EvalConfig:
    base = {"tasks": [{"name": "cloze", "type": "multiple_choice", "path": run.cloze}], "batch_size": 4, "slice_size": 8,
            "workers": 2}
    return EvalConfig.model_validate({**base, **changes})


def evaluate(run, cfg: EvalConfig, on_progress=None):
    tasks = build_tasks(cfg, run.data_url)
    plans = [plan_step(run.run_url, step, tasks, cfg.slice_size) for step in plan_steps(run.run_url, cfg)]
    return evaluate_steps(run.run_url, plans, tasks, cfg, on_progress=on_progress)


def test_every_step_writes_held_out_and_task_results(trained_run, local_ray):
    reports = evaluate(trained_run, eval_config(trained_run, steps="all"))
    assert [r.step for r in reports] == [3, 6]
    for report in reports:
        doc = storage.read_json(eval_url(trained_run.run_url, report.step))
        assert doc["step"] == report.step
        assert doc["loss"] > 0 and doc["unigram_loss"] > 0 and doc["tokens"] > 0
        assert doc["tasks"]["heldout"]["loss"] == doc["loss"]
        cloze = doc["tasks"]["cloze"]
        assert cloze["examples"] == 40 and 0 <= cloze["acc"] <= 1 and 0 <= cloze["acc_norm"] <= 1
        assert cloze["acc"] == cloze["correct"] / 40
        assert [m["key"] for m in doc["display"]["cloze"]["metrics"]][:3] == ["acc", "acc_norm", "examples"]
    later, earlier = reports[1].results[0].values(), reports[0].results[0].values()
    assert later["loss"] < earlier["loss"]  # training went on between the two checkpoints
