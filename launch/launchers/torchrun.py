"""The local launcher: this node's ``train.nproc`` ranks through torchrun.

One node (``train.nodes=1``) uses ``--standalone``: torchrun binds its own free rendezvous
port.  Several nodes run ``kiln train`` once per node with torchrun's own variables
``MASTER_ADDR`` (the first node's address) and ``MASTER_PORT`` set, as torchrun users
do; the ranks then meet in a c10d rendezvous hosted on that address.  Nothing depends on
what a node's hostname resolves to (often a loopback address): the node whose address
MASTER_ADDR is hosts the rendezvous, and gloo binds the interface on the route to it.

A stop request writes the stop file the ranks watch (torchrun forwards neither SIGUSR1
nor SIGUSR2, and a SIGTERM to torchrun would kill the ranks instead of letting them save).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

from launch.config import ConfigError
from launch.launchers.base import AttemptResult, Launcher
from llm.config import TrainConfig
from llm.devices import gloo_interface_environment, rank_environment
from llm.job import TrainJob
from llm.exit_codes import STOP_FILE_ENV
from ops.credentials import credentials_environment
from ops.rank_failure import RankFailure

RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT")


def address_towards(host: str, port: int) -> str:
    """This machine's address on the route to ``host`` (no packet is sent), so the other nodes
    reach this one where it reaches them, whatever its hostname resolves to."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return s.getsockname()[0]


def torchrun_arguments(train: TrainConfig, run_url: str, environ: dict[str, str]) -> list[str]:
    """torchrun's options for this node of a ``train.nodes`` × ``train.nproc`` job."""
    if train.nodes == 1:
        return ["--standalone", "--nproc_per_node", str(train.nproc)]
    missing = [name for name in RENDEZVOUS_VARIABLES if not environ.get(name)]
    if missing:
        raise ConfigError(
            f"train.nodes={train.nodes}: set {' and '.join(missing)} to the first node's address and a free port "
            f"there (and NODE_RANK to this node's index), as for torchrun, on every node"
        )
    host, port = environ["MASTER_ADDR"], environ["MASTER_PORT"]
    if not port.isdigit():
        raise ConfigError(f"MASTER_PORT={port!r} is not a port number")
    rendezvous_id = hashlib.sha256(run_url.encode()).hexdigest()[:16]
    node_rank = environ.get("NODE_RANK", "0")
    local_address = this_node_address(environ)
    arguments = [
        "--nnodes",
        str(train.nodes),
        "--node_rank",
        node_rank,
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        f"{host}:{port}",
        "--rdzv_id",
        rendezvous_id,
        "--local_addr",
        local_address,
        "--nproc_per_node",
        str(train.nproc),
    ]
    if node_rank == "0" and local_address == socket.gethostbyname(host):
        # torch guesses whether this node hosts the rendezvous by resolving its own hostname, which on
        # machines that map it to 127.0.1.1 (Debian's /etc/hosts) never matches MASTER_ADDR: no node would.
        arguments += ["--rdzv_conf", "is_host=1"]
    return arguments


def this_node_address(environ: dict[str, str]) -> str:
    """This node's address on the route to MASTER_ADDR (a multi-node job's variables, already checked)."""
    host = environ["MASTER_ADDR"]
    try:
        return address_towards(host, int(environ["MASTER_PORT"]))
    except OSError as e:
        raise ConfigError(
            f"MASTER_ADDR={host!r} cannot be reached from this node ({e.strerror or e}): "
            "give the first node's address as the other nodes reach it"
        ) from None


class TorchrunLauncher(Launcher):
    name = "local"

    def __init__(self, job: TrainJob, environ: dict[str, str] | None = None):
        super().__init__(job)
        self.environ = dict(os.environ if environ is None else environ)
        self.arguments = torchrun_arguments(job.train, job.run_dir, self.environ)
        self.network_environment = (
            gloo_interface_environment(this_node_address(self.environ), self.environ) if job.train.nodes > 1 else {}
        )
        self.folder = tempfile.mkdtemp(prefix="kiln-job-")  # private (0700)
        self.job_path = os.path.join(self.folder, "job.json")
        self.stop_file = os.path.join(self.folder, "stop")
        job.save(self.job_path)

    def run_attempt(self, attempt: int) -> AttemptResult:
        failures_path = os.path.join(self.folder, f"failures-{attempt}.json")
        env = rank_environment(self.job.train.nproc, self.environ)
        env.update(self.network_environment)
        env.update(credentials_environment(self.job.storage_options))  # the job file holds them redacted
        env[STOP_FILE_ENV] = self.stop_file
        cmd = [
            sys.executable,
            "-m",
            "launch.launchers.torchrun_agent",
            failures_path,
            *self.arguments,
            "--log-dir",  # torchrun's per-rank error files, else left in a /tmp/torchelastic_* folder for good
            os.path.join(self.folder, f"torchrun-{attempt}"),
            "-m",
            "llm.trainer",
            self.job_path,
        ]
        # Its own session: a terminal's Ctrl-C reaches this launcher alone, which turns it into a stop request.
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            exit_code = proc.wait()
        finally:
            if proc.poll() is None:  # this launcher is failing: torchrun stops its ranks on SIGTERM
                proc.terminate()
                proc.wait()
        failures = []
        if os.path.exists(failures_path):
            with open(failures_path, encoding="utf-8") as f:
                failures = [RankFailure.model_validate(row) for row in json.load(f)]
        return AttemptResult(exit_code=exit_code, failures=failures)

    def request_stop(self, reason: str) -> None:
        tmp = f"{self.stop_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(reason)
        os.replace(tmp, self.stop_file)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
