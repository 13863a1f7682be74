"""Connecting to Ray: join a given cluster, or start a private local one for the duration of a command."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

import ray

from cluster.auth import private_token
from cluster.config import ClusterConfig


@contextlib.contextmanager
def ray_session(cluster: ClusterConfig) -> Iterator[None]:
    """Use the Ray instance already up, else join ``cluster.address`` / ``RAY_ADDRESS``, else start one locally.

    Only a Ray started here is shut down here, and its session folder (logs, sockets, spilled
    objects) lives in a private temporary folder removed with it, beside the new token that a
    client of it must present (token authentication is asked for here, not left to Ray's default).
    """
    if ray.is_initialized():
        yield
        return
    address = cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
        return
    # Short and private: Ray's unix sockets live under it, and their paths must stay under 108 bytes.
    folder = tempfile.mkdtemp(prefix="kiln-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        with private_token(folder):
            try:
                ray.init(
                    num_cpus=cluster.num_cpus or os.cpu_count(),
                    include_dashboard=False,
                    log_to_driver=False,
                    _node_ip_address="127.0.0.1",
                    _temp_dir=os.path.join(folder, "r"),
                    configure_logging=False,
                )
                yield
            finally:
                ray.shutdown()  # also after a failed start, which can leave the head's processes running
    finally:
        shutil.rmtree(folder, ignore_errors=True)
