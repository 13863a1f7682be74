"""The documents of a Kubernetes job, built as data and written by a YAML serializer: a ConfigMap carrying the
resolved config and a KubeRay RayJob (ray.io/v1) running `kiln run` on it.

No value is pasted into YAML text, so no value (a quote, a newline, ``---``) can change the manifest's shape.
"""

from __future__ import annotations

from typing import Any

import yaml

from launch.render.options import KubernetesOptions

CONFIG_MOUNT = "/etc/kiln"
POD_UID = 1000  # the unprivileged user of the image (see Dockerfile)
HEAD_CPUS = 4
HEAD_MEMORY = "16Gi"
GPU_RESOURCE = "nvidia.com/gpu"


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": POD_UID,
        "runAsGroup": POD_UID,
        "fsGroup": POD_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container(name: str, o: KubernetesOptions, cpu: int, memory: str, gpus: int = 0, credentials: bool = False) -> dict:
    resources = {"cpu": str(cpu), "memory": memory, **({GPU_RESOURCE: gpus} if gpus else {})}
    container: dict[str, Any] = {"name": name, "image": o.image}
    if credentials and o.secret:
        container["envFrom"] = [{"secretRef": {"name": o.secret}}]
    container["resources"] = {"requests": dict(resources), "limits": dict(resources)}
    container["securityContext"] = {"allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]}}
    return container


def _memory_volume() -> dict[str, Any]:
    return {"name": "dshm", "emptyDir": {"medium": "Memory"}}


def rayjob_documents(
    name: str, config_yaml: str, o: KubernetesOptions, backoff_limit: int, ray_version: str
) -> list[dict[str, Any]]:
    """[ConfigMap, RayJob] for the job ``name`` running ``config_yaml``."""
    labels = {"app.kubernetes.io/name": "kiln", "app.kubernetes.io/instance": name}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-config", "namespace": o.namespace, "labels": dict(labels)},
        "data": {"config.yaml": config_yaml},
    }
    head = _container("ray-head", o, HEAD_CPUS, HEAD_MEMORY, credentials=True)
    head["volumeMounts"] = [
        {"name": "kiln-config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    worker = _container("ray-worker", o, o.cpus_per_node, o.memory_per_node, o.gpus_per_node, credentials=True)
    worker["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    ray_job = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "namespace": o.namespace, "labels": dict(labels)},
        "spec": {
            # A retry runs the same config against the same run URL, so it resumes from the last committed checkpoint.
            "entrypoint": f"kiln run {CONFIG_MOUNT}/config.yaml",
            "backoffLimit": backoff_limit,
            "shutdownAfterJobFinishes": True,
            "submitterPodTemplate": {
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": _pod_security(),
                    "containers": [_container("ray-job-submitter", o, 1, "1Gi")],
                }
            },
            "rayClusterSpec": {
                "rayVersion": ray_version,
                "enableInTreeAutoscaling": False,
                "authOptions": {"mode": "token"},
                "headGroupSpec": {
                    # ClusterIP: the dashboard and Ray's ports are reachable from inside the cluster only.
                    "serviceType": "ClusterIP",
                    # The head runs the driver; ranks and data tasks run on the workers.
                    "rayStartParams": {"num-cpus": "0"},
                    "template": {
                        "metadata": {"labels": dict(labels)},
                        "spec": {
                            "securityContext": _pod_security(),
                            "containers": [head],
                            "volumes": [{"name": "kiln-config", "configMap": {"name": f"{name}-config"}}, _memory_volume()],
                        },
                    },
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "gpu-workers" if o.gpus_per_node else "cpu-workers",
                        "replicas": o.nodes,
                        "minReplicas": o.nodes,
                        "maxReplicas": o.nodes,
                        "rayStartParams": {},
                        "template": {
                            "metadata": {"labels": dict(labels)},
                            "spec": {
                                "securityContext": _pod_security(),
                                "containers": [worker],
                                "volumes": [_memory_volume()],
                            },
                        },
                    }
                ],
            },
        },
    }
    return [config_map, ray_job]


class _ManifestDumper(yaml.SafeDumper):
    """yaml.safe_dump's dumper, writing multi-line strings (the carried config) as literal blocks where YAML allows."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_ManifestDumper.add_representer(str, _represent_str)


def manifest_text(documents: list[dict[str, Any]], header: str) -> str:
    """``documents`` as one multi-document YAML after the comment line ``header``."""
    body = yaml.dump_all(documents, Dumper=_ManifestDumper, sort_keys=False, explicit_start=False, allow_unicode=False)
    return f"# {header}\n{body}"
