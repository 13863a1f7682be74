"""Kubernetes: a KubeRay RayJob (ray.io/v1) that runs `kiln run` on a Ray cluster of GPU pods, plus the
ConfigMap holding the resolved config it runs."""

from __future__ import annotations

from importlib.metadata import version

import yaml

from launch.config import ConfigError, KilnConfig
from launch.render.job_config import job_config, job_name
from launch.render.options import KubernetesOptions
from launch.render.policy import manifest_violations
from launch.render.rayjob import manifest_text, rayjob_documents
from ops.credentials import SECRETS_ENV, credential_keys


def _check_storage(cfg: KilnConfig, secret: str | None) -> None:
    """Pods share no folder and a retried job starts on fresh pods: the run and its data live on object storage,
    and credentials come from a Secret, never from the config (which the ConfigMap carries redacted)."""
    for key, url in (("run.dir", cfg.run_url), ("data.output", cfg.data_url)):
        if "://" not in url:
            raise ConfigError(
                f"{key}: {url!r} is a local path; on Kubernetes give an object-store URL (s3://bucket/...), "
                "so that every pod and every retry of the job sees the same files"
            )
    credentials = credential_keys(cfg.storage.options)
    if credentials and not secret:
        raise ConfigError(
            f"{credentials[0]} looks like a credential: the ConfigMap carries it redacted, so put the credentials in a "
            f"Kubernetes Secret (as AWS_* variables, or as {SECRETS_ENV}, a JSON object of the secret storage options) "
            "and pass --secret NAME (its keys become environment variables)"
        )


def render_rayjob(cfg: KilnConfig, options: KubernetesOptions) -> str:
    """A ConfigMap and a RayJob as one multi-document YAML, checked against Kiln's manifest policy."""
    _check_storage(cfg, options.secret)
    job = job_config(cfg, options, launcher="ray")
    documents = rayjob_documents(job_name(job), job.to_yaml(), options, job.train.max_restarts, version("ray"))
    header = f"Kiln run {job.run.name} on Kubernetes (KubeRay), rendered by `kiln launch k8s`. Apply with `kubectl apply -f`."
    text = manifest_text(documents, header)
    violations = manifest_violations(list(yaml.safe_load_all(text)), options.gpus_per_node)
    if violations:
        raise RuntimeError(f"rendered manifest breaks Kiln's policy: {'; '.join(violations)}")
    return text
