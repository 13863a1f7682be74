"""The private local Ray a command starts asks for token authentication itself, with a new token kept
in its own private folder: a client without that token is refused, whatever Ray's defaults are."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from cluster.auth import AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV, default_token_path, write_new_token
from cluster.config import ClusterConfig
from cluster.connect import ray_session

CLIENT = "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); print(ray.cluster_resources()['CPU'])"


def client(gcs_address: str, home: Path, **auth: str) -> subprocess.CompletedProcess:
    """A Ray driver joining ``gcs_address`` with only the auth settings given (and its own empty home)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_gcs_server_port_wait_time_s="2", **auth)  # one refusal is enough
    return subprocess.run([sys.executable, "-c", CLIENT, gcs_address], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_private_local_ray_refuses_clients_without_its_own_token(tmp_path, monkeypatch):
    monkeypatch.delenv(AUTH_MODE_ENV, raising=False)  # Kiln asks for tokens itself, whatever Ray's default
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    someone_elses = write_new_token(tmp_path / "other" / "auth_token")

    with ray_session(ClusterConfig(num_cpus=1)):
        first_token = Path(os.environ[TOKEN_PATH_ENV])
        assert ray.get(ray.remote(lambda: "ran").remote()) == "ran"
    with ray_session(ClusterConfig(num_cpus=1)):  # a second Ray of the same command gets a token of its own
        token = Path(os.environ[TOKEN_PATH_ENV])
        folder = token.parent
        assert os.environ[AUTH_MODE_ENV] == "token"
        assert token != first_token and token != default_token_path()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(token.stat().st_mode) == 0o600
        assert ray.get(ray.remote(lambda: "ran").remote()) == "ran"
        gcs = ray.get_runtime_context().gcs_address
        refused = {
            "no token": client(gcs, home),
            "a token of another cluster": client(gcs, home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(someone_elses)),
        }
        admitted = client(gcs, home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))

    for who, proc in refused.items():
        assert proc.returncode != 0, who
        assert "InvalidAuthToken" in proc.stderr, f"{who}: {proc.stderr[-2000:]}"
    assert admitted.returncode == 0, admitted.stderr[-2000:]
    assert not folder.exists() and not first_token.parent.exists()
    assert AUTH_MODE_ENV not in os.environ and TOKEN_PATH_ENV not in os.environ and TOKEN_ENV not in os.environ
