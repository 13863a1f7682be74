"""Interruptions never change the result: after SIGTERM (what SLURM and Kubernetes send before
preemption) or a rank killed outright, training continues from the last committed checkpoint and
the loss curve equals an uninterrupted run's, bit for bit."""
import os
import signal
import subprocess
import sys
import time

import pytest

from ops.records import RunRecords

pytestmark = pytest.mark.slow

STEPS = 30


def kiln_cmd(*args):
    return [sys.executable, "-m", "launch.cli", *args]


def curve(run_dir):
    """Loss per step; a step re-run after a crash is logged again, and its last row wins."""
    return {row["step"]: row["loss"] for row in RunRecords(str(run_dir)).metrics()}


def wait_for_step(run_dir, step, proc, timeout_s=300):
    deadline = time.monotonic() + timeout_s
    records = RunRecords(str(run_dir))
    while time.monotonic() < deadline:
        assert proc.poll() is None, "training ended before it could be interrupted"
        if any(row["step"] >= step for row in records.metrics()):
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached")


def start_training(path, cwd, *overrides):
    return subprocess.Popen(kiln_cmd("train", str(path), *overrides), cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def finish(proc, timeout_s=600):
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
        return proc.returncode, stderr.decode()[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher, torchrun and the ranks


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_config):
    """Prepared data, a config, and the loss curve of an uninterrupted run."""
    tmp = tmp_path_factory.mktemp("interrupt")
    path = tiny_config(tmp, seed=5, run={"dir": str(tmp / "straight")}, train={"steps": STEPS, "checkpoint_every": 5})
    assert subprocess.run(kiln_cmd("prepare", str(path)), cwd=tmp, capture_output=True).returncode == 0
    straight = subprocess.run(kiln_cmd("train", str(path)), cwd=tmp, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    reference = curve(tmp / "straight")
    assert sorted(reference) == list(range(1, STEPS + 1))
    return tmp, path, reference


def preempt_after_step(path, cwd, run, step):
    """Start training into ``run``, SIGTERM the launcher once ``step`` is logged, expect exit 75."""
    proc = start_training(path, cwd, f"run.dir={run}", "train.checkpoint_every=1000")
    wait_for_step(run, step, proc)
    proc.send_signal(signal.SIGTERM)
    rc, stderr = finish(proc)
    assert rc == 75, stderr


def events(run):
    return RunRecords(str(run)).events()


def test_sigterm_saves_exits_75_and_the_rerun_continues_the_same_curve(setup):
    tmp, path, reference = setup
    run = tmp / "sigterm"
    preempt_after_step(path, tmp, run, 3)
    assert "preemption" in [e["event"] for e in events(run)]
    saved_at = int((run / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert 3 <= saved_at < STEPS
    assert (run / "checkpoints" / f"step-{saved_at:08d}" / "COMMITTED").exists()

    rc, stderr = finish(start_training(path, tmp, f"run.dir={run}", "train.checkpoint_every=1000"))
    assert rc == 0, stderr
    assert curve(run) == reference


def test_a_killed_rank_is_restarted_from_the_last_checkpoint_with_the_same_curve(setup):
    tmp, path, reference = setup
    run = tmp / "crash"
    proc = start_training(path, tmp, f"run.dir={run}", "train.max_restarts=1")
    wait_for_step(run, 8, proc)
    victim = next(beat["pid"] for beat in RunRecords(str(run)).heartbeats() if beat["rank"] == 1)
    os.kill(victim, signal.SIGKILL)
    rc, stderr = finish(proc)
    assert rc == 0, stderr
    assert "restart" in [e["event"] for e in events(run)]
    assert curve(run) == reference


def test_a_preempted_run_resumes_on_fewer_ranks_and_follows_the_same_curve(setup):
    tmp, path, reference = setup
    run = tmp / "reshaped"
    preempt_after_step(path, tmp, run, 3)

    rc, stderr = finish(start_training(path, tmp, f"run.dir={run}", "train.nproc=1"))
    assert rc == 0, stderr
    resumes = [e for e in events(run) if e["event"] == "resume"]
    assert resumes and resumes[-1]["reshaped"] is True and resumes[-1]["world_size"] == 1
    resumed = curve(run)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    # One rank sums gradients in another order than two: equal to fp32 rounding, not bit for bit.
    assert resumed == pytest.approx(reference, rel=1e-5, abs=1e-6)
