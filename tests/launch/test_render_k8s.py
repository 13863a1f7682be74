"""The Kubernetes renderer: every document it writes is valid for the API server (core kinds through
kubernetes-validate, the RayJob and its RayCluster spec through KubeRay's CRD schemas), and Kiln's
manifest policy rejects inline credentials, missing GPU limits and root pods."""

from __future__ import annotations

import copy
import gzip
from functools import lru_cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from launch.cli import main
from launch.config import ConfigError, load_config
from launch.render import KubernetesOptions, render_rayjob
from launch.render.policy import manifest_violations

SCHEMAS = Path(__file__).resolve().parents[2].parent / "shared" / "k8s-schemas"
K8S_CONFIG = {"run": {"dir": "s3://b/run"}, "data": {"output": "s3://b/data"}, "train": {"micro_batch": 1, "global_batch": 64}}


def strict(schema):
    """A CRD schema as the API server applies it with strict field validation: unknown fields are errors."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@lru_cache(maxsize=None)
def crd_schema(kind: str) -> dict:
    path = SCHEMAS / f"ray.io_{kind.lower()}s.yaml.gz"
    if not path.exists():
        pytest.fail(f"KubeRay CRD schema {path} is missing (the shared folder beside the repository holds it)")
    with gzip.open(path, "rt") as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return strict(version["schema"]["openAPIV3Schema"])


@lru_cache(maxsize=None)
def crd_validator(kind: str, part: str | None = None) -> jsonschema.Draft7Validator:
    """A validator of a ray.io kind, or of one top-level part of it (``spec``)."""
    schema = crd_schema(kind)
    return jsonschema.Draft7Validator(schema["properties"][part] if part else schema)


def validate(documents: list[dict]) -> None:
    """Raise unless every document is valid: core kinds strictly, ray.io kinds against the CRDs."""
    for doc in documents:
        if doc["apiVersion"] == "ray.io/v1":
            crd_validator(doc["kind"]).validate(doc)
            if doc["kind"] == "RayJob":
                crd_validator("RayCluster", "spec").validate(doc["spec"]["rayClusterSpec"])
        else:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "run": {"name": "Llama_7B.run", "dir": "s3://bucket/runs/7b"},
                "data": {"inputs": ["s3://bucket/raw/*.jsonl.gz"], "output": "s3://bucket/data/7b"},
                "train": {"nproc": 2, "max_restarts": 3, "micro_batch": 1, "global_batch": 256},
            }
        )
    )
    return load_config(str(path))


def rendered(cfg, **options) -> list[dict]:
    return list(yaml.safe_load_all(render_rayjob(cfg, KubernetesOptions(**{"image": "registry.example/kiln:1.0", **options}))))


def worker_group(docs):
    return docs[1]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]


def test_every_rendered_document_is_valid_for_kubernetes_and_kuberay(config):
    docs = rendered(config, nodes=4, gpus_per_node=8, namespace="llm", secret="s3-credentials")
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayJob"]
    validate(docs)
    cpu_docs = rendered(config, nodes=2, gpus_per_node=0)
    validate(cpu_docs)
    assert "nvidia.com/gpu" not in worker_group(cpu_docs)["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_the_validation_rejects_what_the_api_server_would(config):
    docs = rendered(config, nodes=1, gpus_per_node=8)
    typo = copy.deepcopy(docs)
    typo[1]["spec"]["shutdownAfterJobFinish"] = True
    with pytest.raises(jsonschema.ValidationError):
        validate(typo)
    bad_configmap = copy.deepcopy(docs)
    bad_configmap[0]["data"]["config.yaml"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad_configmap)


def test_the_rayjob_runs_kiln_run_on_the_configmaps_config_with_gpu_workers(config):
    configmap, job = rendered(config, nodes=4, gpus_per_node=8, namespace="llm")
    shipped = yaml.safe_load(configmap["data"]["config.yaml"])
    assert shipped["train"]["launcher"] == "ray" and shipped["train"]["nodes"] == 4 and shipped["train"]["nproc"] == 8
    assert shipped["run"]["dir"] == "s3://bucket/runs/7b"
    assert job["metadata"]["name"] == "kiln-llama-7b-run" and job["metadata"]["namespace"] == "llm"
    assert job["spec"]["entrypoint"] == "kiln run /etc/kiln/config.yaml"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["backoffLimit"] == 3
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["volumes"][0]["configMap"]["name"] == configmap["metadata"]["name"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in head["volumes"]
    group = worker_group([configmap, job])
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert set(worker["resources"]["requests"]) >= {"cpu", "memory"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in worker["volumeMounts"]


def test_the_same_config_renders_the_same_job_name_so_a_retry_resumes_the_same_run(config):
    first, second = rendered(config, gpus_per_node=8), rendered(config, gpus_per_node=8)
    assert first == second


def test_credentials_come_only_from_the_named_secret(config):
    docs = rendered(config, nodes=2, gpus_per_node=8, secret="s3-credentials")
    head = docs[1]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    containers = head["containers"] + worker_group(docs)["template"]["spec"]["containers"]
    for container in containers:
        assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
        assert "env" not in container
    assert "Secret" not in [d["kind"] for d in docs]


def test_the_rendered_manifest_complies_with_the_policy(config):
    assert manifest_violations(rendered(config, nodes=2, gpus_per_node=8, secret="s3-credentials"), 8) == []


def violations_after(config, change) -> list[str]:
    docs = rendered(config, nodes=2, gpus_per_node=8)
    change(docs)
    return manifest_violations(docs, gpus_per_node=8)


def worker_container(docs):
    return worker_group(docs)["template"]["spec"]["containers"][0]


def test_an_inline_secret_value_fails_the_policy(config):
    def inline(docs):
        worker_container(docs)["env"] = [{"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"}]

    assert any("AWS_SECRET_ACCESS_KEY has an inline value" in v for v in violations_after(config, inline))

    def secret_object(docs):
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"}, "stringData": {"key": "x"}})

    assert any("Secret s3" in v for v in violations_after(config, secret_object))

    def from_secret(docs):
        worker_container(docs)["env"] = [
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}}
        ]

    assert violations_after(config, from_secret) == []


def test_a_missing_gpu_limit_fails_the_policy(config):
    def drop_limit(docs):
        del worker_container(docs)["resources"]["limits"]["nvidia.com/gpu"]

    assert any("needs the limit nvidia.com/gpu: 8" in v for v in violations_after(config, drop_limit))


def test_a_root_or_privileged_pod_fails_the_policy(config):
    def root(docs):
        worker_group(docs)["template"]["spec"]["securityContext"]["runAsUser"] = 0

    assert any("must run as a non-root user" in v for v in violations_after(config, root))

    def no_non_root(docs):
        del docs[1]["spec"]["submitterPodTemplate"]["spec"]["securityContext"]["runAsNonRoot"]

    assert any("submitter container" in v and "non-root" in v for v in violations_after(config, no_non_root))

    def escalation(docs):
        worker_container(docs)["securityContext"]["allowPrivilegeEscalation"] = True

    assert any("allowPrivilegeEscalation: false" in v for v in violations_after(config, escalation))

    def privileged(docs):
        worker_container(docs)["securityContext"]["privileged"] = True

    assert any("must not be privileged" in v for v in violations_after(config, privileged))


def test_an_exposed_dashboard_or_ray_without_token_auth_fails_the_policy(config):
    def load_balancer(docs):
        docs[1]["spec"]["rayClusterSpec"]["headGroupSpec"]["serviceType"] = "LoadBalancer"

    assert any("must stay inside the cluster" in v for v in violations_after(config, load_balancer))

    def no_auth(docs):
        docs[1]["spec"]["rayClusterSpec"]["authOptions"] = {"mode": "disabled"}

    assert any("token authentication" in v for v in violations_after(config, no_auth))


def test_a_local_run_folder_or_a_credential_in_the_config_is_refused(config):
    local = config.model_copy(update={"run": config.run.model_copy(update={"dir": "runs/7b"})})
    with pytest.raises(ConfigError, match="run.dir: 'runs/7b' is a local path"):
        render_rayjob(local, KubernetesOptions(gpus_per_node=8, image="kiln:1"))
    leaky = config.model_copy(update={"storage": config.storage.model_copy(update={"options": {"secret": "x"}})})
    with pytest.raises(ConfigError, match="storage.options.secret looks like a credential"):
        render_rayjob(leaky, KubernetesOptions(gpus_per_node=8, image="kiln:1"))


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--gpus-per-node", "8"], "--image is required"),
        (["--nodes", "0", "--gpus-per-node", "8", "--image", "kiln:1"], "--nodes: must be at least 1"),
        (["--gpus-per-node", "-1", "--image", "kiln:1"], "--gpus-per-node: must be at least 0"),
        (
            ["--gpus-per-node", "8", "--image", "kiln:1", "--namespace", "Team_A"],
            "--namespace: 'Team_A' is not a Kubernetes name",
        ),
        (["--gpus-per-node", "8", "--image", "kiln:1", "-o", "nowhere/job.yaml"], "folder nowhere does not exist"),
    ],
)
def test_bad_input_to_kiln_launch_k8s_is_one_line(tmp_path, capsys, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(K8S_CONFIG))
    code = main(["launch", "k8s", str(path), *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("kiln: error: ") and fragment in err


def test_the_cli_writes_the_manifest_to_a_file(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(K8S_CONFIG))
    target = tmp_path / "job.yaml"
    assert main(["launch", "k8s", str(path), "--gpus-per-node", "8", "--image", "kiln:1", "-o", str(target)]) == 0
    validate(list(yaml.safe_load_all(target.read_text())))


def test_pods_run_as_the_unprivileged_user_of_the_image(config):
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    user = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")][-1]
    pod = rendered(config, gpus_per_node=8)[1]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert user == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"


def test_any_document_beside_the_configmap_and_the_rayjob_fails_the_policy(config):
    privileged_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "securityContext": {"privileged": True}}]},
    }
    assert any(
        "exactly one ConfigMap and one RayJob" in v for v in violations_after(config, lambda d: d.append(privileged_pod))
    )

    def second_rayjob(docs):
        docs.append(copy.deepcopy(docs[1]))

    assert any("not ConfigMap, RayJob, RayJob" in v for v in violations_after(config, second_rayjob))
    assert any("exactly one ConfigMap" in v for v in violations_after(config, lambda docs: docs.pop(0)))
