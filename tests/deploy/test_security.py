"""Every deploy file runs its workers the way docs/deploy.md's "Securing the queue" says: each worker writes only to
its deployment's results location (--results), serves metrics beyond loopback only where probes or Prometheus need
it (--metrics-host), and takes TOKENLENS_QUEUE_KEY from a secret (never a literal in a committed file)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.deploy_files import (
    ENV_EXAMPLE,
    REPO,
    SBATCH,
    SYSTEMD_UNIT,
    compose_config,
    compose_workers,
    container_env,
    expand_k8s_args,
    expand_unit_command,
    k8s_config_values,
    k8s_objects,
    parse_cli,
    pod_spec,
    read_env_file,
    read_unit,
    unit_value,
    worker_deployments,
)

GUIDE = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
QUEUE_KEY = "TOKENLENS_QUEUE_KEY"


def _worker_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(deployment)["containers"]
    (container,) = [c for c in containers if c.get("args", [])[:1] == ["worker"]]
    return container


def _worker_command_lines() -> list[tuple[str, list[str], str]]:
    """(where, worker argv, the deployment's TOKENLENS_RESULTS) for compose, Kubernetes and systemd."""
    lines = []
    env = read_env_file(ENV_EXAMPLE)
    for name, service in compose_workers(compose_config()).items():
        lines.append((f"compose {name}", service["command"], env["TOKENLENS_RESULTS"]))
    for path, deployment in worker_deployments():
        container = _worker_container(deployment)
        values = container_env(container)
        lines.append((path.name, expand_k8s_args(container["args"], values), k8s_config_values()["TOKENLENS_RESULTS"]))
    argv = expand_unit_command(unit_value(read_unit(SYSTEMD_UNIT), "Service", "ExecStart"), "0", env)
    lines.append(("systemd", argv[1:], env["TOKENLENS_RESULTS"]))
    return lines


@pytest.mark.parametrize(("where", "argv", "results"), _worker_command_lines(), ids=lambda v: str(v)[:30])
def test_every_worker_writes_only_to_its_results_and_says_where_metrics_listen(
    where: str, argv: list[str], results: str
) -> None:
    params = parse_cli(argv).params
    assert params["results_urls"] == (results,), f"{where}: --results must be the deployment's TOKENLENS_RESULTS"
    # Probes (kubelet, Docker) and Prometheus reach the worker from outside its loopback.
    assert params["metrics_host"] == "0.0.0.0", f"{where}: --metrics-host 0.0.0.0 where probes need it"


def test_the_slurm_script_passes_results_and_metrics_host_to_every_worker() -> None:
    text = SBATCH.read_text(encoding="utf-8")
    (worker_args,) = re.findall(r"local -a worker_args=\(([^)]*)\)", text)
    words = worker_args.split()
    assert words[words.index("--results") + 1] == '"$TOKENLENS_RESULTS"'
    assert words[words.index("--metrics-host") + 1] == "0.0.0.0"
    assert QUEUE_KEY in text, "the script's header says the env file holds the queue key"


def test_kubernetes_workers_take_the_queue_key_from_the_secret_and_need_it() -> None:
    assert QUEUE_KEY not in k8s_config_values(), "a secret never goes in the ConfigMap"
    for path, deployment in worker_deployments():
        entries = {e["name"]: e for e in _worker_container(deployment).get("env", [])}
        reference = entries[QUEUE_KEY]["valueFrom"]["secretKeyRef"]
        assert reference["name"] == "tokenlens-credentials" and reference["key"] == QUEUE_KEY, path
        assert reference.get("optional", False) is False, f"{path}: a worker must not start without the key"
        assert "value" not in entries[QUEUE_KEY]
    assert not [path for path, doc in k8s_objects() if doc["kind"] == "Secret"], "no committed Secret holds it"


def test_compose_slurm_and_systemd_read_the_queue_key_from_their_secret_env_file() -> None:
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    assert f"# {QUEUE_KEY}=" in example and QUEUE_KEY not in read_env_file(ENV_EXAMPLE), "named, never set"
    assert "openssl rand -hex 32" in example
    for name, service in compose_workers(compose_config()).items():
        assert service["env_file"] == ".env" and QUEUE_KEY not in service.get("environment", {}), name
    unit = SYSTEMD_UNIT.read_text(encoding="utf-8")
    assert QUEUE_KEY in unit and unit_value(read_unit(SYSTEMD_UNIT), "Service", "EnvironmentFile").startswith("/etc/")


@pytest.mark.parametrize(
    "phrase",
    [
        QUEUE_KEY,
        "openssl rand -hex 32",
        "requirepass",
        "rediss://",
        "--metrics-host",
        "--results",
        "tokenlens:dead_letters",
        "TriggerAuthentication",
    ],
)
def test_the_guide_explains_how_to_lock_the_queue_down(phrase: str) -> None:
    section = GUIDE.split("## Securing the queue", 1)
    assert len(section) == 2, 'docs/deploy.md has a "## Securing the queue" section'
    assert phrase in section[1].split("\n## ", 1)[0], phrase
