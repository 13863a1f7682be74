"""A Ray cluster across two hosts, as an operator starts one: the head on host0 bound to its address
with token authentication on, a worker on host1 joining it.  `kiln submit` from outside both hosts
runs prepare, Ray Train with a rank on each host, and evaluation; a client without the token is
refused; and a run that loses host1 shows host1's ranks lost in `kiln status` while it is gone, then
finishes on host0 with the uninterrupted loss curve."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from cluster.auth import auth_headers, write_new_token
from cluster.evals.report import report_url
from llm.checkpoint import latest_committed_step
from ops import storage
from ops.records import RunRecords

pytestmark = pytest.mark.slow

STEPS = 60
CHECKPOINT_EVERY = 10
# The hosts' network namespaces are this session's own: Ray's customary ports clash with nothing there.
GCS_PORT = 6379
DASHBOARD_PORT = 8265
OBJECT_STORE_BYTES = 200 * 1024 * 1024


def kiln(*args):
    return [sys.executable, "-m", "launch.cli", *args]


def curve(run_url):
    return {row["step"]: row["loss"] for row in RunRecords(run_url).metrics()}


def wait_until(condition, what, timeout_s=600, alive=lambda: True):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        assert alive(), f"gave up waiting: {what}"
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s} s")


@dataclass
class RayCluster:
    dashboard_url: str
    token_path: str
    client_env: dict[str, str]  # a user's shell in the root namespace, holding the cluster's token

    def without_token(self, home: Path) -> dict[str, str]:
        env = {k: v for k, v in self.client_env.items() if not k.startswith("RAY_AUTH_TOKEN")}
        env["HOME"] = str(home)  # no ~/.ray/auth_token to fall back on
        return env


def start_ray(host, args, env, log_path):
    with open(log_path, "w") as log:
        return host.start(
            [
                "ray",
                "start",
                "--block",
                "--disable-usage-stats",
                "--node-ip-address",
                host.address,
                "--object-store-memory",
                str(OBJECT_STORE_BYTES),
                *args,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def ray_list(what, env, dashboard_url, *filters) -> list[dict]:
    """``ray list WHAT`` through the dashboard's state API; empty while the dashboard cannot answer."""
    listed = subprocess.run(
        [
            "ray",
            "list",
            what,
            "--address",
            dashboard_url,
            "--format",
            "json",
            "--limit",
            "10000",
            *[arg for f in filters for arg in ("--filter", f)],
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(listed.stdout) if listed.returncode == 0 else []


def alive_nodes(env, dashboard_url) -> int:
    return sum(1 for node in ray_list("nodes", env, dashboard_url) if node["state"] == "ALIVE")


@pytest.fixture(scope="module")
def ray_cluster(cluster):
    """The head on host0 (two CPUs, so both ranks fit there once host1 is gone), a worker on host1 (one CPU)."""
    # Short: Ray's unix sockets live under it, and their paths must stay under 108 bytes.
    folder = tempfile.mkdtemp(prefix="kmh-ray-", dir="/tmp")
    head, worker = cluster[0], cluster[1]
    try:
        token_path = str(write_new_token(os.path.join(folder, "auth_token")))
        # plain http to the head's own address: the test's private network of namespaces is trusted
        env = cluster.env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path, KILN_ALLOW_INSECURE_TOKEN="1")
        dashboard_url = f"http://{head.address}:{DASHBOARD_PORT}"
        procs = [
            start_ray(
                head,
                [
                    "--head",
                    "--port",
                    str(GCS_PORT),
                    "--dashboard-host",
                    head.address,
                    "--dashboard-port",
                    str(DASHBOARD_PORT),
                    "--num-cpus",
                    "2",
                    "--temp-dir",
                    os.path.join(folder, "head"),
                ],
                env,
                os.path.join(folder, "head.log"),
            ),
        ]
        wait_until(
            lambda: "Ray runtime started" in Path(folder, "head.log").read_text(errors="replace"),
            "the Ray head started",
            alive=lambda: procs[0].poll() is None,
        )
        procs.append(
            start_ray(
                worker,
                ["--address", f"{head.address}:{GCS_PORT}", "--num-cpus", "1", "--temp-dir", os.path.join(folder, "worker")],
                env,
                os.path.join(folder, "worker.log"),
            )
        )
        wait_until(
            lambda: alive_nodes(env, dashboard_url) == 2,
            "host1 joined the cluster",
            alive=lambda: all(p.poll() is None for p in procs),
        )
        yield RayCluster(dashboard_url=dashboard_url, token_path=token_path, client_env=env)
    finally:
        for host in (worker, head):
            host.kill_every_process()
        shutil.rmtree(folder, ignore_errors=True)


def corpus_on_the_bucket(config_path, bucket):
    """The config's input files copied to the shared bucket, and the config pointed at them."""
    config = yaml.safe_load(config_path.read_text())
    fs, _ = storage.filesystem(bucket)
    for key in ("inputs", "val_inputs"):
        urls = []
        for pattern in config["data"][key]:
            folder = f"{bucket}/corpus"
            for path in sorted(Path(pattern).parent.glob(Path(pattern).name)):
                fs.put_file(str(path), f"{folder.removeprefix('s3://')}/{path.name}")
            urls.append(f"{folder}/{Path(pattern).name}")
        config["data"][key] = urls
    config_path.write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def submitted(cluster, ray_cluster, tiny_config, tmp_path_factory):
    """One `kiln submit --follow` from the root namespace: prepare, train and eval on the cluster."""
    tmp = tmp_path_factory.mktemp("ray-hosts")
    bucket = cluster.bucket
    path = tiny_config(
        tmp,
        seed=17,
        run={"dir": f"{bucket}/ray-run"},
        data={"output": f"{bucket}/ray-data"},
        train={
            "steps": STEPS,
            "checkpoint_every": CHECKPOINT_EVERY,
            "warmup_steps": 5,
            "launcher": "ray",
            "nodes": 2,
            "nproc": 1,
        },
        # Six slices of one window: each of the cluster's three eval workers (one per CPU,
        # so one on host1) is sent two before any answer comes back.
        eval={"max_windows_per_shard": 6, "slice_size": 1},
    )
    corpus_on_the_bucket(path, bucket)
    done = subprocess.run(
        kiln("submit", str(path), "--address", ray_cluster.dashboard_url, "--follow"),
        env=ray_cluster.client_env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    return path, f"{bucket}/ray-run", done


def test_a_submitted_run_prepares_trains_with_a_rank_on_each_host_and_evaluates_on_both(cluster, ray_cluster, submitted):
    _, run, done = submitted
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(curve(run)) == list(range(1, STEPS + 1))
    assert sorted(b["host"] for b in RunRecords(run).heartbeats()) == ["host0", "host1"]
    assert storage.read_json(report_url(run, STEPS))["step"] == STEPS

    env, url = ray_cluster.client_env, ray_cluster.dashboard_url
    node_host = {
        node["node_id"]: {h.address: h.name for h in cluster.hosts.hosts}[node["node_ip"]]
        for node in ray_list("nodes", env, url)
    }
    eval_workers = ray_list("actors", env, url, "class_name=EvalWorker")
    assert len(eval_workers) == 3
    assert sorted(node_host[actor["node_id"]] for actor in eval_workers) == ["host0", "host0", "host1"]


def test_a_client_without_the_token_is_refused(ray_cluster, submitted, tmp_path):
    path, _, _ = submitted
    refused = subprocess.run(
        kiln("submit", str(path), "--address", ray_cluster.dashboard_url),
        env=ray_cluster.without_token(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "requires a token" in refused.stderr


def host_lost(run_url, host) -> bool:
    """Whether `kiln status --json` shows every rank of ``host`` unresponsive or dead, and exits non-zero for it."""
    shown = subprocess.run(kiln("status", "--json", run_url), capture_output=True, text=True, timeout=120)
    states = {rank["state"] for rank in json.loads(shown.stdout)["ranks"] if rank["host"] == host}
    return bool(states) and states <= {"unresponsive", "dead"} and shown.returncode in (1, 3)


def test_a_run_that_loses_a_host_finishes_on_the_surviving_host_with_the_same_curve(cluster, ray_cluster, submitted):
    path, uninterrupted, done = submitted
    assert done.returncode == 0, "the uninterrupted run failed"
    run = f"{cluster.bucket}/ray-host-lost"
    env = ray_cluster.client_env
    address = ["--address", ray_cluster.dashboard_url]
    sent = subprocess.run(
        # one eval worker: the evaluation that ends this run is not what the test is about
        kiln("submit", str(path), f"run.dir={run}", "train.max_restarts=2", "train.heartbeat_s=1", "eval.workers=1", *address),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sent.returncode == 0, sent.stderr[-3000:]
    job_id = sent.stdout.strip().splitlines()[0]

    jobs = JobSubmissionClient(ray_cluster.dashboard_url, headers=auth_headers(env))  # polled in this process: fast
    wait_until(  # the metrics too: rank 0 flushes them to object storage every few seconds, not at a commit
        lambda: (latest_committed_step(run) or 0) >= CHECKPOINT_EVERY and curve(run),
        "a checkpoint was committed and its steps' metrics written",
        alive=lambda: jobs.get_job_status(job_id) in (JobStatus.PENDING, JobStatus.RUNNING),
    )
    # The ranks stand still (SIGSTOP) from here until host1 is gone, so the run cannot end first on a quiet machine.
    ranks = [beat["pid"] for beat in RunRecords(run).heartbeats()]
    for pid in ranks:
        os.kill(pid, signal.SIGSTOP)
    try:
        # host0's spare CPU is held while host1 is gone, so that Ray Train cannot place the restarted ranks (which
        # would beat in place of host1's) before kiln status has been read; released, the run goes on on host0.
        hold = jobs.submit_job(entrypoint="sleep 900", entrypoint_num_cpus=1)
        wait_until(lambda: jobs.get_job_status(hold) == JobStatus.RUNNING, "host0's spare CPU is held")
        cluster[1].kill_every_process()
    finally:
        for pid in ranks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert max(curve(run)) < STEPS, "the run ended before the host was lost"
    wait_until(
        lambda: host_lost(run, "host1"),
        "kiln status shows host1's ranks lost",
        alive=lambda: jobs.get_job_status(job_id) in (JobStatus.PENDING, JobStatus.RUNNING),
    )
    assert jobs.stop_job(hold)

    followed = subprocess.run(
        kiln("jobs", "logs", job_id, "--follow", *address), env=env, capture_output=True, text=True, timeout=1200
    )
    assert followed.returncode == 0, followed.stdout[-3000:] + followed.stderr[-3000:]
    restarts = [e for e in RunRecords(run).events() if e["event"] == "restart"]
    assert restarts and restarts[0]["launcher"] == "ray" and restarts[0]["step"] >= CHECKPOINT_EVERY
    assert curve(run) == curve(uninterrupted)
    assert [b["host"] for b in RunRecords(run).heartbeats()] == ["host0", "host0"]
