"""deploy/systemd/tokenlens-worker@.service: instance = GPU index, restart on failure, environment from a file,
a SIGTERM stop with enough time, and an ExecStart the real CLI accepts for every GPU."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.deploy_files import (
    ENV_EXAMPLE,
    SYSTEMD_UNIT,
    expand_unit_command,
    option_value,
    parse_cli,
    read_env_file,
    read_unit,
    systemd_seconds,
    unit_value,
)
from worker.lease import SHUTDOWN_GRACE_S

UNIT = read_unit(SYSTEMD_UNIT)
GPU_INSTANCES = [str(gpu) for gpu in range(10)]


def test_restarts_on_failure_with_environment_from_a_file() -> None:
    assert unit_value(UNIT, "Service", "Restart") == "on-failure"
    assert unit_value(UNIT, "Service", "EnvironmentFile").startswith("/etc/tokenlens/")
    assert unit_value(UNIT, "Install", "WantedBy") == "multi-user.target"
    # A crash loop stops after a few tries instead of hammering the GPU and the logs forever.
    assert int(unit_value(UNIT, "Unit", "StartLimitBurst")) >= 1


def test_stops_with_sigterm_and_waits_at_least_the_worker_grace() -> None:
    assert unit_value(UNIT, "Service", "KillSignal") == "SIGTERM"
    # SIGTERM to the main process only: the worker coordinates its own shutdown.
    assert unit_value(UNIT, "Service", "KillMode") == "mixed"
    assert systemd_seconds(unit_value(UNIT, "Service", "TimeoutStopSec")) >= SHUTDOWN_GRACE_S


@pytest.mark.parametrize("instance", GPU_INSTANCES)
def test_exec_start_is_accepted_by_the_cli_for_each_gpu(instance: str) -> None:
    env = read_env_file(ENV_EXAMPLE)
    argv = expand_unit_command(unit_value(UNIT, "Service", "ExecStart"), instance, env)
    assert Path(argv[0]).name == "tokenlens"
    context = parse_cli(argv[1:])
    assert context.params["gpu"] == (int(instance),), "the instance name is the GPU index (one GPU each)"
    assert context.params["model"] == env["TOKENLENS_MODEL"]
    assert 1024 < context.params["metrics_port"] < 65536


def test_each_gpu_gets_its_own_metrics_port() -> None:
    env = read_env_file(ENV_EXAMPLE)
    command = unit_value(UNIT, "Service", "ExecStart")
    ports = [option_value(expand_unit_command(command, gpu, env), "--metrics-port") for gpu in GPU_INSTANCES]
    assert len(set(ports)) == len(ports)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    # systemd checks that ExecStart's program exists: point it at this checkout's real `tokenlens`.
    executable = unit_value(UNIT, "Service", "ExecStart").split()[0]
    local = Path(sys.executable).parent / "tokenlens"
    text = SYSTEMD_UNIT.read_text(encoding="utf-8").replace(executable, str(local))
    (tmp_path / SYSTEMD_UNIT.name).write_text(text, encoding="utf-8")
    instance = tmp_path / SYSTEMD_UNIT.name.replace("@.", "@0.")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, timeout=60, check=False
    )
    problems = [line for line in result.stderr.splitlines() if SYSTEMD_UNIT.name.split("@")[0] in line]
    assert result.returncode == 0 and not problems, result.stderr
