"""A real Slurm (Debian's slurm-wlm): one slurmctld and one slurmd per node, started by a test.

Everything lives in one temp folder: slurm.conf, state, spool, logs, pid files. Daemons run in
the foreground as children of the test, on free ports of their node's address, and are stopped
by pid afterwards, also when a test fails. Job processes are found for the sweep by the
SLURM_CONF path that every process of this cluster inherits (daemons, slurmstepd, job steps),
so a cluster never touches processes that are not its own.

Nodes are (name, address) pairs: the launch tests use one node on 127.0.0.1; a test with network namespaces can
pass more, each slurmd started with ``slurmd -N NAME`` (optionally inside its namespace).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

DAEMON_START_TIMEOUT_S = 60
JOB_END_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


def free_ports(count: int = 1, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive ports free on ``host`` (Slurm's daemons need their ports in the config)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            base = s.getsockname()[1]
        if base + count > 65536:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind((host, port))
            return base
        except OSError:
            continue


@dataclass(frozen=True)
class SlurmNode:
    name: str
    address: str
    cpus: int = 2


class SlurmCluster:
    """slurmctld plus one slurmd per node, configured in ``root``; use as a context manager."""

    def __init__(self, root: Path, nodes: list[SlurmNode], controller_address: str = "127.0.0.1"):
        self.root = root
        self.nodes = nodes
        self.controller_address = controller_address
        self.conf = root / "slurm.conf"
        self.daemons: list[subprocess.Popen] = []

    free_ports = staticmethod(free_ports)

    @property
    def env(self) -> dict[str, str]:
        """Environment of a client of this cluster (sbatch, squeue, scontrol); jobs inherit it."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for folder in ("state", "spool", "logs", "pids"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        node_lines = [
            f"NodeName={n.name} NodeAddr={n.address} NodeHostname={n.name} Port={free_ports()} CPUs={n.cpus} State=UNKNOWN"
            for n in self.nodes
        ]
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=kilntest",
                    f"SlurmctldHost={socket.gethostname()}({self.controller_address})",
                    f"SlurmctldPort={free_ports()}",
                    "AuthType=auth/none",
                    "CredType=cred/none",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SwitchType=switch/none",
                    "MpiDefault=none",
                    "JobContainerType=job_container/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "SchedulerType=sched/builtin",
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/none",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "SlurmdParameters=config_overrides",
                    "ReturnToService=2",
                    "MinJobAge=600",
                    # a requeued job may start again after cred_expire seconds (default 120)
                    "AuthInfo=cred_expire=30",
                    "KillWait=30",
                    "MailProg=/bin/true",
                    # job ids differ from run to run, so the ports a job derives from its id do too
                    f"FirstJobId={1000 + int.from_bytes(os.urandom(2), 'big') % 50000}",
                    f"StateSaveLocation={self.root / 'state'}",
                    f"SlurmdSpoolDir={self.root / 'spool' / '%n'}",
                    f"SlurmctldPidFile={self.root / 'pids' / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.root / 'pids' / 'slurmd-%n.pid'}",
                    f"SlurmctldLogFile={self.root / 'logs' / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.root / 'logs' / 'slurmd-%n.log'}",
                    *node_lines,
                    "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _start(self, argv: list[str], log_name: str, prefix: list[str] | None = None) -> None:
        log = open(self.root / "logs" / log_name, "ab")
        self.daemons.append(
            subprocess.Popen([*(prefix or []), *argv], env=self.env, stdout=log, stderr=log, start_new_session=True)
        )
        log.close()

    def start(self, node_prefix: dict[str, list[str]] | None = None) -> None:
        """Start slurmctld and every slurmd; ``node_prefix[name]`` wraps a node's slurmd (e.g. ``ip netns exec``)."""
        self.write_config()
        self._start(["slurmctld", "-D", "-f", str(self.conf)], "slurmctld.stdout")
        for node in self.nodes:
            self._start(
                ["slurmd", "-D", "-f", str(self.conf), "-N", node.name],
                f"slurmd-{node.name}.stdout",
                prefix=(node_prefix or {}).get(node.name),
            )
        self.wait_until_idle()

    def wait_until_idle(self) -> None:
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while time.monotonic() < deadline:
            for proc in self.daemons:
                if proc.poll() is not None:
                    raise RuntimeError(f"a Slurm daemon exited with {proc.returncode}: {self.logs()}")
            states = self.run("sinfo", "--noheader", "--Node", "--format=%t", check=False).stdout.split()
            if len(states) == len(self.nodes) and all(s == "idle" for s in states):
                return
            time.sleep(0.5)
        raise RuntimeError(f"Slurm nodes did not become idle: {self.logs()}")

    def run(self, *argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=60, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...)."""
        out = self.run("scontrol", "show", "job", "--oneliner", job_id).stdout
        return dict(field.split("=", 1) for field in out.split() if "=" in field)

    def wait_for_job(self, job_id: str, timeout_s: float = 900) -> dict[str, str]:
        """Wait until the job has ended for good (a requeued job is pending again, not ended)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info["JobState"] in JOB_END_STATES:
                return info
            time.sleep(1)
        raise AssertionError(f"job {job_id} still {self.job(job_id)['JobState']} after {timeout_s:.0f}s")

    def logs(self) -> str:
        tails = []
        for path in sorted((self.root / "logs").glob("*")):
            text = path.read_text(errors="replace").strip()
            if text:
                tails.append(f"--- {path.name}\n{text[-1500:]}")
        return "\n".join(tails)

    def _own_processes(self) -> list[psutil.Process]:
        """Every live process started with this cluster's SLURM_CONF: daemons, slurmstepd, job processes."""
        mine = []
        for proc in psutil.process_iter():
            try:
                if proc.pid != os.getpid() and proc.environ().get("SLURM_CONF") == str(self.conf):
                    mine.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return mine

    def wait_for_no_job_processes(self, timeout_s: float = 120) -> list[str]:
        """Wait until no process of a job is left (only the daemons); the command lines of those still there."""
        daemons = {proc.pid for proc in self.daemons}
        deadline = time.monotonic() + timeout_s
        while True:
            left = [p for p in self._own_processes() if p.pid not in daemons]
            if not left or time.monotonic() > deadline:
                return [" ".join(p.cmdline())[:200] for p in left if p.is_running()]
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel every job, stop the daemons this cluster started, then end anything of its jobs still alive."""
        if self.daemons and self.daemons[0].poll() is None:
            self.run("scancel", "--full", "--partition=test", check=False)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.run("squeue", "--noheader", check=False).stdout.strip():
                time.sleep(0.5)
        for proc in reversed(self.daemons):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.daemons):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        leftovers = self._own_processes()
        for proc in leftovers:
            proc.kill()
        psutil.wait_procs(leftovers, timeout=30)

    def __enter__(self) -> "SlurmCluster":
        try:
            self.start()
        except BaseException:  # anything, Ctrl-C included: stop what started, then raise it on
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
