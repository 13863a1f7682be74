"""train.loss_guard on two real DeepSpeed ranks (CPU, gloo): a refused step is skipped, or stops the run.

A spike factor just above 1 over a one-loss window refuses every step whose loss rises above the
last kept one: at this learning rate, data and seed the loss of step 6 rises (by ~1%), deterministically.
"""

import pytest
import torch

from llm.checkpoint import load_model_state, read_commit
from ops.records import RunRecords

pytestmark = pytest.mark.slow

STEPS = 7
TOUCHY = {"spike_factor": 1.0001, "window": 1}
BOUNCY = {"lr": 0.05, "min_lr": 0.005}


@pytest.fixture(scope="module")
def skipping_run(ranks, token_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("skip")
    guard = {"action": "skip", **TOUCHY}
    job = ranks.job(
        tmp / "run", token_data, steps=STEPS, checkpoint_every=1, keep_checkpoints=STEPS, loss_guard=guard, **BOUNCY
    )
    proc = ranks.torchrun(job, tmp)
    assert proc.returncode == 0, ranks.errors(proc)
    return job, RunRecords(job.run_dir)


def skipped_steps(records):
    return [e["step"] for e in records.events() if e["event"] == "loss_guard"]


def test_a_skipped_step_leaves_the_weights_as_they_were_and_the_run_finishes(skipping_run):
    job, records = skipping_run
    skipped = skipped_steps(records)
    assert skipped, "no step was refused: the test data no longer makes a loss rise"
    assert records.events()[-1]["event"] == "finish"
    assert [r["step"] for r in records.metrics()] == list(range(1, STEPS + 1))
    kept = [s for s in range(2, STEPS + 1) if s not in skipped]
    assert kept, "every step after the first was refused: nothing shows that kept steps still train"
    weights = {step: load_model_state(job.run_dir, step)[1] for step in range(1, STEPS + 1)}
    for step in skipped:
        assert all(torch.equal(weights[step][k], weights[step - 1][k]) for k in weights[step])
    for step in kept:
        assert not all(torch.equal(weights[step][k], weights[step - 1][k]) for k in weights[step])


def test_the_guard_window_is_a_checkpointed_state_part(skipping_run):
    job, records = skipping_run
    last_loss = records.metrics()[-1]["loss"]
    assert read_commit(job.run_dir, STEPS).parts == {"loss_guard": {"kept": [last_loss]}}


def test_stop_ends_every_rank_with_one_line_naming_the_step_and_rank(ranks, token_data, tmp_path, skipping_run):
    first_refused = skipped_steps(skipping_run[1])[0]
    job = ranks.job(
        tmp_path / "run", token_data, steps=STEPS, checkpoint_every=STEPS, loss_guard={"action": "stop", **TOUCHY}, **BOUNCY
    )
    proc = ranks.torchrun(job, tmp_path)
    assert proc.returncode != 0
    assert "llm/trainer.py" not in proc.stderr  # no rank printed a traceback (torchrun's summary of them follows)
    for rank in (0, 1):
        lines = [line for line in proc.stderr.splitlines() if line.startswith(f"rank {rank}: step {first_refused}: loss ")]
        assert len(lines) == 1 and lines[0].endswith("(train.loss_guard.action=stop)"), proc.stderr[-2000:]
    failures = [e for e in RunRecords(job.run_dir).events() if e["event"] == "failure"]
    assert sorted(e["rank"] for e in failures) == [0, 1]
    assert all(f"step {first_refused}: loss" in e["error"] for e in failures)
