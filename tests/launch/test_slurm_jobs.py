"""Rendered sbatch scripts run on a real one-node Slurm: they train, requeue themselves when preempted and
resume on the same loss curve, and the --ray variant runs the whole pipeline on a token-authenticated Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops.checkpoints import list_checkpoints
from ops.records import RunRecords

pytestmark = pytest.mark.slow

STEPS = 40
STEPS_ON_RAY = 4
VENV_BIN = str(Path(sys.executable).parent)


def job_environment(slurm) -> dict[str, str]:
    """What a user's shell gives sbatch: `kiln` on PATH; the ports a job would derive from its id, made free here.

    Ray on this machine stays on 127.0.0.1: `ray start` replaces a loopback --node-ip-address with the
    host's address unless Ray's switch for clusters is off.
    """
    return {
        **slurm.env,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "KILN_MASTER_PORT": str(slurm.free_ports()),
        "KILN_RAY_PORT": str(slurm.free_ports(2)),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


def submit(slurm, config, cwd, *flags) -> str:
    """`kiln launch slurm CONFIG --gpus-per-node 0 ... --submit` from ``cwd``; returns the job id it prints."""
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "launch", "slurm", str(config), "--gpus-per-node", "0", *flags, "--submit"],
        cwd=cwd,
        env=job_environment(slurm),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def job_log(cwd, job_id) -> str:
    logs = list(Path(cwd).glob(f"kiln-*-{job_id}.out"))
    return logs[0].read_text(errors="replace")[-4000:] if logs else "(no job log)"


def curve(run_dir) -> dict[int, float]:
    """Loss per step; a step logged again after a restart keeps its last row."""
    return {row["step"]: row["loss"] for row in RunRecords(str(run_dir)).metrics()}


def wait_for_step(slurm, job_id, run_dir, step, timeout_s=600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(row["step"] >= step for row in RunRecords(str(run_dir)).metrics()):
            return
        assert slurm.job(job_id)["JobState"] in ("PENDING", "CONFIGURING", "RUNNING"), "the job ended before step " + str(step)
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_config, prepared_data):
    """Prepared data and a config of STEPS steps, checkpointing only at the end unless stopped."""
    tmp = tmp_path_factory.mktemp("slurm-jobs")
    config = tiny_config(tmp, seed=11, train={"steps": STEPS, "checkpoint_every": 1000})
    prepared_data(config)
    return tmp, config


@pytest.fixture(scope="module")
def uninterrupted(slurm, prepared):
    """A job of the rendered script that runs to the end: its job record and its loss curve."""
    tmp, config = prepared
    run = tmp / "straight"
    job_id = submit(slurm, config, tmp, f"run.dir={run}")
    info = slurm.wait_for_job(job_id)
    assert info["JobState"] == "COMPLETED", job_log(tmp, job_id)
    return info, run, curve(run)


def test_the_rendered_script_trains_commits_checkpoints_and_finishes(uninterrupted, prepared):
    info, run, reference = uninterrupted
    tmp, _ = prepared
    assert info["ExitCode"] == "0:0"
    assert sorted(reference) == list(range(1, STEPS + 1))
    committed = [entry.step for entry in list_checkpoints(str(run)) if entry.committed]
    assert committed and committed[-1] == STEPS
    assert f"job {info['JobId']} on" in job_log(tmp, info["JobId"])


def test_a_preempted_job_saves_requeues_itself_and_resumes_on_the_same_curve(slurm, prepared, uninterrupted):
    tmp, config = prepared
    _, _, reference = uninterrupted
    run = tmp / "preempted"
    job_id = submit(slurm, config, tmp, f"run.dir={run}")
    wait_for_step(slurm, job_id, run, 2)
    slurm.run("scancel", "--batch", "--signal=USR2", job_id)

    info = slurm.wait_for_job(job_id)
    log = job_log(tmp, job_id)
    assert info["JobState"] == "COMPLETED", log
    assert info["Restarts"] == "1", log
    assert "requeueing job" in log and f"job {job_id} on kiln0, start 2" in log, "one log per job id, appended to"
    stops = [e for e in RunRecords(str(run)).events() if e["event"] == "preemption"]
    assert len(stops) == 1, log
    saved_at = stops[0]["step"]
    assert 2 <= saved_at < STEPS, "the signal must land mid-run"
    assert saved_at in [entry.step for entry in list_checkpoints(str(run)) if entry.committed]
    resumed = curve(run)
    assert sorted(resumed) == list(range(1, STEPS + 1)), "a step was lost"
    assert resumed == reference


def test_a_job_sbatch_refuses_is_one_line(slurm, prepared):
    tmp, config = prepared
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.cli",
            "launch",
            "slurm",
            str(config),
            "--gpus-per-node",
            "0",
            "--partition",
            "nowhere",
            "--submit",
        ],
        cwd=tmp,
        env=job_environment(slurm),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("kiln: error: --submit: sbatch refused the job:")
    assert "invalid partition specified: nowhere" in proc.stderr


CLIENT_PROBE = "import ray, sys; ray.init(sys.argv[1], logging_level='ERROR'); ray.shutdown()"

# `kiln` on the PATH of the --ray job: it connects to the head's Ray Client port with the job's token, as the
# real `kiln run` could, runs the real `kiln` with its arguments, then keeps the job and its head up until the
# test has probed the head from outside the job, and exits as the real `kiln` did.
# On a loaded machine the head's proxy can fail to start the server process it hands a new client to ("Starting
# Ray client server failed"), whatever the token: the probe tries three times and keeps that server's log.
KILN_STAND_IN = """#!/bin/bash
address="${{3#cluster.address=}}"
client="ray://${{address%:*}}:$(( ${{address##*:}} + 1 ))"
echo "$client" > "$PROBE/client"
connected=1
for attempt in 1 2 3; do
  echo "attempt $attempt" >> "$PROBE/with-token.log"
  timeout 300 {python} -c "{probe}" "$client" >> "$PROBE/with-token.log" 2>&1 && {{ connected=0; break; }}
  cat "$(dirname "$RAY_AUTH_TOKEN_PATH")"/ray/session_latest/logs/ray_client_server_*.err >> "$PROBE/with-token.log"
  sleep 5
done
echo $connected > "$PROBE/with-token"
{kiln} "$@"
status=$?
for _ in $(seq 1200); do [ -e "$PROBE/done" ] && exit $status; sleep 0.5; done
exit 1
"""


@dataclass
class RayJob:
    """What one job of the --ray script left: its record and log, its run, both probes of its head, and what
    was left behind once it ended."""

    info: dict[str, str]
    log: str
    run: Path
    probe: Path
    refused: subprocess.CompletedProcess
    ray_folders_left: set[Path]
    processes_left: list[str]


@pytest.fixture(scope="module")
def ray_job(slurm, prepared) -> RayJob:
    """The --ray variant of the rendered script, submitted once, running the pipeline of STEPS_ON_RAY steps with
    the stand-in above in front of `kiln`.  While the pipeline runs, a client without the job's token (and no
    ~/.ray/auth_token to fall back on) tries the head's Ray Client port from outside the job."""
    tmp, config = prepared
    run, probe, bin_dir, home = tmp / "on-ray", tmp / "probe", tmp / "bin", tmp / "home"
    for folder in (probe, bin_dir, home):
        folder.mkdir()
    kiln = bin_dir / "kiln"
    kiln.write_text(KILN_STAND_IN.format(python=sys.executable, probe=CLIENT_PROBE, kiln=Path(VENV_BIN) / "kiln"))
    kiln.chmod(0o755)
    env = {
        **job_environment(slurm),
        "PATH": f"{bin_dir}:{job_environment(slurm)['PATH']}",
        "PROBE": str(probe),
        # A busy test machine can take minutes to start the head's raylet and its agents.
        "RAY_raylet_start_wait_time_s": "600",
        "RAY_agent_register_timeout_ms": "600000",
    }
    ray_folders = set(Path("/tmp").glob("kiln-slurm-*"))
    overrides = [f"run.dir={run}", f"train.steps={STEPS_ON_RAY}", "train.checkpoint_every=2"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.cli",
            "launch",
            "slurm",
            str(config),
            "--gpus-per-node",
            "0",
            "--ray",
            *overrides,
            "--submit",
        ],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    try:
        deadline = time.monotonic() + 900
        while not (probe / "with-token").exists():
            assert time.monotonic() < deadline, f"the job's Ray did not come up: {job_log(tmp, job_id)}"
            assert slurm.job(job_id)["JobState"] in ("PENDING", "CONFIGURING", "RUNNING"), job_log(tmp, job_id)
            time.sleep(0.5)
        without = {k: v for k, v in job_environment(slurm).items() if not k.startswith("RAY_AUTH")}
        refused = subprocess.run(
            [sys.executable, "-c", CLIENT_PROBE, (probe / "client").read_text().strip()],
            env={**without, "HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        (probe / "done").touch()
    info = slurm.wait_for_job(job_id)
    return RayJob(
        info=info,
        log=job_log(tmp, job_id),
        run=run,
        probe=probe,
        refused=refused,
        ray_folders_left=set(Path("/tmp").glob("kiln-slurm-*")) - ray_folders,
        processes_left=slurm.wait_for_no_job_processes(),
    )


def test_the_ray_variant_runs_the_pipeline_to_its_eval_file(ray_job):
    assert ray_job.info["JobState"] == "COMPLETED", ray_job.log
    assert (ray_job.run / "eval" / f"step-{STEPS_ON_RAY:08d}.json").exists(), ray_job.log
    assert sorted(row["step"] for row in RunRecords(str(ray_job.run)).metrics()) == list(range(1, STEPS_ON_RAY + 1))
    assert ray_job.ray_folders_left == set(), "the job left its Ray folder (and token) behind"
    assert ray_job.processes_left == [], "the job left processes behind"


def test_the_ray_variants_head_turns_away_a_client_without_the_jobs_token(ray_job):
    """The head that the rendered --ray script starts on the real Slurm: a client holding the job's token
    connects to its Ray Client port (the stand-in for `kiln run` proves it from inside the job), and one
    without the token, outside the job, is refused there."""
    with_token = (ray_job.probe / "with-token").read_text().strip()
    assert with_token == "0", (ray_job.probe / "with-token.log").read_text()[-2000:]
    # Ray Client retries a refused handshake and then reports it as a connection timeout.
    assert ray_job.refused.returncode != 0, "a client without the token connected"
    assert "ConnectionError" in ray_job.refused.stderr, ray_job.refused.stderr[-2000:]
    assert ray_job.info["JobState"] == "COMPLETED", ray_job.log
    assert ray_job.processes_left == [], "the job left processes behind"
