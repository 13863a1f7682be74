"""Two hosts on this machine (network namespaces on a bridge) and the storage they share: a moto S3
server listening on the bridge's address, the only place outside themselves they can reach."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass

import pytest

from support.netns import Host, Hosts, unavailable_reason

VENV_BIN = os.path.dirname(sys.executable)
BUCKET = "kiln-multihost"


@dataclass
class Cluster:
    """The hosts, and the environment every command on them starts from."""

    hosts: Hosts
    bucket: str
    base_env: dict[str, str]

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def env(self, **extra: str) -> dict[str, str]:
        return {**self.base_env, **extra}


def storage_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two hosts and an S3 bucket on the bridge; this test process reaches the bucket too."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no network namespaces: {reason}")
    import boto3
    import fsspec
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one line per S3 request
    hosts = Hosts(2).create()
    server = ThreadedMotoServer(ip_address=hosts.bridge_address, port=0)
    try:
        server.start()
    except BaseException:  # anything, Ctrl-C included: remove the hosts, then raise it on
        hosts.remove()
        raise
    # The hosts' temporary files, removed with the hosts: a process killed on a host leaves its own behind.
    host_tmp = tempfile.mkdtemp(prefix="kmh-tmp-")
    try:
        _, port = server.get_host_and_port()
        endpoint = f"http://{hosts.bridge_address}:{port}"
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("RAY_", "AWS_", "MASTER_", "NODE_RANK", "GLOO_", "OMP_"))
        }
        env.update(storage_env(endpoint))
        env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            # Equal thread counts on every rank, whatever the launcher would pick for the ranks of a node,
            # so one host with two ranks and two hosts with one rank each compute the very same sums.
            OMP_NUM_THREADS="1",
            RAY_USAGE_STATS_ENABLED="0",
            TMPDIR=host_tmp,
        )
        with pytest.MonkeyPatch.context() as patch:
            for name, value in storage_env(endpoint).items():
                patch.setenv(name, value)
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
            fsspec.AbstractFileSystem.clear_instance_cache()
            yield Cluster(hosts=hosts, bucket=f"s3://{BUCKET}", base_env=env)
            fsspec.AbstractFileSystem.clear_instance_cache()
    finally:
        hosts.remove()  # every process on the hosts first, then the storage they were using
        server.stop()
        shutil.rmtree(host_tmp, ignore_errors=True)
