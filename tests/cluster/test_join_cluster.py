"""Commands join the Ray cluster that `cluster.address` or `RAY_ADDRESS` names rather than starting a Ray of
their own: the head (token authentication on) lists each command's process as a driver of its own."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ray.job_submission import JobSubmissionClient, JobType

from data_shards.manifest import is_prepared

pytestmark = pytest.mark.slow


def user_env(head) -> dict[str, str]:
    """A shell that can reach the head: its token where Ray's clients look, no Ray address of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=head.token_path)
    return env


def driver_pids(head) -> set[int]:
    """The process ids of every driver that has connected to the head, as its Jobs API lists them."""
    token = Path(head.token_path).read_text().strip()
    client = JobSubmissionClient(head.dashboard_url, headers={"Authorization": f"Bearer {token}"})
    return {
        int(job.driver_info.pid) for job in client.list_jobs() if job.type == JobType.DRIVER and job.driver_info is not None
    }


def prepare_on(head, config: Path, *overrides: str, env: dict[str, str]) -> int:
    """`kiln prepare CONFIG ...` as a user runs it; the pid of the process (the Ray driver)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "prepare", str(config), *overrides],
        env=env,
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    return proc.pid


def test_cluster_address_in_the_config_joins_that_cluster(ray_head, tiny_config, tmp_path):
    config = tiny_config(tmp_path)
    pid = prepare_on(ray_head, config, f"cluster.address={ray_head.gcs_address}", env=user_env(ray_head))
    assert is_prepared(str(tmp_path / "data"))
    assert pid in driver_pids(ray_head)


def test_ray_address_in_the_environment_joins_that_cluster(ray_head, tiny_config, tmp_path):
    config = tiny_config(tmp_path)
    pid = prepare_on(ray_head, config, env={**user_env(ray_head), "RAY_ADDRESS": ray_head.gcs_address})
    assert is_prepared(str(tmp_path / "data"))
    assert pid in driver_pids(ray_head)
