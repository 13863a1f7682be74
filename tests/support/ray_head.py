"""A real Ray head on this machine, as a cluster operator starts one: ``ray start --head`` with token
authentication on, the dashboard on 127.0.0.1, every port chosen by Ray itself, and its own temp
folder.  Stopping it ends every process it started, found by that folder."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from cluster.auth import write_new_token

VENV_BIN = os.path.dirname(sys.executable)
DASHBOARD_LINE = re.compile(r"RAY_API_SERVER_ADDRESS='(http://[^']+)'")


def processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def unused_port() -> int:
    """A port free right now, for the one server Ray cannot bind on a port of its own choosing (Ray
    Client's, which ``ray start`` otherwise puts on 10001, shared by every head on the machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    def __init__(self, num_cpus: int = 2, extra_env: dict[str, str] | None = None):
        # Short: Ray's unix sockets live under it, and their paths must stay under 108 bytes.
        self.folder = tempfile.mkdtemp(prefix="kray-", dir="/tmp")
        self.token_path = str(write_new_token(os.path.join(self.folder, "auth_token")))
        self.temp_dir = os.path.join(self.folder, "r")
        self.log_path = os.path.join(self.folder, "ray-start.log")
        self.num_cpus = num_cpus
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self.dashboard_url = ""
        self.gcs_address = ""

    def env(self) -> dict[str, str]:
        """The environment of the head's processes (and of jobs it runs): token auth on, this venv first."""
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=self.token_path,
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            RAY_USAGE_STATS_ENABLED="0",
        )
        env.pop("RAY_ADDRESS", None)
        return env

    def start(self, timeout_s: float = 180) -> "RayHead":
        cmd = [
            os.path.join(VENV_BIN, "ray"),
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            "0",
            "--dashboard-agent-listen-port",
            "0",
            "--ray-client-server-port",
            str(unused_port()),
            "--num-cpus",
            str(self.num_cpus),
            "--temp-dir",
            self.temp_dir,
        ]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = Path(self.log_path).read_text(errors="replace")
            match = DASHBOARD_LINE.search(text)
            if match and "Ray runtime started" in text:
                self.dashboard_url = match.group(1)
                self.gcs_address = Path(self.temp_dir, "ray_current_cluster").read_text().strip()
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        output = Path(self.log_path).read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"the Ray head did not start:\n{output}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        leftovers = processes_mentioning(self.folder)  # workers and agents outside the process group
        for proc in leftovers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(leftovers, timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "RayHead":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
