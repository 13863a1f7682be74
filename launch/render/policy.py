"""Kiln's policy for the Kubernetes manifests it renders, checked on the parsed documents.

A manifest is exactly one ConfigMap (the config) and one RayJob; any other kind, or a second of either, is
refused, so nothing else (a Pod, a Service, a Secret) can ride along. Credentials reach pods only through a
named Secret (``envFrom`` / ``secretKeyRef``), never as inline values or Secret objects in the manifest;
every pod runs as a non-root user without privilege escalation; GPU workers declare their GPU limit; Ray
uses token authentication and neither its dashboard nor anything else is exposed outside the cluster.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

GPU_RESOURCE = "nvidia.com/gpu"
CREDENTIAL_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|CREDENTIAL|PRIVATE|(^|_)KEY($|_)", re.IGNORECASE)
EXTERNAL_SERVICE_TYPES = ("NodePort", "LoadBalancer")
ALLOWED_KINDS = ("ConfigMap", "RayJob")


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc.get("spec") or {}
    return spec.get("rayClusterSpec") or {}


def _pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(where, pod template, is a worker) for every pod a RayJob makes."""
    if "submitterPodTemplate" in (doc.get("spec") or {}):
        yield "submitter", doc["spec"]["submitterPodTemplate"], False
    cluster = _cluster_spec(doc)
    yield "head", (cluster.get("headGroupSpec") or {}).get("template") or {}, False
    for group in cluster.get("workerGroupSpecs") or []:
        yield f"worker group {group.get('groupName')}", group.get("template") or {}, True


def _container_violations(where: str, container: dict[str, Any], pod_security: dict[str, Any], gpus: int) -> Iterator[str]:
    name = f"{where} container {container.get('name')}"
    for env in container.get("env") or []:
        if "value" in env and CREDENTIAL_NAME.search(env.get("name", "")):
            yield f"{name}: env {env['name']} has an inline value; take it from a Secret (secretKeyRef or envFrom)"
    security = container.get("securityContext") or {}
    non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
    user = security.get("runAsUser", pod_security.get("runAsUser"))
    if non_root is not True or user == 0:
        yield f"{name}: must run as a non-root user (runAsNonRoot: true, runAsUser not 0)"
    if security.get("allowPrivilegeEscalation") is not False:
        yield f"{name}: must set allowPrivilegeEscalation: false"
    if security.get("privileged") is True:
        yield f"{name}: must not be privileged"
    limits = (container.get("resources") or {}).get("limits") or {}
    if gpus and str(limits.get(GPU_RESOURCE)) != str(gpus):
        yield f"{name}: needs the limit {GPU_RESOURCE}: {gpus}"


def manifest_violations(documents: list[dict[str, Any]], gpus_per_node: int) -> list[str]:
    """Every way ``documents`` break the policy, one line each; empty when they comply."""
    violations = []
    if not all(isinstance(doc, dict) for doc in documents):
        return ["every document must be a mapping"]
    kinds = sorted(str(doc.get("kind")) for doc in documents)
    if kinds != sorted(ALLOWED_KINDS):
        violations.append(f"the manifest must hold exactly one ConfigMap and one RayJob, not {', '.join(kinds) or 'nothing'}")
    for doc in documents:
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
        if kind == "Secret":
            violations.append(f"Secret {name}: the manifest must not carry credentials; pass an existing Secret's name")
        if kind == "Ingress" or (kind == "Service" and (doc.get("spec") or {}).get("type") in EXTERNAL_SERVICE_TYPES):
            violations.append(f"{kind} {name}: nothing may be exposed outside the cluster")
        if kind != "RayJob":
            continue
        cluster = _cluster_spec(doc)
        if (cluster.get("authOptions") or {}).get("mode") != "token":
            violations.append(f"{kind} {name}: Ray must use token authentication (authOptions: {{mode: token}})")
        if (cluster.get("headGroupSpec") or {}).get("serviceType", "ClusterIP") != "ClusterIP" or cluster.get("enableIngress"):
            violations.append(
                f"{kind} {name}: the Ray head and its dashboard must stay inside the cluster (ClusterIP, no ingress)"
            )
        for where, template, is_worker in _pod_templates(doc):
            pod = template.get("spec") or {}
            for container in pod.get("containers") or []:
                violations.extend(
                    _container_violations(
                        where, container, pod.get("securityContext") or {}, gpus_per_node if is_worker else 0
                    )
                )
    return violations
