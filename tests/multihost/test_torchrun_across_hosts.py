"""`kiln train` started once per host, as torchrun users start it (MASTER_ADDR/MASTER_PORT name the
first host, NODE_RANK the host's index) or as the script of `kiln launch slurm --nodes 2` starts it
(one slurmctld, a slurmd per host), trains across two hosts exactly as one host with two ranks does,
and a run that loses a host shows the host's ranks lost in `kiln status` while it is gone, and resumes
from its newest committed checkpoint when the host returns."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm.checkpoint import latest_committed_step
from ops.records import RunRecords
from support.slurm_cluster import SlurmCluster, SlurmNode

pytestmark = pytest.mark.slow

STEPS = 40
CHECKPOINT_EVERY = 10
BEAT_OFTEN = ("train.heartbeat_s=1",)  # a lost host's ranks turn unresponsive after three missed beats


def kiln(*args):
    return [sys.executable, "-m", "launch.cli", *args]


def curve(run_url):
    """Loss per step; a step re-run after a crash is logged again, and its last row wins."""
    return {row["step"]: row["loss"] for row in RunRecords(run_url).metrics()}


def finish(proc, timeout_s=900):
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
        return proc.returncode, stderr.decode()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Rendezvous:
    """MASTER_ADDR/MASTER_PORT/NODE_RANK for each host of a run; a new port for each run, so that a
    rendezvous never meets a closing one (the hosts' namespaces are this session's alone)."""

    next_port = 29400

    def __init__(self, cluster):
        self.cluster = cluster
        self.port = Rendezvous.next_port
        Rendezvous.next_port += 1

    def env(self, node_rank: int) -> dict[str, str]:
        return self.cluster.env(MASTER_ADDR=self.cluster[0].address, MASTER_PORT=str(self.port), NODE_RANK=str(node_rank))


def start_on_host(cluster, i, path, run_url, rendezvous, *overrides):
    return cluster[i].start(
        kiln("train", str(path), f"run.dir={run_url}", "train.nodes=2", "train.nproc=1", *overrides),
        env=rendezvous.env(i),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture(scope="module")
def setup(cluster, tiny_config, tmp_path_factory):
    """Data prepared on the shared bucket and the curve of one host with two ranks."""
    tmp = tmp_path_factory.mktemp("torchrun-hosts")
    bucket = cluster.bucket
    path = tiny_config(
        tmp,
        seed=13,
        run={"dir": f"{bucket}/one-host"},
        data={"output": f"{bucket}/data"},
        train={"steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY, "warmup_steps": 5},
    )
    host = cluster[0]
    prepared = host.run(kiln("prepare", str(path)), env=cluster.env())
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    one_host = host.run(kiln("train", str(path)), env=cluster.env())
    assert one_host.returncode == 0, one_host.stderr[-3000:]
    reference = curve(f"{bucket}/one-host")
    assert sorted(reference) == list(range(1, STEPS + 1))
    return path, reference


def test_two_hosts_with_one_rank_each_train_the_curve_of_one_host_with_two_ranks(cluster, setup):
    path, reference = setup
    run = f"{cluster.bucket}/two-hosts"
    rendezvous = Rendezvous(cluster)
    procs = [start_on_host(cluster, i, path, run, rendezvous) for i in (0, 1)]
    for i, proc in enumerate(procs):
        rc, stderr = finish(proc)
        assert rc == 0, f"host{i}: {stderr}"
    assert curve(run) == reference
    # The c10d rendezvous numbers the nodes as they join, so either host may hold rank 0.
    assert sorted(b["host"] for b in RunRecords(run).heartbeats()) == ["host0", "host1"]


def wait_until(condition, what, alive, timeout_s=600):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        assert alive(), f"the run ended before {what}"
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def host_lost(run_url, host) -> bool:
    """Whether `kiln status --json` shows every rank of ``host`` unresponsive or dead, and exits non-zero for it."""
    shown = subprocess.run(kiln("status", "--json", run_url), capture_output=True, text=True, timeout=120)
    states = {rank["state"] for rank in json.loads(shown.stdout)["ranks"] if rank["host"] == host}
    return bool(states) and states <= {"unresponsive", "dead"} and shown.returncode in (1, 3)


def test_a_run_that_loses_a_host_resumes_from_its_last_checkpoint_when_the_host_returns(cluster, setup):
    path, reference = setup
    run = f"{cluster.bucket}/host-lost"
    rendezvous = Rendezvous(cluster)
    first = start_on_host(cluster, 0, path, run, rendezvous, "train.max_restarts=1", *BEAT_OFTEN)
    lost = start_on_host(cluster, 1, path, run, rendezvous, *BEAT_OFTEN)
    wait_until(
        lambda: (latest_committed_step(run) or 0) >= CHECKPOINT_EVERY,
        "a checkpoint was committed",
        lambda: first.poll() is None and lost.poll() is None,
    )
    cluster[1].kill_every_process()
    lost.wait()
    step_lost = max(curve(run))
    assert step_lost < STEPS, "the run ended before the host was lost"

    # host0's launcher sees its rank fail with the lost peer and starts again, waiting for host1 to rejoin.
    wait_until(
        lambda: any(e["event"] == "restart" for e in RunRecords(run).events()), "host0 restarted", lambda: first.poll() is None
    )
    # While host1 is gone its ranks beat no more: kiln status shows them unresponsive, then dead.
    wait_until(lambda: host_lost(run, "host1"), "kiln status shows host1's ranks lost", lambda: first.poll() is None)

    returned = start_on_host(cluster, 1, path, run, rendezvous, *BEAT_OFTEN)
    for name, proc in (("host0", first), ("host1", returned)):
        rc, stderr = finish(proc)
        assert rc == 0, f"{name}: {stderr}"
    [restart] = [e for e in RunRecords(run).events() if e["event"] == "restart"]
    assert restart["host"] == "host0" and restart["step"] >= CHECKPOINT_EVERY
    assert curve(run) == reference


@pytest.fixture(scope="module")
def slurm(cluster, tmp_path_factory):
    """slurmctld in the root namespace on the bridge's address, a slurmd on each host."""
    missing = [tool for tool in ("slurmctld", "slurmd", "sbatch") if shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} not installed: run `make test` as root (it installs .ci/apt-packages)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    hosts = cluster.hosts
    slurm = SlurmCluster(
        tmp_path_factory.mktemp("slurm"),
        [SlurmNode(h.name, h.address) for h in hosts.hosts],
        controller_address=hosts.bridge_address,
    )
    try:
        slurm.start(node_prefix={h.name: h.command([]) for h in hosts.hosts})
        yield slurm
    finally:
        slurm.stop()


def test_the_rendered_sbatch_script_trains_across_two_hosts_with_the_one_host_curve(cluster, setup, slurm, tmp_path):
    path, reference = setup
    run = f"{cluster.bucket}/slurm"
    submitted = subprocess.run(
        kiln(
            "launch", "slurm", str(path), f"run.dir={run}", "train.nproc=1", "--nodes", "2", "--gpus-per-node", "0", "--submit"
        ),
        cwd=tmp_path,
        env=cluster.env(SLURM_CONF=str(slurm.conf)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    info = slurm.wait_for_job(job_id)
    logs = list(Path(tmp_path).glob(f"kiln-*-{job_id}.out"))
    log = logs[0].read_text(errors="replace") if logs else "(no job log)"
    assert info["JobState"] == "COMPLETED", log[-4000:] + slurm.logs()
    assert f"the first node, host0, is reached at {cluster[0].address}" in log
    assert curve(run) == reference
    assert sorted(b["host"] for b in RunRecords(run).heartbeats()) == ["host0", "host1"]
