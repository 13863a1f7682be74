"""Interruptions never change the result: after SIGTERM, SIGUSR1 or SIGUSR2 (what SLURM and Kubernetes
send before preemption) or a rank killed outright, training continues from the last committed
checkpoint and the loss curve equals an uninterrupted run's, bit for bit; no rank process outlives
the launcher."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from llm.checkpoint import latest_committed_step
from ops.records import RunRecords

pytestmark = pytest.mark.slow

# Long enough that a signal sent once step FIRST_STEP is logged always lands mid-run, even on a busy machine.
STEPS = 160
FIRST_STEP = 3


def kiln_cmd(*args):
    return [sys.executable, "-m", "launch.cli", *args]


def curve(run_dir):
    """Loss per step; a step re-run after a crash is logged again, and its last row wins."""
    return {row["step"]: row["loss"] for row in RunRecords(str(run_dir)).metrics()}


def wait_for_step(run_dir, step, proc, timeout_s=300):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "training ended before it could be interrupted"
        if any(row["step"] >= step for row in RunRecords(str(run_dir)).metrics()):
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached")


def start_training(path, cwd, *overrides):
    return subprocess.Popen(
        kiln_cmd("train", str(path), *overrides),
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def descendants(proc):
    return [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]


def alive(pids):
    living = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.append(pid)
        except psutil.NoSuchProcess:
            pass
    return living


def finish(proc, timeout_s=600):
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
        return proc.returncode, stderr.decode()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def events(run, kind):
    return [e for e in RunRecords(str(run)).events() if e["event"] == kind]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_config, prepared_data):
    """Prepared data, a config, and the loss curve of an uninterrupted run."""
    tmp = tmp_path_factory.mktemp("interrupt")
    path = tiny_config(
        tmp, seed=5, run={"dir": str(tmp / "straight")}, train={"steps": STEPS, "checkpoint_every": 40, "warmup_steps": 5}
    )
    prepared_data(path)
    straight = subprocess.run(kiln_cmd("train", str(path)), cwd=tmp, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    reference = curve(tmp / "straight")
    assert sorted(reference) == list(range(1, STEPS + 1))
    return tmp, path, reference


def preempt(path, cwd, run, sig):
    """Start training into ``run``, send ``sig`` to `kiln train` once FIRST_STEP is logged; return the
    rank-side processes seen while it ran and the launcher's exit code."""
    proc = start_training(path, cwd, f"run.dir={run}", "train.checkpoint_every=1000")
    wait_for_step(run, FIRST_STEP, proc)
    children = descendants(proc)
    proc.send_signal(sig)
    rc, stderr = finish(proc)
    return children, rc, stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2], ids=lambda s: s.name)
def test_a_stop_signal_saves_at_the_next_step_exits_75_after_every_rank_and_the_rerun_continues_the_curve(setup, sig):
    tmp, path, reference = setup
    run = tmp / sig.name.lower()
    children, rc, stderr = preempt(path, tmp, run, sig)
    assert rc == 75, stderr
    assert len(children) >= 3, "torchrun and two ranks ran under the launcher"
    assert alive(children) == [], "a rank or torchrun outlived the launcher"

    [preemption] = events(run, "preemption")
    stopped_at = preemption["step"]
    assert FIRST_STEP <= stopped_at < STEPS
    assert latest_committed_step(str(run)) == stopped_at
    assert max(curve(run)) == stopped_at

    rc, stderr = finish(start_training(path, tmp, f"run.dir={run}", "train.checkpoint_every=1000"))
    assert rc == 0, stderr
    assert curve(run) == reference


def test_a_killed_rank_is_restarted_from_the_last_checkpoint_with_the_same_curve(setup):
    tmp, path, reference = setup
    run = tmp / "crash"
    proc = start_training(path, tmp, f"run.dir={run}", "train.max_restarts=1")
    wait_for_step(run, 45, proc)  # past the first checkpoint (step 40)
    victim = next(b for b in RunRecords(str(run)).heartbeats() if b["rank"] == 1)["pid"]
    os.kill(victim, signal.SIGKILL)
    rc, stderr = finish(proc)
    assert rc == 0, stderr
    [restart] = events(run, "restart")
    assert restart["attempt"] == 1 and restart["max_restarts"] == 1 and restart["step"] >= 40
    assert {"rank": 1, "exit_code": -9, "pid": victim}.items() <= restart["failures"][0].items()
    assert curve(run) == reference


def test_a_preempted_run_resumes_on_fewer_ranks_and_follows_the_same_curve(setup):
    tmp, path, reference = setup
    run = tmp / "reshaped"
    _, rc, stderr = preempt(path, tmp, run, signal.SIGTERM)
    assert rc == 75, stderr

    rc, stderr = finish(start_training(path, tmp, f"run.dir={run}", "train.nproc=1"))
    assert rc == 0, stderr
    resumes = events(run, "resume")
    assert resumes and resumes[-1]["reshaped"] is True and resumes[-1]["world_size"] == 1
    resumed = curve(run)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    # One rank sums gradients in another order than two: equal to fp32 rounding, not bit for bit.
    assert resumed == pytest.approx(reference, rel=1e-5, abs=1e-6)
