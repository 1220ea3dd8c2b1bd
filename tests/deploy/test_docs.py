"""docs/deploy.md: its commands are accepted by the real CLI, and the numbers and names it quotes are the ones
the deploy files and the worker use."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.deploy.deploy_files import (
    DEPLOY,
    REPO,
    SBATCH,
    SYSTEMD_UNIT,
    compose_config,
    compose_seconds,
    compose_workers,
    parse_cli,
    pod_spec,
    read_unit,
    systemd_seconds,
    unit_value,
    worker_deployments,
)
from worker.lease import MIN_LEASE_TIMEOUT_S, SHUTDOWN_GRACE_S
from worker.metrics import METRIC_NAMES

GUIDE = REPO / "docs" / "deploy.md"
TEXT = GUIDE.read_text(encoding="utf-8")


def _fenced_commands() -> list[str]:
    """Shell commands in the guide's ```bash blocks, with backslash continuations joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", TEXT, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    return commands


def _tokenlens_argvs() -> list[list[str]]:
    """The `tokenlens ...` argument lists in the guide's commands, in `docker run IMAGE ...` and
    `docker compose run --rm cli ...` too."""
    argvs = []
    for command in _fenced_commands():
        words = shlex.split(command, comments=True)
        images = [n for n, word in enumerate(words) if word.startswith("tokenlens:")]
        if words[:1] == ["tokenlens"]:
            argvs.append(words[1:])
        elif words[:2] == ["docker", "run"] and images:
            argvs.append(words[images[0] + 1 :])
        elif "run" in words and "cli" in words and words[words.index("cli") - 1] == "--rm":
            argvs.append(words[words.index("cli") + 1 :])
    return argvs


def test_the_guide_has_commands_to_check() -> None:
    commands = {argv[0] for argv in _tokenlens_argvs()}
    assert {"submit", "status", "worker"} <= commands


@pytest.mark.parametrize("argv", _tokenlens_argvs(), ids=lambda argv: " ".join(argv[:2]))
def test_every_tokenlens_command_in_the_guide_is_accepted(argv: list[str]) -> None:
    parse_cli(argv)


def test_every_deploy_file_is_described() -> None:
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.name not in (".gitignore", "Dockerfile.dockerignore"):
            relative = path.relative_to(REPO).as_posix()
            named = relative in TEXT or f"{path.parent.relative_to(REPO).as_posix()}/" in TEXT
            assert named, f"docs/deploy.md never mentions {relative}"


def test_quoted_queue_names_are_the_real_ones() -> None:
    from tokenlens.queue import queue_name

    quoted = re.findall(r"queue_name\(\"([^\"]+)\"\)", TEXT)
    assert quoted
    for model in quoted:
        assert f"on queue {queue_name(model)}" in TEXT, model


def test_every_metric_is_documented() -> None:
    for name in METRIC_NAMES:
        assert f"`{name}`" in TEXT, name


def test_quoted_stop_times_match_the_files() -> None:
    assert f"`SHUTDOWN_GRACE_S` ({SHUTDOWN_GRACE_S} s" in TEXT
    assert f"it may not go below {MIN_LEASE_TIMEOUT_S:g} s" in TEXT
    grace_periods = {compose_seconds(s["stop_grace_period"]) for s in compose_workers(compose_config()).values()}
    grace_periods |= {float(pod_spec(d)["terminationGracePeriodSeconds"]) for _p, d in worker_deployments()}
    grace_periods.add(systemd_seconds(unit_value(read_unit(SYSTEMD_UNIT), "Service", "TimeoutStopSec")))
    (grace_s,) = grace_periods
    assert f"give {grace_s:g} s" in TEXT and f"`TimeoutStopSec={grace_s:g}`" in TEXT
    signal = re.search(r"#SBATCH --signal=(B:TERM@\d+)", SBATCH.read_text(encoding="utf-8"))
    assert signal
    quoted = re.findall(r"B:TERM@\d+", TEXT)
    assert quoted and set(quoted) == {signal.group(1)}
