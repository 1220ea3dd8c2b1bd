"""deploy/k8s/: one-GPU worker Deployments whose probes mean something, KEDA scaling on the exact queue list,
Redis that keeps its queue, the UI and its Service, and credentials only through Secret references."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.deploy.deploy_files import (
    K8S,
    REPO,
    container_env,
    dockerfile_instructions,
    expand_k8s_args,
    k8s_config_values,
    k8s_files,
    k8s_kind,
    k8s_objects,
    load_yaml_documents,
    option_value,
    parse_cli,
    pod_spec,
    worker_deployments,
)
from tokenlens.queue import queue_name
from worker.lease import SHUTDOWN_GRACE_S

CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "TOKENLENS_QUEUE_KEY")
#: Applied on their own: they need CRDs (Prometheus Operator) that a bare cluster lacks.
OPTIONAL_FILES = {"monitoring.yaml"}


def _worker_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(deployment)["containers"] if c.get("args", [])[:1] == ["worker"]]
    assert isinstance(container, dict)
    return container


def _worker_argv(deployment: dict[str, Any]) -> list[str]:
    container = _worker_container(deployment)
    return expand_k8s_args(container["args"], container_env(container))


def _named_port(container: dict[str, Any], name_or_number: str | int) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name_or_number]
    return int(port)


@pytest.fixture(scope="module")
def deployments() -> list[tuple[Any, dict[str, Any]]]:
    found = worker_deployments()
    assert found, "deploy/k8s has no worker Deployment"
    return found


def test_every_object_is_named_and_labelled() -> None:
    objects = k8s_objects()
    assert objects
    for path, doc in objects:
        assert doc.get("apiVersion") and doc.get("kind"), path
        assert doc["metadata"].get("name"), path
        assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "tokenlens", (path, doc["kind"])


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = load_yaml_documents(K8S / "kustomization.yaml")
    resources = set(kustomization["resources"])
    for resource in resources:
        assert (K8S / resource).is_file(), f"kustomization.yaml lists a missing file: {resource}"
    assert resources | OPTIONAL_FILES == {path.name for path in k8s_files()}
    assert kustomization["namespace"] == "tokenlens"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
def test_kustomize_renders_the_stack_offline() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], cwd=REPO, capture_output=True, text=True, check=False, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    documents = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    kinds = {doc["kind"] for doc in documents}
    assert {"Namespace", "ConfigMap", "StatefulSet", "Deployment", "Service", "ScaledObject"} <= kinds
    for doc in documents:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "tokenlens", doc["metadata"]["name"]
    images = {
        c["image"]
        for doc in documents
        if doc["kind"] == "Deployment"
        for c in doc["spec"]["template"]["spec"]["containers"]
    }
    assert all(not image.startswith("tokenlens:") for image in images), "the images override did not apply"


def test_each_worker_pod_asks_for_exactly_one_gpu(deployments: list[tuple[Any, dict[str, Any]]]) -> None:
    for path, deployment in deployments:
        gpus = []
        for container in pod_spec(deployment)["containers"]:
            resources = container.get("resources", {})
            limit = resources.get("limits", {}).get("nvidia.com/gpu")
            request = resources.get("requests", {}).get("nvidia.com/gpu", limit)
            assert request == limit, f"{path}: GPU request and limit differ"
            if limit is not None:
                gpus.append(int(limit))
        assert gpus == [1], f"{path}: one container with nvidia.com/gpu: 1"
        # The pod sees its one GPU as device 0.
        assert option_value(_worker_argv(deployment), "--gpu") == "0"


def test_worker_args_are_accepted_by_the_cli(deployments: list[tuple[Any, dict[str, Any]]]) -> None:
    for path, deployment in deployments:
        argv = _worker_argv(deployment)
        assert not any("$(" in arg for arg in argv), f"{path}: an args variable has no value: {argv}"
        context = parse_cli(argv)
        assert context.params["model"] == container_env(_worker_container(deployment))["TOKENLENS_MODEL"]
        assert context.params["metrics_port"] == _named_port(_worker_container(deployment), "metrics")


def test_termination_grace_covers_the_worker_shutdown(deployments: list[tuple[Any, dict[str, Any]]]) -> None:
    for path, deployment in deployments:
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= SHUTDOWN_GRACE_S, path


def test_probes_ask_the_worker_health_endpoint_on_its_metrics_port(
    deployments: list[tuple[Any, dict[str, Any]]],
) -> None:
    for path, deployment in deployments:
        container = _worker_container(deployment)
        metrics_port = int(option_value(_worker_argv(deployment), "--metrics-port") or 0)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            http = container[probe]["httpGet"]
            assert http["path"] == "/healthz", (path, probe)
            assert _named_port(container, http["port"]) == metrics_port, (path, probe)
        # The startup probe gives model download and load its own, longer budget.
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == metrics_port
        assert annotations["prometheus.io/path"] == "/metrics"


def test_keda_owns_the_replica_count(deployments: list[tuple[Any, dict[str, Any]]]) -> None:
    for path, deployment in deployments:
        assert "replicas" not in deployment["spec"], f"{path}: a fixed replica count fights KEDA"
        rolling = deployment["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxSurge"] == 0, f"{path}: a rollout must not need an extra GPU"


def test_each_worker_deployment_scales_on_its_own_queue(deployments: list[tuple[Any, dict[str, Any]]]) -> None:
    scaled = {doc["spec"]["scaleTargetRef"]["name"]: doc for _path, doc in k8s_kind("ScaledObject")}
    broker = urlparse(k8s_config_values()["TOKENLENS_BROKER_URL"])
    lease_timeout_s = int(k8s_config_values()["TOKENLENS_LEASE_TIMEOUT"])
    assert set(scaled) == {deployment["metadata"]["name"] for _path, deployment in deployments}
    for path, deployment in deployments:
        scaler = scaled[deployment["metadata"]["name"]]["spec"]
        assert scaler["minReplicaCount"] == 0
        assert scaler["maxReplicaCount"] >= 1
        assert scaler["cooldownPeriod"] >= lease_timeout_s, "scale to zero only after in-flight batches can finish"
        (trigger,) = scaler["triggers"]
        assert trigger["type"] == "redis"
        model = container_env(_worker_container(deployment))["TOKENLENS_MODEL"]
        # The exact Redis list the worker consumes, computed by the same function the worker uses.
        assert trigger["metadata"]["listName"] == queue_name(model), path
        host, port = trigger["metadata"]["address"].rsplit(":", 1)
        assert host.split(".")[0] == broker.hostname and int(port) == (broker.port or 6379)
        assert host.split(".")[1] == "tokenlens", "the namespace of kustomization.yaml"
        assert trigger["metadata"]["databaseIndex"] == (broker.path.lstrip("/") or "0")


def test_redis_keeps_its_queue_on_a_volume_and_never_evicts() -> None:
    (config,) = [doc for _path, doc in k8s_kind("ConfigMap") if doc["metadata"]["name"] == "tokenlens-redis-config"]
    settings = dict(line.split(None, 1) for line in config["data"]["redis.conf"].splitlines() if line[:1].isalpha())
    assert settings["appendonly"] == "yes"
    assert settings["maxmemory-policy"] == "noeviction"
    (statefulset,) = [doc for _path, doc in k8s_kind("StatefulSet")]
    (container,) = pod_spec(statefulset)["containers"]
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    claims = {claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]}
    assert mounts[settings["dir"]] in claims, "the append-only file must live on the persistent volume"
    maxmemory_gb = float(settings["maxmemory"].removesuffix("gb"))
    limit_gi = float(container["resources"]["limits"]["memory"].removesuffix("Gi"))
    assert maxmemory_gb < limit_gi, "Redis must hit maxmemory (and refuse writes) before the OOM killer"
    broker = urlparse(k8s_config_values()["TOKENLENS_BROKER_URL"])
    services = {doc["metadata"]["name"]: doc for _path, doc in k8s_kind("Service")}
    assert broker.port in [p["port"] for p in services[str(broker.hostname)]["spec"]["ports"]]


def test_ui_runs_the_real_command_behind_its_service() -> None:
    (ui,) = [doc for _path, doc in k8s_kind("Deployment") if doc["metadata"]["name"] == "tokenlens-ui"]
    (container,) = pod_spec(ui)["containers"]
    context = parse_cli(expand_k8s_args(container["args"], container_env(container)))
    assert context.params["results_url"].startswith("s3://"), "pods on different nodes share results through S3"
    assert context.params["host"] == "0.0.0.0"
    service = next(doc for _path, doc in k8s_kind("Service") if doc["metadata"]["name"] == "tokenlens-ui")
    (port,) = service["spec"]["ports"]
    assert _named_port(container, port["targetPort"]) == context.params["port"]
    assert service["spec"]["selector"].items() <= ui["spec"]["template"]["metadata"]["labels"].items()
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/api/health"
        assert _named_port(container, container[probe]["httpGet"]["port"]) == context.params["port"]


def test_pod_monitor_selects_the_worker_pods(deployments: list[tuple[Any, dict[str, Any]]]) -> None:
    (monitor,) = [doc for _path, doc in k8s_kind("PodMonitor")]
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    for _path, deployment in deployments:
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        assert _named_port(_worker_container(deployment), endpoint["port"])
    assert endpoint["path"] == "/metrics"


def test_pods_run_as_the_image_user() -> None:
    (user,) = [i.arguments for i in dockerfile_instructions() if i.keyword == "USER"]
    uid = int(user.split(":")[0])
    for path, doc in k8s_kind("Deployment"):
        security = pod_spec(doc)["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == uid, path


def test_credentials_only_come_from_secret_references() -> None:
    assert not k8s_kind("Secret"), "no Secret with values is committed; docs/deploy.md shows kubectl create secret"
    assert not set(CREDENTIAL_KEYS) & set(k8s_config_values())
    seen = set()
    for path, doc in k8s_objects():
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in pod_spec(doc)["containers"]:
            for entry in container.get("env", []):
                if entry["name"] in CREDENTIAL_KEYS:
                    assert "value" not in entry, f"{path}: {entry['name']} has a literal value"
                    reference = entry["valueFrom"]["secretKeyRef"]
                    assert reference["name"] == "tokenlens-credentials" and reference["key"] == entry["name"]
                    seen.add(entry["name"])
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "TOKENLENS_QUEUE_KEY"} <= seen
