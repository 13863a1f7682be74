"""Resume with two real DeepSpeed ranks: damaged files are caught and passed over, and on S3 each
rank downloads only the files it loads (bytes counted by the S3 server itself)."""

import subprocess
import sys

import pytest

from llm import checkpoint
from ops import storage
from ops.records import RunRecords

pytestmark = pytest.mark.slow


def flip_a_byte(url: str) -> None:
    data = bytearray(storage.read_bytes(url))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes(url, bytes(data))


def kiln(ranks, *args):
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *args],
        cwd=ranks.repo,
        env={**ranks.env(), "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def table_rows(text: str) -> list[list[str]]:
    """The body rows of a table rich printed."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.strip().startswith("│")
    ]


def test_a_damaged_file_is_named_by_ckpt_verify_and_makes_every_rank_fall_back_to_the_previous_checkpoint(
    ranks, token_data, tmp_path
):
    job = ranks.job(tmp_path / "run", token_data, steps=4, checkpoint_every=2, keep_checkpoints=3)
    proc = ranks.torchrun(job, tmp_path)
    assert proc.returncode == 0, ranks.errors(proc)
    records = RunRecords(job.run_dir)
    straight = records.metrics()
    damaged = storage.join(checkpoint.step_url(job.run_dir, 4), "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    flip_a_byte(damaged)  # only rank 1 reads this file; rank 0 must fall back too
    (tmp_path / "run" / "checkpoints" / "step-00000009").mkdir()  # a save that never committed
    ls, verify = kiln(ranks, "ckpt", "ls", job.run_dir), kiln(ranks, "ckpt", "verify", job.run_dir)
    (tmp_path / "run" / "checkpoints" / "step-00000009").rmdir()
    assert ls.returncode == 0, ls.stderr[-3000:]
    assert [(row[0], row[1]) for row in table_rows(ls.stdout)] == [
        ("2", "committed"),
        ("4", "committed · latest"),
        ("9", "incomplete"),
    ]
    assert verify.returncode == 1, verify.stdout + verify.stderr[-3000:]
    assert [line for line in verify.stdout.splitlines() if line.startswith("✗")] == [
        f"✗ {damaged} does not match the sha256 the record lists"
    ]

    proc = ranks.torchrun(job.model_copy(update={"train": job.train.model_copy(update={"steps": 5})}), tmp_path)
    assert proc.returncode == 0, ranks.errors(proc)
    assert f"cannot resume from {checkpoint.step_url(job.run_dir, 4)}: {damaged} does not match the sha256" in proc.stderr
    resumed = [e for e in records.events() if e["event"] == "resume"][-1]
    assert resumed["step"] == 2 and damaged in resumed["rejected"][0]
    again = records.metrics()[4:]
    assert [(r["step"], r["loss"]) for r in again[:2]] == [(r["step"], r["loss"]) for r in straight[2:]]
    assert checkpoint.committed_steps(job.run_dir) == [2, 4, 5]  # step 4 written afresh

    for step in (2, 4, 5):
        flip_a_byte(storage.join(checkpoint.step_url(job.run_dir, step), "mp_rank_00_model_states.pt"))
    proc = ranks.torchrun(job.model_copy(update={"train": job.train.model_copy(update={"steps": 6})}), tmp_path)
    assert proc.returncode != 0
    failure = [e for e in records.events() if e["event"] == "failure"][-1]
    assert failure["error"].startswith(
        f"CheckpointError: no committed checkpoint under {checkpoint.checkpoints_url(job.run_dir)} passes its checks"
    )


def test_on_s3_each_rank_downloads_only_the_model_states_and_its_own_optimizer_partition(
    ranks, token_data, tmp_path, counted_s3
):
    bucket, counts = counted_s3
    run_url = f"{bucket}/runs/per-rank"
    job = ranks.job(run_url, token_data, steps=3, checkpoint_every=2, checkpoint_at_end=False, zero_stage=2)
    proc = ranks.torchrun(job, tmp_path)
    assert proc.returncode == 0, ranks.errors(proc)
    straight = RunRecords(run_url).metrics()

    counts.clear()
    with ranks.spawned(job, tmp_path, env_of_rank=[{"AWS_ACCESS_KEY_ID": f"rank-{r}"} for r in range(2)]) as procs:
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(out[-3000:] for out in outputs)
    again = RunRecords(run_url).metrics()[3:]
    assert [(r["step"], r["loss"]) for r in again] == [(3, straight[2]["loss"])]

    saved = checkpoint.read_commit(run_url, 2)
    step_path = "/kiln-test/runs/per-rank/checkpoints/step-00000002/"
    for rank in range(2):
        fetched = {
            path.removeprefix(step_path): n
            for (who, path), n in counts.items()
            if who == f"rank-{rank}" and path.startswith(step_path) and not path.endswith("/COMMITTED")
        }
        own = f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        expected = {name: saved.file(name).bytes for name in ("mp_rank_00_model_states.pt", own)}
        assert fetched == expected, f"rank {rank} fetched {fetched}"
