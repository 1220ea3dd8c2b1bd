"""A real worker serves Prometheus metrics (exactly worker.metrics.METRIC_NAMES) and /healthz on --metrics-port."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from storage_backends import LocalStorage
from tests.fixtures.redis_server import free_port
from tests.integration.workers import StartWorker, submit, wait_until, write_prompts
from tokenlens.results import RunStore
from worker.metrics import METRIC_NAMES

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_worker_metrics_endpoint(
    tmp_path: Path, tiny_llama_dir: Path, broker_url: str, start_worker: StartWorker
) -> None:
    port = free_port()
    worker = start_worker(tiny_llama_dir, broker_url, extra_args=("--metrics-port", str(port)))
    base = f"http://127.0.0.1:{port}"
    assert _get(f"{base}/healthz") == (200, "ok\n")

    status, text = _get(f"{base}/metrics")
    assert status == 200
    families = {family.name for family in text_string_to_metric_families(text)}
    # prometheus_client names counter families without their `_total` suffix.
    exposed = {f"{name}_total" if f"{name}_total" in METRIC_NAMES else name for name in families}
    assert exposed == set(METRIC_NAMES)
    assert _samples(text)["tokenlens_model_load_seconds"] > 0

    results = tmp_path / "results"
    submit(
        write_prompts(tmp_path / "prompts.jsonl", 5),
        tiny_llama_dir,
        results,
        broker_url,
        "metered",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "3",
    )
    store = RunStore(LocalStorage(results), "metered")
    wait_until(lambda: len(store.ids("results")) == 5, 60, "the run")
    wait_until(lambda: len(worker.batches()) == 3, 10, "the last batch to be counted")

    samples = _samples(_get(f"{base}/metrics")[1])
    assert samples["tokenlens_prompts_done_total"] == 5
    assert samples["tokenlens_prompts_failed_total"] == 0
    tokens = sum(len(store.read_result(pid).data.output_tokens) for pid in store.ids("results"))
    assert samples["tokenlens_tokens_attributed_total"] == tokens
    assert samples["tokenlens_batch_latency_seconds_count"] == 3
    assert samples["tokenlens_tokens_per_second"] > 0
    assert samples["tokenlens_gpu_memory_bytes"] == 0  # CPU worker

    # After SIGTERM the worker is no longer ready (orchestrators stop routing to it), then exits.
    assert worker.terminate(timeout_s=60) == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base}/healthz", timeout=2)
