"""Connecting to Ray: join a given cluster, or start a private local one for the duration of a command."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import ray

from cluster.config import ClusterConfig


@contextlib.contextmanager
def ray_session(cluster: ClusterConfig) -> Iterator[None]:
    """Use the Ray instance already up, else join ``cluster.address`` / ``RAY_ADDRESS``, else start one locally.

    Only a Ray started here is shut down here.
    """
    if ray.is_initialized():
        yield
        return
    address = cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=cluster.num_cpus or os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
            configure_logging=False,
        )
    try:
        yield
    finally:
        ray.shutdown()
