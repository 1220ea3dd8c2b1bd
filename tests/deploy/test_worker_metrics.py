"""A real `tokenlens worker` process, started with the arguments deploy/compose.yaml gives it, serves the health
endpoint the probes ask for and the metrics Prometheus scrapes, and stops on SIGTERM within the grace period."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.deploy_files import REPO, compose_config, compose_workers, free_port, option_value
from worker.lease import SHUTDOWN_GRACE_S
from worker.metrics import METRIC_NAMES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Importing torch and transformers on two busy cores, then loading a tiny model.
READY_TIMEOUT_S = 300


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _compose_worker_argv(model: str, metrics_port: int) -> list[str]:
    """worker-gpu0's command from compose.yaml, on this CPU-only machine: its model and port swapped, no --gpu."""
    command = list(compose_workers(compose_config())["worker-gpu0"]["command"])
    command[command.index("--model") + 1] = model
    command[command.index("--metrics-port") + 1] = str(metrics_port)
    gpu = command.index("--gpu")
    del command[gpu : gpu + 2]
    return [*command, "--device", "cpu"]


def test_real_worker_serves_health_and_the_named_metrics(
    tiny_llama_dir: Path, redis_server: str, tmp_path: Path
) -> None:
    metrics_port = free_port()
    argv = _compose_worker_argv(str(tiny_llama_dir), metrics_port)
    assert option_value(argv, "--metrics-port") == str(metrics_port)
    env = {
        **os.environ,
        "TOKENLENS_BROKER_URL": f"{redis_server}/14",
        "TOKENLENS_RESULTS": str(tmp_path / "results"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        # `python -m tokenlens` from the checkout is the console script's code path, and finds this tree's
        # packages even where an older editable install predates some of them.
        worker = subprocess.Popen(
            [sys.executable, "-m", "tokenlens", *argv], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        status = 0
        while time.monotonic() < deadline and worker.poll() is None:
            try:
                status, _body = _get(f"http://127.0.0.1:{metrics_port}/healthz")
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, f"/healthz never answered 200; worker log:\n{log_path.read_text()}"

        status, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        families = list(text_string_to_metric_families(text))
        names = {family.name for family in families} | {s.name for f in families for s in f.samples}
        missing = [name for name in METRIC_NAMES if name not in names]
        assert not missing, f"/metrics lacks {missing}:\n{text}"
        (load_time,) = [s.value for f in families for s in f.samples if s.name == "tokenlens_model_load_seconds"]
        assert load_time > 0, "the model load time is measured, not left at zero"

        stopped_at = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        returncode = worker.wait(timeout=SHUTDOWN_GRACE_S)
        assert returncode == 0, f"worker exited {returncode} after SIGTERM; log:\n{log_path.read_text()}"
        assert time.monotonic() - stopped_at < SHUTDOWN_GRACE_S
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)
