"""deploy/prometheus/: the scrape config reaches every compose worker on its metrics port, and every series the
alerts use is one a real worker's metrics registry exports."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.deploy_files import (
    PROMETHEUS_ALERTS,
    PROMETHEUS_CONFIG,
    SBATCH,
    compose_config,
    compose_workers,
    load_yaml_documents,
    option_value,
)
from worker.metrics import METRIC_NAMES, WorkerMetrics


@pytest.fixture(scope="module")
def scrape_job() -> dict[str, Any]:
    (config,) = load_yaml_documents(PROMETHEUS_CONFIG)
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "tokenlens-workers"]
    assert isinstance(job, dict)
    return job


def _exported_series() -> set[str]:
    """Every sample name a worker's /metrics shows once it has done a batch."""
    metrics = WorkerMetrics()
    metrics.observe_batch(done=3, failed=1, tokens=90, elapsed_s=2.5, gpu_memory_bytes=1 << 30)
    metrics.model_load.set(12.0)
    text = metrics.render().decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_scrapes_every_compose_worker_on_its_metrics_port(scrape_job: dict[str, Any]) -> None:
    targets = {target for group in scrape_job["static_configs"] for target in group["targets"]}
    workers = compose_workers(compose_config())
    expected = {f"{name}:{option_value(service['command'], '--metrics-port')}" for name, service in workers.items()}
    assert targets == expected
    assert scrape_job["metrics_path"] == "/metrics"


def test_slurm_target_files_land_where_prometheus_looks(scrape_job: dict[str, Any]) -> None:
    (file_sd,) = scrape_job["file_sd_configs"]
    (pattern,) = file_sd["files"]
    assert pattern.endswith("/*.json")
    # The Slurm script writes <TOKENLENS_PROMETHEUS_SD_DIR>/<name>.json (tests/deploy/test_slurm.py runs it).
    assert re.search(r'sd_file="\$TOKENLENS_PROMETHEUS_SD_DIR/[^"/]+\.json"', SBATCH.read_text(encoding="utf-8"))


def test_alerts_use_only_series_a_worker_exports(scrape_job: dict[str, Any]) -> None:
    (rules,) = load_yaml_documents(PROMETHEUS_ALERTS)
    exported = _exported_series()
    assert {name.removesuffix("_total") for name in METRIC_NAMES} <= {
        name.removesuffix("_total").removesuffix("_count").removesuffix("_sum").removesuffix("_bucket")
        for name in exported
    }
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert alerts
    for alert in alerts:
        assert alert["alert"].startswith("TokenLens") and alert["annotations"]["summary"]
        used = set(re.findall(r"\btokenlens_[a-z_]+", alert["expr"]))
        assert used <= exported, f"{alert['alert']} uses series no worker exports: {used - exported}"
        for job in re.findall(r'job="([^"]+)"', alert["expr"]):
            assert job == scrape_job["job_name"]
    (config,) = load_yaml_documents(PROMETHEUS_CONFIG)
    assert config["rule_files"] == [PROMETHEUS_ALERTS.name]
