"""A run folder is data, not instructions: the commands given a RUN_URL read the model, data and eval
description from its saved config.yaml, never where to connect or what to run.  Whoever can write the
folder plants addresses of sockets this test listens on; nothing ever connects to them."""

from __future__ import annotations

import contextlib
import shutil
import socket
from pathlib import Path

import pytest
import yaml

from cluster.config import ClusterConfig
from launch.cli import main
from launch.config import load_run_config
from ops import storage


def listener() -> socket.socket:
    """A socket on 127.0.0.1 that queues any connection made to it, for :func:`connections_to` to count."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=16)
    sock.setblocking(False)
    return sock


def connections_to(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.fixture(scope="module")
def planted(trained_run, tmp_path_factory):
    """A copy of the trained run whose saved config points cluster, launcher and storage at listening sockets."""
    sockets = {"ray": listener(), "http": listener(), "storage": listener()}
    run = tmp_path_factory.mktemp("planted") / "run"
    shutil.copytree(trained_run.run_url, run, ignore=shutil.ignore_patterns("eval"))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["cluster"] = {"address": f"ray://127.0.0.1:{sockets['ray'].getsockname()[1]}", "num_cpus": 1}
    saved["train"]["launcher"] = "ray"
    endpoint = f"http://127.0.0.1:{sockets['storage'].getsockname()[1]}"
    saved["storage"] = {"options": {"endpoint_url": endpoint, "client_kwargs": {"endpoint_url": endpoint}}}
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    with contextlib.ExitStack() as stack:
        for sock in sockets.values():
            stack.enter_context(sock)
        yield run, sockets


def test_a_saved_config_gives_the_model_data_and_eval_but_not_the_cluster_storage_or_launcher(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    saved = {
        "run": {"name": "planted", "dir": "s3://elsewhere/run", "seed": 7},
        "data": {"inputs": ["in.jsonl"], "output": "data-url", "vocab_size": 512},
        "model": {"dim": 32},
        "train": {"launcher": "ray", "nodes": 64},
        "eval": {"slice_size": 8},
        "cluster": {"address": "ray://127.0.0.1:1", "entrypoint_num_cpus": 4},
        "storage": {"options": {"endpoint_url": "http://127.0.0.1:1"}},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = load_run_config(str(run))
    assert cfg.cluster.model_dump() == ClusterConfig().model_dump() and cfg.storage.options == {}
    assert cfg.train.launcher == "local" and cfg.train.nodes == 1
    assert cfg.run_url == str(run)  # the run is where the user found it, not where its file says
    assert (cfg.run.name, cfg.run.seed, cfg.data_url, cfg.model.dim, cfg.eval.slice_size) == ("planted", 7, "data-url", 32, 8)
    # the user's own overrides still choose
    assert load_run_config(str(run), ["cluster.address=ray://head:10001"]).cluster.address == "ray://head:10001"


@pytest.mark.slow
def test_kiln_eval_of_a_run_url_connects_to_nothing_its_folder_names_and_evaluates_on_a_private_ray(
    planted, kiln_cli, tmp_path, monkeypatch
):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    run, sockets = planted
    proc = kiln_cli("eval", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {name: connections_to(sock) for name, sock in sockets.items()} == {"ray": 0, "http": 0, "storage": 0}
    report = storage.read_json(str(run / "eval" / "step-00000006.json"))
    assert report["tasks"]["heldout"]["examples"] > 0


@pytest.mark.slow
def test_the_other_run_url_commands_connect_to_nothing_a_run_folder_names(planted, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    run, sockets = planted
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["cluster"]["address"] = f"http://127.0.0.1:{sockets['http'].getsockname()[1]}"
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    url = str(run)
    commands = [
        ["status", url],
        ["monitor", url, "--once"],
        ["ckpt", "ls", url],
        ["ckpt", "verify", url],
        ["generate", url, "def", "--max-tokens", "2"],
        ["export", "hf", url, str(tmp_path / "hf")],
    ]
    for command in commands:
        assert main(command) in (0, 1, 3), command  # status: the exit code tells the run's health
    assert {name: connections_to(sock) for name, sock in sockets.items()} == {"ray": 0, "http": 0, "storage": 0}
    assert Path(tmp_path / "hf" / "config.json").is_file()
