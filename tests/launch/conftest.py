"""A real one-node Slurm for the launch tests (see support/slurm_cluster.py)."""

from __future__ import annotations

import os
import shutil

import pytest

from support.slurm_cluster import SlurmCluster, SlurmNode


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
    with SlurmCluster(tmp_path_factory.mktemp("slurm"), [node]) as cluster:
        yield cluster
