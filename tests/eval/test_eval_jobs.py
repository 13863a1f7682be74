"""Evaluation jobs on a real local Ray over checkpoints that 2 DeepSpeed ranks trained and committed."""

import json
import os
import signal

import pytest

from cluster.evals.config import EvalConfig
from cluster.evals.driver import EvalJob, build_tasks, evaluate_steps, plan_step, plan_steps
from cluster.evals.report import report_url
from ops import storage

pytestmark = pytest.mark.slow


def eval_config(run, **changes) -> EvalConfig:
    base = {
        "tasks": [{"name": "cloze", "type": "multiple_choice", "path": run.cloze}],
        "batch_size": 4,
        "slice_size": 8,
        "workers": 2,
    }
    return EvalConfig.model_validate({**base, **changes})


@pytest.fixture(scope="module")
def every_step(trained_run, local_ray):
    """eval.steps=all through the job API, undisturbed: the reports and the files they wrote."""
    cfg = eval_config(trained_run, steps="all")
    tasks = build_tasks(cfg, trained_run.data_url)
    plans = [plan_step(trained_run.run_url, step, tasks, cfg.slice_size) for step in plan_steps(trained_run.run_url, cfg)]
    reports = evaluate_steps(trained_run.run_url, plans, tasks, cfg)
    return reports, {r.step: storage.read_json(report_url(trained_run.run_url, r.step)) for r in reports}


def test_every_committed_step_writes_held_out_and_task_results(every_step):
    reports, docs = every_step
    assert [r.step for r in reports] == [3, 6] and sorted(docs) == [3, 6]
    for step, doc in docs.items():
        assert doc["step"] == step
        assert doc["loss"] > 0 and doc["unigram_loss"] > 0 and doc["tokens"] > 0
        assert doc["tasks"]["heldout"]["loss"] == doc["loss"]
        cloze = doc["tasks"]["cloze"]
        assert cloze["examples"] == 40 and cloze["acc"] == cloze["correct"] / 40
        assert 0 <= cloze["acc_norm"] <= 1
        assert [m["key"] for m in doc["display"]["cloze"]["metrics"]][:3] == ["acc", "acc_norm", "examples"]
    assert docs[6]["loss"] < docs[3]["loss"]  # training went on between the two checkpoints


def test_each_worker_loads_each_checkpoint_once_and_a_killed_worker_loses_nothing(trained_run, every_step):
    _, docs = every_step
    cfg = eval_config(trained_run)
    tasks = build_tasks(cfg, trained_run.data_url)
    plans = [plan_step(trained_run.run_url, step, tasks, cfg.slice_size) for step in (3, 6)]
    killed = []

    def kill_a_worker_mid_job(step, done, total):
        if step == 6 and not killed:
            assert done < total
            killed.append(job.pool.pids()[0])
            os.kill(killed[0], signal.SIGKILL)

    with EvalJob(trained_run.run_url, tasks, cfg, on_progress=kill_a_worker_mid_job) as job:
        first = job.evaluate(plans[0])
        assert job.pool.loaded_steps() == [[3], [3]]  # one load per worker for all of step 3's slices
        second = job.evaluate(plans[1])
        after = job.pool.pids()
    assert killed and killed[0] not in after  # Ray restarted the worker in a new process
    assert first.to_json() == docs[3]
    assert second.to_json() == docs[6]  # bit for bit the undisturbed result
    for result, task in zip(second.results, tasks):
        totals = task.totals(plans[1].shape)
        assert (result.values()["examples"], result.values()["tokens"]) == (totals.examples, totals.tokens)


def test_the_model_comes_from_the_checkpoint_not_the_current_config(trained_run, every_step, kiln_cli):
    _, docs = every_step
    proc = kiln_cli(
        "eval",
        str(trained_run.config),
        "model.dim=64",
        "model.layers=1",
        "model.seq_len=16",
        "eval.steps=[3]",
        f"eval.tasks=[{{name: cloze, type: multiple_choice, path: {trained_run.cloze}}}]",
        "eval.workers=2",
        cwd=trained_run.folder,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert storage.read_json(report_url(trained_run.run_url, 3)) == docs[3]
    assert "step 3" in proc.stdout and "unigram baseline loss" in proc.stdout and "cloze" in proc.stdout


def eval_files(run) -> dict[str, bytes]:
    folder = os.path.join(run.run_url, "eval")
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize(
    "row, message",
    [
        ({"context": "x", "choices": [" a", " b"]}, "line 2: missing field 'label'"),
        ({"context": "x", "choices": [" a", " b"], "label": 5}, "line 2: label 5 is out of range for 2 choices"),
        ({"context": "x", "choices": [], "label": 0}, "line 2: 'choices' is empty"),
    ],
)
def test_a_bad_task_file_is_one_line_naming_it_and_nothing_is_written(
    trained_run, every_step, kiln_cli, tmp_path, row, message
):
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"context": "import", "choices": [" os", " sys"], "label": 0})
    bad.write_text(good + "\n" + json.dumps(row) + "\n")
    before = eval_files(trained_run)
    proc = kiln_cli(
        "eval",
        str(trained_run.config),
        "eval.steps=all",
        f"eval.tasks=[{{name: bad, type: multiple_choice, path: {bad}}}]",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"kiln: error: {bad} {message}")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert eval_files(trained_run) == before


def test_a_step_without_a_committed_checkpoint_is_one_line_naming_it_and_nothing_is_written(
    trained_run, every_step, kiln_cli, tmp_path
):
    before = eval_files(trained_run)
    proc = kiln_cli("eval", str(trained_run.config), "eval.steps=[3, 4]", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("kiln: error: eval.steps: step 4 has no committed checkpoint in ")
    assert proc.stderr.count("\n") == 1 and "(committed: 3, 6)" in proc.stderr
    assert eval_files(trained_run) == before
