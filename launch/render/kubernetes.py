"""Kubernetes: a KubeRay RayJob (ray.io/v1) that runs `kiln run` on a Ray cluster of GPU pods, plus the
ConfigMap holding the resolved config it runs."""

from __future__ import annotations

import re
from importlib.metadata import version

import yaml

from launch.config import ConfigError, KilnConfig
from launch.render.job_config import job_config, job_name
from launch.render.options import KubernetesOptions
from launch.render.policy import manifest_violations
from launch.render.rayjob import manifest_text, rayjob_documents

CREDENTIAL_KEY = re.compile(r"secret|password|token|credential|private|(^|_)key$", re.IGNORECASE)


def _check_storage(cfg: KilnConfig) -> None:
    """Pods share no folder and a retried job starts on fresh pods: the run and its data live on object storage,
    and credentials come from a Secret, never from the config (which a ConfigMap carries in plain text)."""
    for key, url in (("run.dir", cfg.run_url), ("data.output", cfg.data_url)):
        if "://" not in url:
            raise ConfigError(
                f"{key}: {url!r} is a local path; on Kubernetes give an object-store URL (s3://bucket/...), "
                "so that every pod and every retry of the job sees the same files"
            )
    for key in cfg.storage.options:
        if CREDENTIAL_KEY.search(key):
            raise ConfigError(
                f"storage.options.{key} looks like a credential: keep it out of the config and put it in a "
                "Kubernetes Secret passed with --secret NAME (its keys become environment variables)"
            )


def render_rayjob(cfg: KilnConfig, options: KubernetesOptions) -> str:
    """A ConfigMap and a RayJob as one multi-document YAML, checked against Kiln's manifest policy."""
    _check_storage(cfg)
    job = job_config(cfg, options, launcher="ray")
    documents = rayjob_documents(job_name(job), job.to_yaml(), options, job.train.max_restarts, version("ray"))
    header = f"Kiln run {job.run.name} on Kubernetes (KubeRay), rendered by `kiln launch k8s`. Apply with `kubectl apply -f`."
    text = manifest_text(documents, header)
    violations = manifest_violations(list(yaml.safe_load_all(text)), options.gpus_per_node)
    if violations:
        raise RuntimeError(f"rendered manifest breaks Kiln's policy: {'; '.join(violations)}")
    return text
