"""`kiln submit` and `kiln jobs` against a real Ray head started with token authentication, and Ray Train
runs that survive a killed worker or a stop request with the uninterrupted loss curve."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from cluster.auth import auth_headers
from llm.checkpoint import latest_committed_step
from ops.records import RunRecords

pytestmark = pytest.mark.slow

# Every interruption below happens while the ranks are held (SIGSTOP), so a run need only outlast the few
# steps between one being logged and the ranks being held; more steps would only make each run slower.
STEPS = 100
CHECKPOINT_EVERY = 25


def kiln(*args, env=None, cwd=None, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def client_env(head, with_token=True, home=None):
    """A user's shell on this machine: the head's token where Ray clients look for it, or none at all."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    if with_token:
        env.update(RAY_AUTH_TOKEN_PATH=head.token_path, RAY_AUTH_MODE="token")
    if home is not None:
        env["HOME"] = str(home)  # no ~/.ray/auth_token to fall back on
    return env


def curve(run_dir):
    return {row["step"]: row["loss"] for row in RunRecords(str(run_dir)).metrics()}


def wait_until(condition, what, alive=lambda: True, timeout_s=600):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        assert alive(), f"the run ended before {what}"
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def wait_for_step(run_dir, step, alive=lambda: True):
    wait_until(lambda: any(row["step"] >= step for row in RunRecords(str(run_dir)).metrics()), f"step {step}", alive)


def jobs_client(head) -> JobSubmissionClient:
    """The head's Jobs API in this process: polled in a loop without a CLI's start-up each time."""
    return JobSubmissionClient(head.dashboard_url, headers=auth_headers(client_env(head)))


@contextlib.contextmanager
def ranks_held(run_dir, nproc=2):
    """Every rank process of a running Ray Train run stopped (SIGSTOP) for the block, then resumed: a stop
    request sent meanwhile reaches them a few steps later, however slowly it travels on a busy machine, and
    the run cannot end meanwhile.  Yields the heartbeats that named the ranks."""
    while len(beats := RunRecords(str(run_dir)).heartbeats()) < nproc:
        time.sleep(0.2)
    pids = [beat["pid"] for beat in beats]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        assert max(curve(run_dir)) < STEPS, "the run ended before it could be interrupted"
        yield beats
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_config, prepared_data):
    """Prepared data, a Ray Train config, and the uninterrupted curve (Ray Train equals torchrun bit for bit)."""
    tmp = tmp_path_factory.mktemp("submit")
    path = tiny_config(
        tmp,
        seed=11,
        run={"dir": str(tmp / "straight")},
        train={"steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY, "launcher": "ray", "warmup_steps": 5},
        eval={"max_windows_per_shard": 4, "workers": 1},
    )
    prepared_data(path)
    straight = kiln("train", str(path), "train.launcher=local", cwd=tmp)
    assert straight.returncode == 0, straight.stderr[-2000:]
    reference = curve(tmp / "straight")
    assert sorted(reference) == list(range(1, STEPS + 1))
    return tmp, path, reference


def test_submit_follow_runs_prepare_train_eval_on_the_cluster_and_keeps_the_token_out_of_everything(setup, ray_head, tmp_path):
    tmp, path, reference = setup
    run = tmp_path / "run"
    data = tmp_path / "data"
    done = kiln(
        "submit",
        str(path),
        f"run.dir={run}",
        f"data.output={data}",
        "--address",
        ray_head.dashboard_url,
        "--follow",
        env=client_env(ray_head),
        cwd=tmp,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job_id = done.stdout.strip().splitlines()[0]
    assert job_id.startswith("kiln-tiny-")

    assert curve(run) == reference
    assert json.loads((run / "eval" / f"step-{STEPS:08d}.json").read_text())["step"] == STEPS
    listed = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ray"), "job", "list", "--address", ray_head.dashboard_url],
        env=client_env(ray_head),
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert f"submission_id='{job_id}'" in listed.stdout and "status=<JobStatus.SUCCEEDED" in listed.stdout

    token = Path(ray_head.token_path).read_text().strip()
    logs = kiln("jobs", "logs", job_id, "--address", ray_head.dashboard_url, env=client_env(ray_head))
    assert logs.returncode == 0 and "train" in logs.stdout
    assert token not in logs.stdout + done.stdout + done.stderr
    for folder in (run, data):
        for file in folder.rglob("*"):
            if file.is_file():
                assert token.encode() not in file.read_bytes(), f"the cluster token leaked into {file}"


def test_a_submission_without_the_token_is_refused_with_one_line(setup, ray_head, tmp_path):
    _, path, _ = setup
    refused = kiln(
        "submit", str(path), "--address", ray_head.dashboard_url, env=client_env(ray_head, with_token=False, home=tmp_path)
    )
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "requires a token" in refused.stderr and "RAY_AUTH_TOKEN_PATH" in refused.stderr


def test_a_killed_ray_train_worker_is_restarted_and_the_curve_is_unchanged(setup, ray_head, tmp_path):
    tmp, path, reference = setup
    run = tmp_path / "killed"
    env = client_env(ray_head)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launch.cli",
            "train",
            str(path),
            f"run.dir={run}",
            f"cluster.address={ray_head.gcs_address}",
            "train.max_restarts=2",
        ],
        env=env,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: latest_committed_step(str(run)) is not None, "a checkpoint", alive=lambda: proc.poll() is None)
        with ranks_held(run) as beats:
            victim = next(b for b in beats if b["rank"] == 1)["pid"]
            os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    [restart] = [e for e in RunRecords(str(run)).events() if e["event"] == "restart"]
    assert restart["launcher"] == "ray" and restart["attempt"] == 1 and restart["max_restarts"] == 2
    assert restart["step"] >= CHECKPOINT_EVERY
    killed = [f for f in restart["failures"] if f["rank"] == 1]
    assert killed and killed[0]["pid"] == victim, restart["failures"]
    assert curve(run) == reference


def test_stopping_a_submitted_job_saves_it_and_the_resubmission_continues_the_curve(setup, ray_head, tmp_path):
    tmp, path, reference = setup
    run = tmp_path / "stopped"
    env = client_env(ray_head)
    submitted = kiln("submit", str(path), f"run.dir={run}", "--address", ray_head.dashboard_url, env=env, cwd=tmp)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job_id = submitted.stdout.strip().splitlines()[0]
    jobs = jobs_client(ray_head)

    wait_for_step(run, 3, alive=lambda: jobs.get_job_status(job_id) in (JobStatus.PENDING, JobStatus.RUNNING))
    with ranks_held(run):
        stopped = kiln("jobs", "stop", job_id, "--address", ray_head.dashboard_url, env=env)
        assert stopped.returncode == 0, stopped.stderr
        # until the job's driver has passed the stop on to the ranks
        wait_until(lambda: "SIGTERM received" in jobs.get_job_logs(job_id), "the job's driver acted on the stop")
    followed = kiln("jobs", "logs", job_id, "--follow", "--address", ray_head.dashboard_url, env=env)
    assert followed.returncode != 0

    [preemption] = [e for e in RunRecords(str(run)).events() if e["event"] == "preemption"]
    assert 3 <= preemption["step"] < STEPS
    assert max(curve(run)) == preemption["step"]

    again = kiln("submit", str(path), f"run.dir={run}", "--address", ray_head.dashboard_url, "--follow", env=env, cwd=tmp)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert curve(run) == reference


def test_a_stop_signal_to_the_ray_train_driver_saves_and_exits_75(setup, ray_head, tmp_path):
    tmp, path, _ = setup
    run = tmp_path / "usr2"
    stderr = tmp_path / "driver.err"
    with open(stderr, "w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "launch.cli",
                "train",
                str(path),
                f"run.dir={run}",
                f"cluster.address={ray_head.gcs_address}",
            ],
            env=client_env(ray_head),
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_for_step(run, 3, alive=lambda: proc.poll() is None)
        with ranks_held(run):
            proc.send_signal(signal.SIGUSR2)
            # until the driver has passed the stop on to the ranks
            wait_until(
                lambda: "SIGUSR2 received" in stderr.read_text(),
                "the driver acted on SIGUSR2",
                alive=lambda: proc.poll() is None,
            )
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 75, stderr.read_text()[-3000:]
    [preemption] = [e for e in RunRecords(str(run)).events() if e["event"] == "preemption"]
    # the ranks that had seen the request when they agreed name it; the others followed them
    assert preemption["signals"] and set(preemption["signals"].values()) == {"SIGUSR2"}
    assert latest_committed_step(str(run)) == preemption["step"]


def test_a_job_id_that_does_not_exist_is_one_line(ray_head):
    missing = kiln("jobs", "status", "kiln-no-such-job", "--address", ray_head.dashboard_url, env=client_env(ray_head))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "no job 'kiln-no-such-job'" in missing.stderr
