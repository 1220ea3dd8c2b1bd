"""Reading the deploy files the way their tools do: YAML, compose interpolation, systemd units, Dockerfile
instructions, and the `tokenlens` command lines inside them, parsed by the real click commands."""

from __future__ import annotations

import json
import re
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
K8S = DEPLOY / "k8s"
SBATCH = DEPLOY / "slurm" / "worker.sbatch"
SYSTEMD_UNIT = DEPLOY / "systemd" / "tokenlens-worker@.service"
DOCKERFILE = DEPLOY / "Dockerfile"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
PROMETHEUS_ALERTS = DEPLOY / "prometheus" / "alerts.yml"


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def load_yaml_documents(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


# --- environment files ----------------------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as docker compose, systemd's EnvironmentFile and `set -a; source` all read them."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            raise ValueError(f"{path}:{number}: not a KEY=VALUE line: {raw!r}")
        values[key] = value
    return values


_COMPOSE_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class MissingVariableError(ValueError):
    """A ${VAR:?message} with VAR unset: docker compose refuses to start with that message."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Docker compose's variable interpolation ($VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $$)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3) or ""
        value = env.get(name)
        # With a colon, an empty value counts as unset.
        present = bool(value) if operator in (":-", ":?") else value is not None
        if operator in (":-", "-"):
            return value if present and value is not None else argument
        if operator in (":?", "?"):
            if not present or value is None:
                raise MissingVariableError(f"{name}: {argument}")
            return value
        return value or ""

    return _COMPOSE_VARIABLE.sub(replace, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def compose_config(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """deploy/compose.yaml as compose sees it: YAML anchors merged, variables from .env.example filled in."""
    values = read_env_file(ENV_EXAMPLE) if env is None else dict(env)
    documents = load_yaml_documents(COMPOSE_FILE)
    assert len(documents) == 1, "compose.yaml holds one document"
    config = interpolate_tree(documents[0], values)
    assert isinstance(config, dict)
    return config


def compose_workers(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run `tokenlens worker`."""
    return {
        name: service
        for name, service in config["services"].items()
        if isinstance(service.get("command"), list) and service["command"][:1] == ["worker"]
    }


# --- Kubernetes -----------------------------------------------------------------------------------------------


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in k8s_files() for doc in load_yaml_documents(path)]


def k8s_kind(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path, doc in k8s_objects() if doc.get("kind") == kind]


def k8s_config_values() -> dict[str, str]:
    """The data of every ConfigMap the pods read with envFrom."""
    values: dict[str, str] = {}
    for _path, doc in k8s_kind("ConfigMap"):
        for key, value in (doc.get("data") or {}).items():
            values[key] = str(value)
    return values


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def container_env(container: Mapping[str, Any]) -> dict[str, str]:
    """What $(VAR) in a container's args expands to: envFrom ConfigMaps, then plain env values."""
    values: dict[str, str] = {}
    config = k8s_config_values()
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            values.update(config)
    for entry in container.get("env", []):
        if "value" in entry:
            values[entry["name"]] = str(entry["value"])
    return values


def expand_k8s_args(args: list[str], env: Mapping[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion in command/args; an unknown $(VAR) stays as written, as in Kubernetes."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg) for arg in args]


def worker_deployments() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path, doc in k8s_kind("Deployment")
        if any(c.get("args", [])[:1] == ["worker"] for c in pod_spec(doc)["containers"])
    ]


# --- systemd --------------------------------------------------------------------------------------------------


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as sections of (key, value) in order (keys may repeat, as Environment= does)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path}: {line!r} comes before any [Section]"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: {line!r} is not Key=Value"
        current.append((key.strip(), value.strip()))
    return sections


def unit_value(unit: Mapping[str, list[tuple[str, str]]], section: str, key: str) -> str:
    values = [value for name, value in unit.get(section, []) if name == key]
    assert values, f"[{section}] has no {key}="
    return values[-1]


def systemd_seconds(value: str) -> float:
    """systemd's time spans: '180', '180s', '3min', '2min 30s', '1h'."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "ms": 0.001}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == value.replace(" ", ""), f"not a time span: {value!r}"
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


def expand_unit_command(command: str, instance: str, env: Mapping[str, str]) -> list[str]:
    """ExecStart= as systemd runs it for `instance`: %i, then ${VAR} (one word) and $VAR (split)."""
    words = shlex.split(command.replace("%i", instance).replace("%%", "%"))
    expanded: list[str] = []
    for word in words:
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            expanded.extend(env.get(whole.group(1), "").split())
            continue
        expanded.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return expanded


# --- Dockerfile -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    arguments: str


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped; `stage` counts FROM lines."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, f"{path} ends inside a line continuation"
    instructions: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword, arguments.strip()))
    return instructions


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) ENTRYPOINT/CMD; fails on the shell form, which would not get signals."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


# --- the tokenlens CLI ----------------------------------------------------------------------------------------


def parse_cli(argv: list[str]) -> click.Context:
    """Parse `tokenlens <argv>` with the real CLI: the subcommand must be registered and accept every argument.

    Raises click.UsageError (or BadParameter) exactly where `tokenlens` itself would refuse the line.
    """
    from tokenlens.cli import cli

    root = click.Context(cli, info_name="tokenlens")
    name, *rest = argv
    command = cli.get_command(root, name)
    if command is None:
        raise click.UsageError(f"`tokenlens {name}` is not a command (or its module is not importable)")
    return command.make_context(name, list(rest), parent=root, resilient_parsing=False)


def compose_seconds(value: str | int | float) -> float:
    """Compose durations: '180s', '3m', '1m30s', '1h', or a bare number of seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a compose duration: {value!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def option_value(argv: list[str], option: str) -> str | None:
    """The value given to `option` in an argv list (`--opt V` or `--opt=V`); None if absent."""
    for index, word in enumerate(argv):
        if word == option and index + 1 < len(argv):
            return argv[index + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    return None


def free_port() -> int:
    """A TCP port nothing listens on right now, on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
