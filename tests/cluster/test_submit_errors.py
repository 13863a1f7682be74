"""What `kiln submit` refuses before it reaches a cluster, and how it says so."""

import os
import socket
import subprocess
import sys

import psutil
import pytest

from cluster.auth import insecure_token_allowed, plain_http_refusal
from launch.config import ConfigError, load_config
from launch.ray_job_staging import cluster_is_on_this_machine, config_for_cluster, stage_working_dir


def kiln(*args, env=None):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run: {name: r, dir: runs/r}\ndata: {inputs: [raw/*.jsonl], output: data/r}\n")
    return str(path)


@pytest.mark.parametrize("address", ["ray://head:10001", "head:8265", "127.0.0.1:6379"])
def test_an_address_that_is_not_a_dashboard_url_is_one_line(config, address):
    out = kiln("submit", config, "--address", address)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "is not a Ray dashboard URL: give http://HEAD:8265" in out.stderr


def test_an_unreachable_cluster_is_one_line(config):
    with socket.socket() as s:  # a port that nothing listens on while this test runs
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        out = kiln("jobs", "list", "--address", f"http://127.0.0.1:{port}")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert f"cannot reach a Ray dashboard at http://127.0.0.1:{port}" in out.stderr


def test_relative_paths_are_refused_for_a_cluster_on_another_machine(config):
    with pytest.raises(ConfigError, match="run.dir='runs/r' is a relative local path.*shared storage, an s3://"):
        config_for_cluster(load_config(config), on_this_machine=False)


def test_absolute_and_object_store_paths_go_to_another_machine_unchanged(config):
    cfg = load_config(config, ["run.dir=s3://bucket/runs/r", "data.output=/shared/data/r", "data.inputs=[s3://b/raw/*]"])
    resolved = config_for_cluster(cfg, on_this_machine=False)
    assert (resolved.run_url, resolved.data.output, resolved.data.inputs) == (
        "s3://bucket/runs/r",
        "/shared/data/r",
        ["s3://b/raw/*"],
    )


def test_relative_paths_become_absolute_for_a_cluster_on_this_machine(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved = config_for_cluster(load_config(config), on_this_machine=True)
    assert resolved.run_url == str(tmp_path / "runs/r")
    assert resolved.data.output == str(tmp_path / "data/r")
    assert resolved.data.inputs == [str(tmp_path / "raw/*.jsonl")]


def test_loopback_and_this_machines_own_address_are_this_machine_but_others_are_not():
    assert cluster_is_on_this_machine("http://127.0.0.1:8265")
    assert cluster_is_on_this_machine("http://localhost:8265")
    own = next(
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    )
    assert cluster_is_on_this_machine(f"http://{own}:8265")
    assert not cluster_is_on_this_machine("http://203.0.113.7:8265")
    assert not cluster_is_on_this_machine("http://no-such-host.invalid:8265")


def test_the_job_carries_kilns_code_and_the_resolved_config_but_no_caches(config, tmp_path):
    cfg = load_config(config, ["run.dir=s3://bucket/runs/r"])
    stage_working_dir(str(tmp_path / "job"), cfg)
    staged = {p.relative_to(tmp_path / "job").parts[0] for p in (tmp_path / "job").rglob("*")}
    assert staged == {"cluster", "data_shards", "launch", "llm", "ops", "kiln-job.yaml"}
    assert not list((tmp_path / "job").rglob("__pycache__"))
    assert load_config(str(tmp_path / "job" / "kiln-job.yaml")).run_url == "s3://bucket/runs/r"


@pytest.mark.parametrize(
    "address, refused",
    [
        ("http://10.0.0.5:8265", True),
        ("http://head.example.org:8265", True),
        ("http://127.0.0.1.example.org:8265", True),
        ("http://127.0.0.1:8265", False),
        ("http://127.3.4.5:8265", False),
        ("http://localhost:8265", False),
        ("http://[::1]:8265", False),
        ("https://head.example.org:8265", False),
    ],
)
def test_the_token_goes_over_plain_http_only_to_a_loopback_address(address, refused):
    assert (plain_http_refusal(address) is not None) == refused


def test_a_flag_or_the_environment_lets_the_token_go_over_plain_http():
    assert insecure_token_allowed(True, {}) and insecure_token_allowed(False, {"KILN_ALLOW_INSECURE_TOKEN": "1"})
    assert not insecure_token_allowed(False, {}) and not insecure_token_allowed(False, {"KILN_ALLOW_INSECURE_TOKEN": "0"})


@pytest.mark.parametrize("command", [["jobs", "list"], ["submit", "CONFIG"]])
def test_kiln_refuses_to_send_a_token_over_plain_http_to_another_machine_in_one_line(config, tmp_path, command):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "KILN_"))}
    env.update(HOME=str(tmp_path), RAY_AUTH_TOKEN="f" * 64)
    address = "http://192.0.2.10:8265"  # nothing is asked of it: the refusal comes first
    out = kiln(*[config if part == "CONFIG" else part for part in command], "--address", address, env=env)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"kiln: error: not sending the Ray token to {address} over plain http")
    assert "ssh -L 8265:127.0.0.1:8265 192.0.2.10" in out.stderr and "--allow-insecure-token" in out.stderr
    assert "f" * 64 not in out.stderr
