"""Storage credentials in a config: what Kiln writes holds them redacted, the environment carries them, and
a loaded config or rank job gets the real values back (or one line naming the key that is missing)."""

from __future__ import annotations

import json
import os
import uuid

import pytest
import yaml

from launch.config import ConfigError, load_config
from launch.render import KubernetesOptions, SlurmOptions, render_rayjob, render_sbatch
from launch.ray_job_staging import stage_working_dir
from llm.job import TrainJob
from ops.credentials import REDACTED, SECRETS_ENV


@pytest.fixture
def secret():
    return f"planted-{uuid.uuid4().hex}"


@pytest.fixture
def config_file(tmp_path, secret, monkeypatch):
    monkeypatch.setenv(SECRETS_ENV, "")  # load_config exports the credentials it holds: undone after the test
    path = tmp_path / "config.yaml"
    options = {
        "endpoint_url": "http://127.0.0.1:9000",
        "key": f"{secret}-key",
        "client_kwargs": {"region_name": "us-east-1", "aws_secret_access_key": secret},
    }
    path.write_text(
        yaml.safe_dump(
            {
                "run": {"name": "creds", "dir": "s3://bucket/run"},
                "data": {"inputs": ["s3://bucket/in/*.jsonl"], "output": "s3://bucket/data"},
                "train": {"micro_batch": 1, "global_batch": 64},
                "storage": {"options": options},
            }
        )
    )
    return path


def test_the_saved_config_shows_the_marker_and_the_environment_gives_the_credentials_back(
    config_file, secret, tmp_path, monkeypatch
):
    cfg = load_config(str(config_file))
    assert cfg.storage.options["client_kwargs"]["aws_secret_access_key"] == secret
    saved = cfg.to_yaml()
    assert secret not in saved
    options = yaml.safe_load(saved)["storage"]["options"]
    assert options["key"] == REDACTED and options["client_kwargs"]["aws_secret_access_key"] == REDACTED
    assert options["endpoint_url"] == "http://127.0.0.1:9000"
    # this process now carries them for whatever it starts
    assert json.loads(os.environ[SECRETS_ENV])["client_kwargs"]["aws_secret_access_key"] == secret

    (tmp_path / "saved.yaml").write_text(saved)
    assert load_config(str(tmp_path / "saved.yaml")).storage.options == cfg.storage.options

    monkeypatch.delenv(SECRETS_ENV)
    with pytest.raises(ConfigError) as e:
        load_config(str(tmp_path / "saved.yaml"))
    assert "storage.options.client_kwargs.aws_secret_access_key is redacted" in str(e.value)
    assert SECRETS_ENV in str(e.value)
    assert "\n" not in str(e.value)


def test_a_rank_job_file_holds_the_marker_and_the_rank_merges_the_credentials_back(config_file, secret, tmp_path, monkeypatch):
    cfg = load_config(str(config_file))
    job = cfg.train_job()
    job.save(str(tmp_path / "job.json"))
    assert secret not in (tmp_path / "job.json").read_text()
    assert secret not in json.dumps(job.shareable())
    assert TrainJob.load(str(tmp_path / "job.json")).storage_options == cfg.storage.options
    monkeypatch.delenv(SECRETS_ENV)
    with pytest.raises(ValueError, match="storage.options.client_kwargs.aws_secret_access_key is redacted"):
        TrainJob.load(str(tmp_path / "job.json"))


def test_rendered_scripts_manifests_and_job_packages_hold_no_credential(config_file, secret, tmp_path):
    cfg = load_config(str(config_file))
    for ray in (False, True):
        script = render_sbatch(cfg, SlurmOptions(nodes=2, gpus_per_node=0, ray=ray))
        assert secret not in script and REDACTED in script
    manifest = render_rayjob(cfg, KubernetesOptions(nodes=1, gpus_per_node=1, image="kiln:1", secret="s3-credentials"))
    assert secret not in manifest and REDACTED in manifest
    stage_working_dir(str(tmp_path / "package"), cfg)
    for root, _, files in os.walk(tmp_path / "package"):
        for name in files:
            assert secret.encode() not in (tmp_path / root / name).read_bytes()


def test_a_k8s_render_without_a_secret_for_the_credentials_is_one_line_naming_the_nested_key(config_file):
    cfg = load_config(str(config_file))
    with pytest.raises(ConfigError, match=r"^storage.options.client_kwargs.aws_secret_access_key looks like a credential"):
        render_rayjob(cfg, KubernetesOptions(nodes=1, gpus_per_node=1, image="kiln:1"))
    cfg.storage.options["client_kwargs"].pop("aws_secret_access_key")
    with pytest.raises(ConfigError, match=r"^storage.options.key looks like a credential: .*--secret NAME"):
        render_rayjob(cfg, KubernetesOptions(nodes=1, gpus_per_node=1, image="kiln:1"))


@pytest.mark.parametrize(
    "override, key",
    [
        ("run.dir=s3://AKIA:s3cr3t@bucket/run", "run.dir"),
        ("data.inputs=[https://user:pw@host/corpus.jsonl]", "data.inputs.0"),
        ("data.output=s3://user@bucket/data", "data.output"),
    ],
)
def test_a_url_with_user_info_outside_storage_options_is_refused_in_one_line(config_file, override, key):
    with pytest.raises(ConfigError, match=f"{key} is a URL with user info") as e:
        load_config(str(config_file), [override])
    assert "s3cr3t" not in str(e.value) and "pw@" not in str(e.value)


def test_credentials_in_the_environment_reach_a_config_that_names_none(tmp_path, monkeypatch):
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump({"data": {"inputs": ["in/*.jsonl"], "output": "data"}}))
    monkeypatch.setenv(SECRETS_ENV, json.dumps({"client_kwargs": {"aws_session_token": "t"}}))
    assert load_config(str(path)).storage.options == {"client_kwargs": {"aws_session_token": "t"}}
