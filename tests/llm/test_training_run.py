"""Two real DeepSpeed ranks on CPU (gloo): records, commit protocol, resume, preemption, consolidation."""

import shutil
import signal
import time

import numpy as np
import pytest
import torch

from data_shards.loader import GlobalBatchLoader
from llm import checkpoint
from llm.checkpoint import load_model
from llm.model import next_token_loss
from llm.trainer import REQUEUE_EXIT_CODE
from ops import storage
from ops.metrics_table import metrics_table
from ops.records import RunRecords
from support.tensorboard_files import tensorboard_scalars

pytestmark = pytest.mark.slow

METRIC_KEYS = {
    "step",
    "tokens",
    "loss",
    "lr",
    "grad_norm",
    "step_time_s",
    "tokens_per_s",
    "tflops",
    "mfu",
    "mem_gb",
    "data_wait_s",
    "time",
}


def run_ok(ranks, job, tmp_path):
    proc = ranks.torchrun(job, tmp_path)
    assert proc.returncode == 0, ranks.errors(proc)
    return RunRecords(job.run_dir)


def global_batch_loss(model, job, step_index):
    """Mean loss of ``model`` on global batch ``step_index`` (0-based) of the run's sample order."""
    g = job.train.global_batch
    loader = GlobalBatchLoader(job.data_url, "train", job.seed, job.model.seq_len, g, consumed_samples=step_index * g)
    batch = torch.from_numpy(loader.next_batch().astype(np.int64))
    with torch.no_grad():
        return next_token_loss(model(batch[:, :-1]), batch[:, 1:]).item()


def six_step_job(ranks, run_dir, data_url, nproc=2, stage=2, **train):
    """The job of every finished run below: 6 steps, checkpoints at steps 3 and 6."""
    return ranks.job(run_dir, data_url, **{"steps": 6, "checkpoint_every": 3, "nproc": nproc, "zero_stage": stage, **train})


@pytest.fixture(scope="module")
def finished_runs(ranks, token_data, tmp_path_factory):
    """``finished_runs(nproc, stage)``: the run folder of a finished :func:`six_step_job`, one per layout, trained
    once and copied by each test that inspects, reruns or resumes it (one fp32 rank runs stage 0 whatever the
    config says, so its runs are one)."""
    runs = {}

    def finished(nproc: int, stage: int):
        key = (nproc, 0 if nproc == 1 else stage)
        if key not in runs:
            tmp = tmp_path_factory.mktemp(f"before-{nproc}-ranks-zero{key[1]}")
            job = six_step_job(ranks, tmp / "run", token_data, nproc=nproc, stage=stage)
            proc = ranks.torchrun(job, tmp, nproc=nproc)
            assert proc.returncode == 0, ranks.errors(proc)
            assert checkpoint.read_commit(job.run_dir, 3).layout.zero_stage == key[1]
            runs[key] = tmp / "run"
        return runs[key]

    return finished


def test_two_rank_run_commits_checkpoints_and_resumes_bit_for_bit(ranks, token_data, tmp_path, finished_runs):
    shutil.copytree(finished_runs(2, 2), tmp_path / "run")
    job = six_step_job(ranks, tmp_path / "run", token_data)
    records = RunRecords(job.run_dir)

    rows = records.metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(METRIC_KEYS <= set(r) for r in rows)
    assert rows[-1]["tokens"] == 6 * 8 * 32
    assert rows[0]["mfu"] is None  # no peak on CPU
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert [b["rank"] for b in records.heartbeats()] == [0, 1]
    assert all(b["step"] == 6 for b in records.heartbeats())
    kinds = [e["event"] for e in records.events()]
    assert kinds == ["start", "checkpoint", "checkpoint", "finish"]

    assert checkpoint.committed_steps(job.run_dir) == [3, 6]
    assert storage.read_text(storage.join(job.run_dir, "checkpoints/latest")).strip() == "step-00000006"
    assert checkpoint.read_commit(job.run_dir, 6).data.consumed_samples == 48

    # Consolidated weights of step 3 reproduce the loss the engine logged for step 4.
    _, model = load_model(job.run_dir, 3)
    assert global_batch_loss(model, job, 3) == pytest.approx(rows[3]["loss"], rel=1e-5)

    # Lose step 6 as if the job died after step 3's commit: the rerun resumes at 3, and steps 4-6
    # come out bit for bit as in the uninterrupted run.
    storage.remove(checkpoint.step_url(job.run_dir, 6), recursive=True)
    storage.write_text(storage.join(job.run_dir, "checkpoints/latest"), "step-00000003\n")
    run_ok(ranks, job, tmp_path)
    again = records.metrics()[6:]
    assert [r["step"] for r in again] == [4, 5, 6]
    assert [r["loss"] for r in again] == [r["loss"] for r in rows[3:]]
    assert [r["grad_norm"] for r in again] == [r["grad_norm"] for r in rows[3:]]
    resumed = [e for e in records.events() if e["event"] == "resume"]
    assert resumed and resumed[0]["step"] == 3


def test_a_finished_run_is_not_retrained(ranks, token_data, tmp_path, finished_runs):
    shutil.copytree(finished_runs(2, 2), tmp_path / "run")
    records = run_ok(ranks, six_step_job(ranks, tmp_path / "run", token_data), tmp_path)
    assert [r["step"] for r in records.metrics()] == [1, 2, 3, 4, 5, 6]
    assert [e["event"] for e in records.events()][-3:] == ["start", "resume", "finish"]


def test_signal_to_one_rank_makes_all_ranks_save_and_exit_for_requeue(ranks, token_data, tmp_path):
    job = ranks.job(tmp_path / "run", token_data, steps=400, checkpoint_every=1000, log_every=1)
    records = RunRecords(job.run_dir)
    with ranks.spawned(job, tmp_path) as procs:
        deadline = time.monotonic() + 300
        while not any(b["rank"] == 1 and b["step"] >= 2 for b in records.heartbeats()):
            assert time.monotonic() < deadline, "ranks never reached step 2"
            assert all(p.poll() is None for p in procs), procs[0].communicate()[0][-3000:]
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGUSR1)
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [REQUEUE_EXIT_CODE, REQUEUE_EXIT_CODE], "\n----\n".join(out[-3000:] for out in outputs)
    preempted = [e for e in records.events() if e["event"] == "preemption"]
    assert len(preempted) == 1 and preempted[0]["signals"] == {"1": "SIGUSR1"}
    step = preempted[0]["step"]
    assert 2 <= step < 400
    assert checkpoint.latest_committed_step(job.run_dir) == step
    assert records.metrics()[-1]["step"] == step


def test_failure_is_recorded_with_a_clear_reason(ranks, tmp_path):
    job = ranks.job(tmp_path / "run", str(tmp_path / "no-data"), steps=2)
    proc = ranks.torchrun(job, tmp_path)
    assert proc.returncode != 0
    failures = [e for e in RunRecords(job.run_dir).events() if e["event"] == "failure"]
    assert failures and "run `kiln prepare` first" in failures[0]["error"]


def test_checkpoints_on_object_storage_commit_resume_and_consolidate(ranks, token_data, tmp_path, s3_bucket):
    run_url = f"{s3_bucket}/runs/s3-run"
    job = ranks.job(run_url, token_data, steps=4, checkpoint_every=2, keep_checkpoints=2, zero_stage=1, log_to=["tensorboard"])
    records = run_ok(ranks, job, tmp_path)
    rows = records.metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert checkpoint.committed_steps(run_url) == [2, 4]
    assert checkpoint.latest_committed_step(run_url) == 4
    files = storage.list_names(checkpoint.step_url(run_url, 2))
    assert {
        "COMMITTED",
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    } <= set(files)

    _, model = load_model(run_url, 2)
    assert global_batch_loss(model, job, 2) == pytest.approx(rows[2]["loss"], rel=1e-5)

    storage.remove(checkpoint.step_url(run_url, 4), recursive=True)
    storage.write_text(storage.join(run_url, "checkpoints/latest"), "step-00000002\n")
    run_ok(ranks, job, tmp_path)
    again = records.metrics()[4:]
    assert [(r["step"], r["loss"]) for r in again] == [(r["step"], r["loss"]) for r in rows[2:]]

    # Rank 0's TensorBoard events, as TensorBoard reads them, are the records' table: the resumed steps once.
    shown, table = tensorboard_scalars(run_url), metrics_table(run_url)
    for key in ("loss", "lr", "grad_norm"):
        assert [s for s, _ in shown[f"train/{key}"]] == [r["step"] for r in table] == [1, 2, 3, 4]
        assert [v for _, v in shown[f"train/{key}"]] == pytest.approx([r[key] for r in table], rel=1e-6)


def test_without_a_final_checkpoint_only_periodic_ones_are_written(ranks, token_data, tmp_path):
    job = ranks.job(tmp_path / "run", token_data, steps=3, checkpoint_every=2, checkpoint_at_end=False)
    records = run_ok(ranks, job, tmp_path)
    assert [r["step"] for r in records.metrics()] == [1, 2, 3]
    assert checkpoint.committed_steps(job.run_dir) == [2]


RESHAPES = {
    "2-ranks-zero2-to-1-rank": ((2, 2), (1, 2)),
    "2-ranks-zero3-to-1-rank": ((2, 3), (1, 3)),
    "1-rank-to-2-ranks-zero2": ((1, 2), (2, 2)),
    "1-rank-to-2-ranks-zero3": ((1, 3), (2, 3)),
    "2-ranks-zero2-to-2-ranks-zero1": ((2, 2), (2, 1)),
    "2-ranks-zero3-to-2-ranks-zero1": ((2, 3), (2, 1)),
    "2-ranks-zero2-to-2-ranks-zero3": ((2, 2), (2, 3)),
}


@pytest.mark.parametrize("reshape", list(RESHAPES))
def test_a_run_resumed_on_another_number_of_ranks_or_zero_stage_continues_the_same_loss_curve(
    reshape, ranks, token_data, tmp_path, finished_runs
):
    """One fp32 rank runs ZeRO stage 0 whatever the config says; a resume that changes the number
    of ranks or the ZeRO stage goes through per-parameter state in either direction and continues the
    same loss curve (same global batch and sample order; only reductions differ)."""
    (nproc_before, stage_before), (nproc_after, stage_after) = RESHAPES[reshape]
    shutil.copytree(finished_runs(nproc_before, stage_before), tmp_path / "run")
    job = six_step_job(ranks, tmp_path / "run", token_data, nproc=nproc_before, stage=stage_before)
    records = RunRecords(job.run_dir)
    uninterrupted = records.metrics()
    assert [r["step"] for r in uninterrupted] == [1, 2, 3, 4, 5, 6]
    storage.remove(checkpoint.step_url(job.run_dir, 6), recursive=True)
    storage.write_text(storage.join(job.run_dir, "checkpoints/latest"), "step-00000003\n")

    after = job.model_copy(update={"train": job.train.model_copy(update={"nproc": nproc_after, "zero_stage": stage_after})})
    proc = ranks.torchrun(after, tmp_path, nproc=nproc_after)
    assert proc.returncode == 0, ranks.errors(proc)
    resumed = records.metrics()[6:]
    assert [r["step"] for r in resumed] == [4, 5, 6]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in uninterrupted[3:]], rel=1e-5)
    assert [e for e in records.events() if e["event"] == "resume"][-1]["reshaped"] is True
    assert checkpoint.read_commit(job.run_dir, 6).layout.world_size == nproc_after
    assert checkpoint.read_commit(job.run_dir, 6).layout.zero_stage == (0 if nproc_after == 1 else stage_after)


def test_resuming_on_changed_data_is_a_clear_failure(ranks, token_data, tmp_path, finished_runs):
    """A run trained on ``token_data`` resumed on a copy of it (the same content, so the same fingerprint)
    whose manifest then changed."""
    data = tmp_path / "data"
    shutil.copytree(token_data, data)
    shutil.copytree(finished_runs(2, 2), tmp_path / "run")
    manifest = storage.read_json(str(data / "train" / "manifest.json"))
    manifest["tokenizer_sha256"] = "0" * 64  # the data a checkpoint was trained on is gone
    storage.write_json(str(data / "train" / "manifest.json"), manifest)
    proc = ranks.torchrun(six_step_job(ranks, tmp_path / "run", str(data), steps=8), tmp_path)
    assert proc.returncode != 0
    failures = [e for e in RunRecords(str(tmp_path / "run")).events() if e["event"] == "failure"]
    assert failures and "cannot resume: the prepared data changed since the checkpoint" in failures[0]["error"]
