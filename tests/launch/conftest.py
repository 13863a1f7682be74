"""A real one-node Slurm for the launch tests (see support/slurm_cluster.py)."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from support.slurm_cluster import SlurmCluster, SlurmNode

# Slurm holds a requeued job back for cred_expire + 1 seconds before it may start again; 5 is its least.
# The tests' jobs start their steps within a second or two of getting their credentials.
CRED_EXPIRE_S = 10


class QuickRequeueSlurm(SlurmCluster):
    """The test cluster with job credentials that expire after CRED_EXPIRE_S, so a requeued job starts again
    that much sooner."""

    def write_config(self) -> None:
        super().write_config()
        text, count = re.subn(
            r"(?m)^AuthInfo=cred_expire=\d+$", f"AuthInfo=cred_expire={CRED_EXPIRE_S}", self.conf.read_text()
        )
        if count != 1:
            raise RuntimeError(f"no AuthInfo=cred_expire line to shorten in {self.conf}")
        self.conf.write_text(text)


def require_slurm() -> None:
    """Slurm comes from .ci/apt-packages (installed by `make test` as root); CI must not skip for its absence."""
    missing = [tool for tool in ("slurmctld", "slurmd", "sbatch") if shutil.which(tool) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed: run `make test` as root (it installs .ci/apt-packages)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm cluster (node ``kiln0`` on 127.0.0.1) for the tests of one module."""
    require_slurm()
    node = SlurmNode("kiln0", "127.0.0.1", cpus=os.cpu_count() or 2)
    with QuickRequeueSlurm(tmp_path_factory.mktemp("slurm"), [node]) as cluster:
        yield cluster
