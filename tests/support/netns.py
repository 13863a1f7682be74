"""Several hosts on this one machine: Linux network namespaces joined by a bridge.

Each host is a network namespace with one interface, ``eth0``, on a veth pair whose other
end is attached to a bridge in the root namespace.  Hosts get consecutive addresses in a
private /24 (10.77.X.0/24, X chosen free on this machine), the bridge takes ``.1`` so that
servers in the root namespace (an S3 server, the test itself) are reachable from every
host, and no host has a route anywhere else.  Every command runs in a UTS namespace of its
own with the host's name, and sees the host's ``/etc/hosts``
(``/etc/netns/NETNS/hosts`` mounted over it, where ``ip netns exec`` would look for it).
That file maps the host's own name to 127.0.1.1, as Debian's installer writes it, and the
other hosts' names to their addresses, as DNS would: a program that finds its own address
through its hostname gets a loopback address, as it does on many real machines.

Names carry this process's id, so test sessions running at the same time never meet, and
a session killed before it could clean up is swept by the next one.  :meth:`Hosts.remove`
kills every process in every namespace and deletes namespaces, veths, bridge and hosts
files; it runs at exit too, so an interrupted session leaves nothing behind.
"""

from __future__ import annotations

import atexit
import fcntl
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

PREFIX = "kmh"  # namespaces kmh<pid>-<i>, bridge kmh<pid>, host-side veths kmh<pid>v<i>
TEST_RANGE = ipaddress.ip_network("10.77.0.0/16")
NETNS_ETC = Path("/etc/netns")
CLAIM_LOCK = "/run/kiln-netns.lock"  # kept, like iptables' /run/xtables.lock
OWNED = re.compile(rf"^{PREFIX}(\d+)(?:-\w+|[vp]\d+)?$")  # bridge, namespaces and hosts folders, veth ends


class NamespacesUnavailable(RuntimeError):
    """This machine cannot make network namespaces here (not root, no iproute2)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def unavailable_reason() -> str | None:
    """Why hosts cannot be made on this machine, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (see .ci/apt-packages)"
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "util-linux's `unshare` and `nsenter` are not installed"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _in_use_networks() -> list[ipaddress.IPv4Network]:
    networks = []
    for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
        networks.append(ipaddress.ip_interface(line.split()[3]).network)
    for line in _ip("-4", "route", "show").stdout.splitlines():
        first = line.split()[0]
        if first != "default":
            networks.append(ipaddress.ip_network(first, strict=False))
    return networks


def free_subnet() -> ipaddress.IPv4Network:
    """The first /24 of the test range that overlaps no address or route of the root namespace."""
    used = _in_use_networks()
    for subnet in TEST_RANGE.subnets(new_prefix=24):
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise RuntimeError(f"no free /24 left in {TEST_RANGE}")


def _owner(name: str) -> int | None:
    """The id of the process that made the namespace, link or hosts folder ``name``, if this module made it."""
    match = OWNED.match(name)
    return int(match.group(1)) if match else None


def remove_everything_of(owned: Callable[[int], bool]) -> None:
    """Kill the processes in, and delete, every namespace, link and hosts folder whose maker ``owned`` picks."""
    for name in _ip("netns", "list").stdout.split():
        if (pid := _owner(name)) is not None and owned(pid):
            _kill_every_process(name)
            _ip("netns", "del", name, check=False)  # takes its end of each veth pair with it
    for line in _ip("-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if (pid := _owner(name)) is not None and owned(pid):
            _ip("link", "del", name, check=False)
    if NETNS_ETC.is_dir():
        for folder in NETNS_ETC.iterdir():
            if (pid := _owner(folder.name)) is not None and owned(pid):
                shutil.rmtree(folder, ignore_errors=True)


def sweep_abandoned() -> None:
    """Remove what test sessions whose process is gone left behind (killed before they could clean up)."""
    remove_everything_of(lambda pid: not psutil.pid_exists(pid))


def _pids_in(netns: str) -> list[int]:
    return [int(p) for p in _ip("netns", "pids", netns, check=False).stdout.split()]


def _kill_every_process(netns: str, timeout_s: float = 60) -> None:
    """SIGKILL every process in ``netns`` until none is left (a process may fork while it is being killed)."""
    deadline = time.monotonic() + timeout_s
    while pids := _pids_in(netns):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} in network namespace {netns} survive SIGKILL")
        time.sleep(0.1)


@dataclass(frozen=True)
class Host:
    """One host: its name, network namespace and address."""

    name: str
    netns: str
    address: str

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` as a command run on this host: in its network namespace, under its hostname, with its
        /etc/hosts; the command replaces each wrapper in turn, so signals sent to it reach ``argv`` itself.

        Not ``ip netns exec``: it mounts a fresh /sys, without the cgroup hierarchy that Slurm's slurmd needs.
        No PID namespace: ``unshare --pid --fork`` would leave a parent between a test and ``argv`` that
        ignores SIGTERM, and a program as a namespace's first process ignores the signals it has no
        handler for."""
        hosts_file = NETNS_ETC / self.netns / "hosts"
        return [
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            "--",
            "unshare",
            "--uts",
            "--mount",
            "--",
            "sh",
            "-c",
            f'mount --bind {hosts_file} /etc/hosts && hostname "$0" && exec "$@"',
            self.name,
            *argv,
        ]

    def start(self, argv: list[str], env: dict[str, str], **popen) -> subprocess.Popen:
        """Start ``argv`` on this host with exactly ``env`` (its own session, like a login on that machine)."""
        return subprocess.Popen(self.command(argv), env=env, start_new_session=True, **popen)

    def run(self, argv: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(argv), env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True
        )

    def kill_every_process(self) -> None:
        """The host dies: every process in it is killed at once, as when a machine loses power."""
        _kill_every_process(self.netns)


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


class Hosts:
    """``n`` hosts on a bridge; a context manager that removes everything it made."""

    def __init__(self, n: int):
        self.tag = f"{PREFIX}{os.getpid()}"
        self.bridge = self.tag
        self.hosts: list[Host] = []
        self.bridge_address = ""
        self.n = n
        self._sigterm_installed = False

    def create(self) -> "Hosts":
        atexit.register(self.remove)
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            # A SIGTERM would end this process on the spot; as an interrupt it lets pytest run every teardown.
            signal.signal(signal.SIGTERM, _interrupt)
            self._sigterm_installed = True
        try:
            with open(CLAIM_LOCK, "a") as lock:  # one session at a time picks a subnet and claims it with its bridge
                fcntl.flock(lock, fcntl.LOCK_EX)
                sweep_abandoned()
                subnet = free_subnet()
                addresses = [str(a) for a in subnet.hosts()]
                self.bridge_address = addresses[0]
                _ip("link", "add", self.bridge, "type", "bridge")
                _ip("addr", "add", f"{self.bridge_address}/{subnet.prefixlen}", "dev", self.bridge)
                _ip("link", "set", self.bridge, "up")
            self.hosts = [Host(name=f"host{i}", netns=f"{self.tag}-{i}", address=addresses[i + 1]) for i in range(self.n)]
            for i, host in enumerate(self.hosts):
                self._add_host(i, host, subnet.prefixlen)
        except BaseException:  # anything, Ctrl-C included: remove what was made, then raise it on
            self.remove()
            raise
        return self

    def _add_host(self, i: int, host: Host, prefixlen: int) -> None:
        outside, inside = f"{self.tag}v{i}", f"{self.tag}p{i}"
        _ip("netns", "add", host.netns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", host.netns)
        _ip("-n", host.netns, "link", "set", inside, "name", "eth0")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/{prefixlen}", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        folder = NETNS_ETC / host.netns
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", f"127.0.1.1 {host.name}"]
        lines += [f"{h.address} {h.name}" for h in self.hosts if h is not host]
        (folder / "hosts").write_text("\n".join(lines) + "\n")

    def remove(self) -> None:
        """Kill every process of every host, then delete namespaces, veths, bridge and hosts files
        (whatever part of them was made)."""
        remove_everything_of(lambda pid: pid == os.getpid())
        self.hosts = []
        atexit.unregister(self.remove)
        if self._sigterm_installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._sigterm_installed = False

    def __enter__(self) -> "Hosts":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.remove()

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]
