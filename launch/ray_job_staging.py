"""`kiln submit`: stage ``kiln run`` with a resolved config as a Ray job and hand it to the cluster's Jobs API
(the client is ``cluster.submit``).

The job carries its own code and config: Kiln's packages and the resolved config are staged in
a private folder that Ray uploads as the job's working directory, so the cluster runs exactly
what was submitted, whatever is installed there.  The nodes must share the run's storage: a
config whose paths are relative or local is refused for a cluster on another machine.
"""

from __future__ import annotations

import importlib
import os
import secrets
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from cluster.submit import Jobs
from launch.config import ConfigError, KilnConfig

PACKAGES = ("cluster", "data_shards", "launch", "llm", "ops")
JOB_CONFIG = "kiln-job.yaml"
ENTRYPOINT = f"python -m launch.cli run {JOB_CONFIG}"


def is_local_path(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def cluster_is_on_this_machine(address: str) -> bool:
    """Whether the dashboard address names this machine (loopback or one of its own addresses)."""
    host = urlparse(address).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, family=socket.AF_INET)}
    except socket.gaierror:
        return False
    for ip in addresses:
        if ip.startswith("127."):
            return True
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((ip, 0))  # succeeds only for an address of this machine
                return True
            except OSError:
                continue
    return False


def _path_fields(cfg: KilnConfig) -> list[tuple[str, str, Callable[[str], None]]]:
    """(config key, value, setter) of every path the cluster's nodes must reach."""
    fields = [
        ("run.dir", cfg.run_url, lambda v: setattr(cfg.run, "dir", v)),
        ("data.output", cfg.data.output, lambda v: setattr(cfg.data, "output", v)),
    ]
    if cfg.data.tokenizer:
        fields.append(("data.tokenizer", cfg.data.tokenizer, lambda v: setattr(cfg.data, "tokenizer", v)))
    for key, items in (("data.inputs", cfg.data.inputs), ("data.val_inputs", cfg.data.val_inputs)):
        for i, value in enumerate(items):
            fields.append((key, value, lambda v, items=items, i=i: items.__setitem__(i, v)))
    for source in cfg.data.sources:
        for i, value in enumerate(source.inputs):
            fields.append(
                (f"data.sources.{source.name}.inputs", value, lambda v, items=source.inputs, i=i: items.__setitem__(i, v))
            )
    return fields


def config_for_cluster(cfg: KilnConfig, on_this_machine: bool) -> KilnConfig:
    """The config the cluster runs: relative paths made absolute when the cluster is this machine,
    refused when it is not (its nodes need shared storage)."""
    cfg = cfg.model_copy(deep=True)
    for key, value, set_value in _path_fields(cfg):
        if not is_local_path(value) or os.path.isabs(value.removeprefix("file://")):
            continue
        if not on_this_machine:
            raise ConfigError(
                f"{key}={value!r} is a relative local path, which the cluster's nodes cannot reach: the nodes need "
                "shared storage, an s3://... URL or a shared filesystem path given as absolute"
            )
        set_value(os.path.abspath(value))
    return cfg


def stage_working_dir(folder: str, cfg: KilnConfig) -> None:
    """Kiln's packages (code only) and the resolved config, as the job's working directory."""
    for name in PACKAGES:
        source = Path(importlib.import_module(name).__file__).parent
        shutil.copytree(source, os.path.join(folder, name), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    Path(folder, JOB_CONFIG).write_text(cfg.to_yaml(), encoding="utf-8")


def submit(cfg: KilnConfig, address: str, allow_insecure_token: bool = False) -> tuple[Jobs, str]:
    """Submit ``kiln run`` of ``cfg`` to the cluster at ``address``; returns the connection and the job id."""
    jobs = Jobs.connect(address, allow_insecure_token)
    resolved = config_for_cluster(cfg, cluster_is_on_this_machine(jobs.address))
    with tempfile.TemporaryDirectory(prefix="kiln-submit-") as folder:
        stage_working_dir(folder, resolved)
        job_id = jobs.submit(
            entrypoint=ENTRYPOINT,
            runtime_env={
                "working_dir": folder,
                # Ray's default grace before SIGKILL is 3 s; ranks need time to save when a job is stopped.
                "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(cfg.cluster.job_stop_grace_s)},
            },
            metadata={"kiln.run": cfg.run.name, "kiln.run_dir": resolved.run_url},
            submission_id=f"kiln-{cfg.run.name}-{secrets.token_hex(4)}",
            entrypoint_num_cpus=cfg.cluster.entrypoint_num_cpus,
            entrypoint_num_gpus=cfg.cluster.entrypoint_num_gpus,
        )
    return jobs, job_id
