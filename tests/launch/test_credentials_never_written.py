"""A storage credential planted in a config and really used for S3 (moto) never shows up in anything Kiln
writes or starts: not after `kiln run`, a `kiln submit` to a token-authenticated Ray head (its package, its
session folder, the job's info), a rendered SLURM job run on slurm-wlm, or a Kubernetes render, and never in
the command line of a process running meanwhile.  The credentials reach every process through
KILN_STORAGE_SECRETS alone: no AWS variables or files are set for the commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psutil
import pytest
import yaml
from ray.job_submission import JobSubmissionClient

from ops import storage
from ops.credentials import SECRETS_ENV
from support.ray_head import RayHead
from support.s3_endpoint import s3_endpoint

pytestmark = pytest.mark.slow

SECRET = f"planted-{uuid.uuid4().hex}"
VENV_BIN = str(Path(sys.executable).parent)


class CommandLineWatch:
    """Every process's command line, sampled every 0.2 s on a thread; ``hits`` holds those naming ``needle``."""

    def __init__(self, needle: str):
        self.needle = needle
        self.hits: list[str] = []
        self.samples = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.done.wait(0.2):
            for proc in psutil.process_iter(["cmdline"]):
                line = " ".join(proc.info["cmdline"] or [])
                if self.needle in line:
                    self.hits.append(line[:300])
            self.samples += 1

    def __enter__(self) -> "CommandLineWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def files_holding(root: Path, needle: str, skip: tuple[Path, ...] = ()) -> list[str]:
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if path in skip or not path.is_file() or path.is_symlink():
                continue
            try:
                if needle.encode() in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def objects_holding(bucket: str, needle: str) -> list[str]:
    fs, root = storage.filesystem(bucket)
    names = fs.find(root)
    assert names, "the bucket is empty: nothing was written there"
    return [name for name, data in fs.cat(names).items() if needle.encode() in data]


def command_env(**extra: str) -> dict[str, str]:
    """A user's shell with no S3 credentials of its own: the config's storage.options are all there is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_")) and k != SECRETS_ENV}
    env.update(
        AWS_CONFIG_FILE="/nonexistent/aws-config",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.update(extra)
    return env


def kiln(*args, env, cwd, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_config):
    """A moto bucket holding the corpus, a config whose storage.options carry the planted secret, a Ray head
    whose environment has the credentials, and the command-line watch; the data is prepared by `kiln run`."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    tmp = tmp_path_factory.mktemp("credentials")
    mp = pytest.MonkeyPatch()
    for name in [n for n in os.environ if n.startswith("AWS_")] + [SECRETS_ENV]:
        mp.delenv(name, raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    _, port = server.get_host_and_port()
    endpoint = f"http://127.0.0.1:{port}"
    secrets = {"key": "testing", "secret": SECRET}
    try:
        with s3_endpoint(mp, endpoint, bucket="kiln-credentials") as bucket, CommandLineWatch(SECRET) as watch:
            config = tiny_config(tmp, seed=5)
            tree = yaml.safe_load(config.read_text())
            for key in ("inputs", "val_inputs"):
                urls = []
                for local in tree["data"][key]:
                    for path in sorted(Path(local).parent.glob(Path(local).name)):
                        storage.write_bytes(f"{bucket}/corpus/{path.name}", path.read_bytes())
                        urls.append(f"{bucket}/corpus/{path.name}")
                tree["data"][key] = urls
            tree["data"]["output"] = f"{bucket}/data"
            tree["run"]["dir"] = f"{bucket}/runs/local"
            tree["train"].update(steps=2, checkpoint_every=2, warmup_steps=1)
            tree["eval"] = {"max_windows_per_shard": 4, "workers": 1}
            tree["storage"] = {"options": {**secrets, "endpoint_url": endpoint, "client_kwargs": {"region_name": "us-east-1"}}}
            config.write_text(yaml.safe_dump(tree))
            yield {"tmp": tmp, "config": config, "bucket": bucket, "secrets": secrets, "watch": watch}
    finally:
        server.stop()
        mp.undo()


@pytest.fixture(scope="module")
def local_run(world):
    """`kiln run` of the config on this machine (prepare, torchrun ranks, eval): the data the other jobs share."""
    cwd = world["tmp"] / "run-cwd"
    cwd.mkdir()
    done = kiln("run", str(world["config"]), env=command_env(), cwd=cwd)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return cwd, done


def test_kiln_run_writes_no_credential_to_its_run_data_or_records(world, local_run):
    cwd, done = local_run
    bucket = world["bucket"]
    assert storage.exists(f"{bucket}/runs/local/eval/step-00000002.json"), "the run wrote through the planted credential"
    saved = storage.read_text(f"{bucket}/runs/local/config.yaml")
    assert "***redacted***" in saved
    assert objects_holding(bucket, SECRET) == []
    assert files_holding(cwd, SECRET) == []
    assert SECRET not in done.stdout + done.stderr
    assert world["watch"].samples > 0 and world["watch"].hits == []


@pytest.fixture
def ray_head(world):
    """A token-authenticated head whose nodes hold the credentials in their environment, as an operator sets it
    (for the one test that submits to it: not left idling through the others)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            mp.delenv(name)
        head = RayHead(num_cpus=2, extra_env={SECRETS_ENV: json.dumps(world["secrets"])})
        head.start()
    try:
        yield head
    finally:
        head.stop()


def test_kiln_submit_puts_no_credential_in_the_package_runtime_env_or_ray_train_config(world, local_run, ray_head):
    head = ray_head
    env = command_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=head.token_path)
    done = kiln(
        "submit",
        str(world["config"]),
        f"run.dir={world['bucket']}/runs/submitted",
        "train.launcher=ray",
        "--address",
        head.dashboard_url,
        "--follow",
        env=env,
        cwd=world["tmp"],
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job_id = done.stdout.strip().splitlines()[0]
    assert storage.exists(f"{world['bucket']}/runs/submitted/eval/step-00000002.json")

    token = Path(head.token_path).read_text().strip()
    client = JobSubmissionClient(head.dashboard_url, headers={"Authorization": f"Bearer {token}"})
    info = client.get_job_info(job_id)
    assert SECRET not in json.dumps(info.model_dump(), default=str)
    assert SECRET not in client.get_job_logs(job_id)
    assert files_holding(Path(head.folder), SECRET) == []  # the unpacked package, Ray's session logs
    assert objects_holding(world["bucket"], SECRET) == []  # Ray Train's own state under the run included
    assert world["watch"].hits == []


def test_a_rendered_slurm_job_carries_no_credential_in_its_script_or_log(world, local_run, slurm):
    folder = world["tmp"] / "slurm"
    folder.mkdir()
    env = command_env(SLURM_CONF=slurm.env["SLURM_CONF"], KILN_MASTER_PORT=str(slurm.free_ports()))
    script = folder / "job.sh"
    submitted = kiln(
        "launch",
        "slurm",
        str(world["config"]),
        f"run.dir={world['bucket']}/runs/slurm",
        "--gpus-per-node",
        "0",
        "-o",
        str(script),
        "--submit",
        env=env,
        cwd=folder,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job_id = submitted.stdout.strip()
    info = slurm.wait_for_job(job_id)
    logs = list(folder.glob(f"kiln-*-{job_id}.out"))
    assert info["JobState"] == "COMPLETED", logs[0].read_text()[-3000:] if logs else slurm.logs()
    assert storage.exists(f"{world['bucket']}/runs/slurm/checkpoints/latest")
    assert "***redacted***" in script.read_text()
    assert files_holding(folder, SECRET) == []
    assert objects_holding(world["bucket"], SECRET) == []
    assert world["watch"].hits == []


def test_a_kubernetes_render_carries_the_marker_and_takes_the_credentials_from_the_secret(world, tmp_path):
    manifest = tmp_path / "job.yaml"
    rendered = kiln(
        "launch",
        "k8s",
        str(world["config"]),
        "--gpus-per-node",
        "1",
        "--image",
        "kiln:1",
        "--secret",
        "s3-credentials",
        "-o",
        str(manifest),
        env=command_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    text = manifest.read_text()
    assert "***redacted***" in text and "s3-credentials" in text
    assert files_holding(tmp_path, SECRET) == []
    refused = kiln(
        "launch",
        "k8s",
        str(world["config"]),
        "--gpus-per-node",
        "1",
        "--image",
        "kiln:1",
        env=command_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert refused.returncode == 2 and "looks like a credential" in refused.stderr
