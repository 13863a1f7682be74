"""Setup of rank processes, the one place every launcher takes it from: accelerator, threads,
and tying a process's life to its parent's.  The one place ``DS_ACCELERATOR`` is set.

A rank runs on CUDA when the machine it runs on has a GPU, else on DeepSpeed's CPU
accelerator over gloo.  CPU ranks share the machine's cores evenly, so ranks on one
node do not oversubscribe it with one full thread pool each.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Mapping, MutableMapping


def cpu_threads_per_rank(ranks_per_node: int, cpus: int | None = None) -> int:
    """Threads each of ``ranks_per_node`` CPU ranks may use on a machine with ``cpus`` cores."""
    return max(1, (cpus or os.cpu_count() or 1) // max(1, ranks_per_node))


def use_cpu_accelerator_without_cuda(environ: MutableMapping[str, str] = os.environ) -> None:
    """Tell DeepSpeed to use its CPU accelerator when there is no CUDA device, instead of guessing aloud;
    a value already set wins.  For this process (and the Ray workers it starts) or a child's environment."""
    import torch

    if not torch.cuda.is_available():
        environ.setdefault("DS_ACCELERATOR", "cpu")


def rank_environment(ranks_per_node: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for rank processes started on this machine (torchrun, srun)."""
    import torch

    env = dict(os.environ if base is None else base)
    use_cpu_accelerator_without_cuda(env)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", str(cpu_threads_per_rank(ranks_per_node)))
    # DeepSpeed's own deprecated torch calls would otherwise warn once per rank.
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    return env


def interface_holding(address: str) -> str | None:
    """The name of this machine's network interface that holds the IPv4 ``address``, if one does."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == address for a in addresses):
            return name
    return None


def gloo_interface_environment(local_address: str, environ: Mapping[str, str]) -> dict[str, str]:
    """``GLOO_SOCKET_IFNAME`` for ranks that reach the other nodes from ``local_address``; a value already set wins.

    Left alone, gloo binds whatever this machine's hostname resolves to, and on many machines
    that is a loopback address (Debian's /etc/hosts maps the hostname to 127.0.1.1): the ranks
    of the other nodes then try to connect to their own loopback and the job hangs.
    """
    if environ.get("GLOO_SOCKET_IFNAME"):
        return {}
    name = interface_holding(local_address)
    return {"GLOO_SOCKET_IFNAME": name} if name else {}


def configure_this_process(ranks_per_node: int) -> None:
    """The same setup for a rank that runs inside an existing process (a Ray Train worker)."""
    import torch

    os.environ.update(rank_environment(ranks_per_node))
    if not torch.cuda.is_available():
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send this process ``sig`` when its parent dies, so a launcher killed outright
    never leaves torchrun or ranks running on their own (SIGTERM makes ranks save and stop)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(sig))
