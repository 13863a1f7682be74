"""The hosts the multi-host tests run on: separate names and addresses, a network that joins them and
the bridge, and nothing left behind: no process, namespace, link or hosts file."""

import os
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from support.netns import PREFIX, Hosts, sweep_abandoned, unavailable_reason

reason = unavailable_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=f"no network namespaces: {reason}")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def leftovers(tag: str) -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    folders = os.listdir("/etc/netns") if os.path.isdir("/etc/netns") else []
    return [name for name in netns + links.split() + folders if name.startswith(tag)]


def test_each_host_has_its_own_name_and_address_and_reaches_the_other_and_the_bridge():
    with Hosts(2) as hosts, socket.socket() as server:
        server.bind((hosts.bridge_address, 0))
        server.listen()
        port = server.getsockname()[1]
        seen = []
        for host, other in ((hosts[0], hosts[1]), (hosts[1], hosts[0])):
            done = host.run(
                python(f"""
                import socket
                print(socket.gethostname(), socket.gethostbyname({other.name!r}))
                socket.create_connection(({hosts.bridge_address!r}, {port}), timeout=30).close()
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.connect(({other.address!r}, 9))
                    print(s.getsockname()[0])
            """),
                env={"PATH": os.environ["PATH"]},
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            seen.append(done.stdout.split())
            server.accept()[0].close()
        assert seen == [["host0", hosts[1].address, hosts[0].address], ["host1", hosts[0].address, hosts[1].address]]
        assert socket.gethostname() not in ("host0", "host1")


def test_removal_kills_every_process_on_the_hosts_and_leaves_no_namespace_link_or_hosts_file():
    hosts = Hosts(2).create()
    tag = hosts.tag
    try:
        procs = [
            host.start(["sh", "-c", "sleep 600 & exec sleep 600"], env={"PATH": os.environ["PATH"]}) for host in hosts.hosts
        ]
        inside = []
        deadline = time.monotonic() + 120
        while len(inside) < 4:  # two sleeps on each host
            assert time.monotonic() < deadline, f"the hosts' processes did not start: {inside}"
            time.sleep(0.1)
            inside = [
                int(pid)
                for host in hosts.hosts
                for pid in subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True).stdout.split()
            ]
    finally:
        hosts.remove()
    for proc in procs:
        proc.wait(timeout=60)
    assert [pid for pid in inside if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE] == []
    assert leftovers(tag) == []


def test_what_a_killed_session_left_behind_is_swept_by_the_next():
    with open("/proc/sys/kernel/pid_max") as f:
        never_a_process = int(f.read()) + 1
    netns = f"{PREFIX}{never_a_process}-0"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    os.makedirs(f"/etc/netns/{netns}", exist_ok=True)
    sweep_abandoned()
    assert leftovers(f"{PREFIX}{never_a_process}-") == []
