"""Interruptions never change the result: after SIGTERM, SIGUSR1 or SIGUSR2 (what SLURM and Kubernetes
send before preemption) or a rank killed outright, training continues from the last committed
checkpoint and the loss curve equals an uninterrupted run's, bit for bit; no rank process outlives
the launcher.  The stop signals stop one run in turn, so the rerun after each is the next one's run."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from llm.checkpoint import latest_committed_step
from ops.records import RunRecords

pytestmark = pytest.mark.slow

# Long enough that a signal sent once FIRST_STEP more steps are logged always lands mid-run, even on a busy
# machine and after two earlier stops of the same run.
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


@contextlib.contextmanager
def killed_on_failure(proc):
    """Kill `kiln train` and everything under it when the block fails (its own session, see start_training)."""
    try:
        yield
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


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


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


@dataclass
class Stop:
    """What one `kiln train` stopped by a signal left: its exit code and stderr, the rank-side processes seen
    under it and those of them still alive once it had exited, the step it was signalled after, and a copy
    of the run as it was then."""

    rc: int
    stderr: str
    children: list[int]
    alive: list[int]
    signalled_after: int
    run: Path


@dataclass
class StoppedInTurn:
    stops: dict[signal.Signals, Stop]
    rc: int
    stderr: str
    final: dict[int, float]


def stop_with(sig, path, cwd, run) -> tuple[int, str, list[int], list[int], int]:
    """Start training into ``run``, send ``sig`` to `kiln train` once FIRST_STEP more steps are logged."""
    signal_after = max(curve(run), default=0) + FIRST_STEP
    proc = start_training(path, cwd, f"run.dir={run}", "train.checkpoint_every=1000")
    with killed_on_failure(proc):
        wait_for_step(run, signal_after, proc)
        children = descendants(proc)
        proc.send_signal(sig)
    rc, stderr = finish(proc)
    return rc, stderr, children, alive(children), signal_after


@pytest.fixture(scope="module")
def stopped_in_turn(setup) -> StoppedInTurn:
    """One run stopped by each stop signal in turn, every stop rerun from where it left off (as a job preempted
    again after its requeue is), then rerun to the end; the rerun after each signal is the next one's run."""
    tmp, path, _ = setup
    run = tmp / "stopped-in-turn"
    stops = {}
    for sig in STOP_SIGNALS:
        rc, stderr, children, living, signalled_after = stop_with(sig, path, tmp, run)
        copy = tmp / f"as-{sig.name.lower()}-left-it"
        shutil.copytree(run, copy)
        stops[sig] = Stop(rc, stderr, children, living, signalled_after, copy)
    rc, stderr = finish(start_training(path, tmp, f"run.dir={run}", "train.checkpoint_every=1000"))
    return StoppedInTurn(stops, rc, stderr, curve(run))


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_a_stop_signal_saves_at_the_next_step_exits_75_after_every_rank_and_the_rerun_continues_the_curve(
    setup, stopped_in_turn, sig
):
    _, _, reference = setup
    stop = stopped_in_turn.stops[sig]
    assert stop.rc == 75, stop.stderr
    assert len(stop.children) >= 3, "torchrun and two ranks ran under the launcher"
    assert stop.alive == [], "a rank or torchrun outlived the launcher"

    preemptions = events(stop.run, "preemption")
    assert len(preemptions) == STOP_SIGNALS.index(sig) + 1, "one preemption per stop so far"
    stopped_at = preemptions[-1]["step"]
    assert stop.signalled_after <= stopped_at < STEPS
    assert latest_committed_step(str(stop.run)) == stopped_at
    assert curve(stop.run) == {step: loss for step, loss in reference.items() if step <= stopped_at}

    assert stopped_in_turn.rc == 0, stopped_in_turn.stderr
    assert stopped_in_turn.final == reference


def test_a_killed_rank_is_restarted_from_the_last_checkpoint_with_the_same_curve(setup):
    tmp, path, reference = setup
    run = tmp / "crash"
    proc = start_training(path, tmp, f"run.dir={run}", "train.max_restarts=1")
    with killed_on_failure(proc):
        wait_for_step(run, 45, proc)  # past the first checkpoint (step 40)
        victim = next(b for b in RunRecords(str(run)).heartbeats() if b["rank"] == 1)["pid"]
        os.kill(victim, signal.SIGKILL)
    rc, stderr = finish(proc)
    assert rc == 0, stderr
    [restart] = events(run, "restart")
    assert restart["attempt"] == 1 and restart["max_restarts"] == 1 and restart["step"] >= 40
    assert {"rank": 1, "exit_code": -9, "pid": victim}.items() <= restart["failures"][0].items()
    assert curve(run) == reference


def test_a_preempted_run_resumes_on_fewer_ranks_and_follows_the_same_curve(setup, stopped_in_turn):
    tmp, path, reference = setup
    run = tmp / "reshaped"
    stopped = stopped_in_turn.stops[signal.SIGTERM]
    assert stopped.rc == 75, stopped.stderr
    shutil.copytree(stopped.run, run)

    rc, stderr = finish(start_training(path, tmp, f"run.dir={run}", "train.nproc=1"))
    assert rc == 0, stderr
    resumes = events(run, "resume")
    assert resumes and resumes[-1]["reshaped"] is True and resumes[-1]["world_size"] == 1
    resumed = curve(run)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    # One rank sums gradients in another order than two: equal to fp32 rounding, not bit for bit.
    assert resumed == pytest.approx(reference, rel=1e-5, abs=1e-6)
