"""deploy/compose.yaml and deploy/.env.example: Redis that keeps its queue, one GPU per worker, clean stops,
command lines the real CLI accepts, and credentials only from the uncommitted env file."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from tests.deploy.deploy_files import (
    COMPOSE_FILE,
    DEPLOY,
    ENV_EXAMPLE,
    REPO,
    MissingVariableError,
    compose_config,
    compose_seconds,
    compose_workers,
    interpolate,
    load_yaml_documents,
    option_value,
    parse_cli,
    read_env_file,
)
from worker.lease import SHUTDOWN_GRACE_S

CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "TOKENLENS_QUEUE_KEY")


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config()


@pytest.fixture(scope="module")
def workers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose_workers(config)
    assert found, "compose.yaml runs no `tokenlens worker` service"
    return found


def test_redis_persists_and_never_evicts(config: dict[str, Any]) -> None:
    command = config["services"]["redis"]["command"]
    pairs = dict(zip(command[1::2], command[2::2], strict=False))
    assert command[0] == "redis-server"
    assert pairs["--appendonly"] == "yes"
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert any(volume.endswith(":/data") for volume in config["services"]["redis"]["volumes"])


def test_every_worker_reserves_exactly_one_gpu_of_its_own(workers: dict[str, dict[str, Any]]) -> None:
    claimed: list[str] = []
    for name, service in workers.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1, f"{name}: one device reservation"
        (device,) = devices
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert "count" not in device, f"{name}: device_ids, not a count"
        assert len(device["device_ids"]) == 1, f"{name} must reserve exactly one GPU"
        claimed.append(str(device["device_ids"][0]))
        # Inside the container the reserved GPU is the only one, so CUDA numbers it 0.
        assert option_value(service["command"], "--gpu") == "0", f"{name}: --gpu 0 (the one GPU it sees)"
    assert len(set(claimed)) == len(claimed), f"two workers share a GPU: {claimed}"
    assert sorted(claimed, key=int) == [str(i) for i in range(len(claimed))]


def test_worker_command_lines_are_accepted_by_the_cli(workers: dict[str, dict[str, Any]]) -> None:
    model = read_env_file(ENV_EXAMPLE)["TOKENLENS_MODEL"]
    for name, service in workers.items():
        context = parse_cli(service["command"])
        assert context.params["model"] == model, name
        assert context.params["metrics_port"] == int(option_value(service["command"], "--metrics-port") or 0)


def test_ui_and_cli_services_run_real_commands(config: dict[str, Any]) -> None:
    ui = config["services"]["ui"]
    context = parse_cli(ui["command"])
    assert context.params["host"] == "0.0.0.0", "inside a container the UI must listen beyond loopback"
    published = [str(port).rsplit(":", 1)[-1] for port in ui["ports"]]
    assert str(context.params["port"]) in published
    assert config["services"]["cli"]["profiles"] == ["cli"]


def test_stop_signal_and_grace_cover_the_worker_shutdown(workers: dict[str, dict[str, Any]]) -> None:
    for name, service in workers.items():
        assert service["stop_signal"] == "SIGTERM", name
        assert compose_seconds(service["stop_grace_period"]) >= SHUTDOWN_GRACE_S, name
        # init: a real PID 1 that forwards SIGTERM to the worker and reaps what it leaves behind.
        assert service["init"] is True, name


def test_worker_healthcheck_uses_the_metrics_port_and_healthz(workers: dict[str, dict[str, Any]]) -> None:
    for name, service in workers.items():
        port = option_value(service["command"], "--metrics-port")
        probe = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/healthz" in probe, name


def test_results_volume_is_shared_by_workers_and_read_only_for_the_ui(
    config: dict[str, Any], workers: dict[str, dict[str, Any]]
) -> None:
    results = read_env_file(ENV_EXAMPLE)["TOKENLENS_RESULTS"]
    for name, service in workers.items():
        assert f"results:{results}" in service["volumes"], name
    assert f"results:{results}:ro" in config["services"]["ui"]["volumes"]


def test_optional_services_sit_behind_profiles(config: dict[str, Any]) -> None:
    assert config["services"]["flower"]["profiles"] == ["flower"]
    assert config["services"]["prometheus"]["profiles"] == ["monitoring"]
    assert "./prometheus:/etc/prometheus:ro" in config["services"]["prometheus"]["volumes"]
    always_on = [name for name, service in config["services"].items() if "profiles" not in service]
    assert set(always_on) == {"redis", "worker-gpu0", "ui"}


def test_profiles_named_in_env_example_exist(config: dict[str, Any]) -> None:
    profiles = {profile for service in config["services"].values() for profile in service.get("profiles", [])}
    documented = set(re.findall(r"\b(gpus-\d+|flower|monitoring)\b", ENV_EXAMPLE.read_text(encoding="utf-8")))
    assert documented and documented <= profiles


def test_every_tokenlens_service_builds_the_one_image(config: dict[str, Any]) -> None:
    services = {name: s for name, s in config["services"].items() if s.get("image", "").startswith("tokenlens:")}
    assert set(services) >= {"worker-gpu0", "ui", "cli"}
    for name, service in services.items():
        build = service["build"]
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert context == REPO, name
        assert (context / build["dockerfile"]).is_file(), name
    assert len({service["image"] for service in services.values()}) == 1


def test_required_variables_stop_compose_with_a_message() -> None:
    values = read_env_file(ENV_EXAMPLE)
    del values["TOKENLENS_MODEL"]
    with pytest.raises(MissingVariableError, match="TOKENLENS_MODEL"):
        compose_config(values)
    assert interpolate("${X:-fallback}", {"X": ""}) == "fallback"
    assert interpolate("$${X}", {"X": "y"}) == "${X}"


def test_credentials_only_come_from_the_env_file(config: dict[str, Any]) -> None:
    raw = load_yaml_documents(COMPOSE_FILE)[0]
    for name, service in raw["services"].items():
        environment = service.get("environment", {})
        for key in CREDENTIAL_KEYS:
            assert key not in environment, f"{name} sets {key} in compose.yaml; it belongs in deploy/.env"
    for name in compose_workers(config):
        assert config["services"][name]["env_file"] == ".env"
    # The example names every credential but sets none of them.
    example = read_env_file(ENV_EXAMPLE)
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "TOKENLENS_QUEUE_KEY"):
        assert key not in example and f"# {key}=" in text


def _git_ignores(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", path], cwd=REPO, capture_output=True, text=True, check=False
    )


def test_the_filled_in_env_file_is_ignored_by_git() -> None:
    ignored = _git_ignores("deploy/.env")
    assert ignored.returncode == 0, "deploy/.env would be committed"
    assert ignored.stdout.startswith("deploy/.gitignore:")
    # ...while the example stays in git.
    assert _git_ignores("deploy/.env.example").returncode == 1
    assert (DEPLOY / ".gitignore").is_file()
