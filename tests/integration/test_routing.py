"""Two models' runs at once go to two queues, and each worker takes only its own model's batches.

The GPT-2 worker is started with Celery's own CLI (`celery -A worker.app worker`), as some operators prefer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from storage_backends import LocalStorage
from tests.integration.workers import StartWorker, assert_exactly_one_valid_result, submit, wait_until, write_prompts
from tokenlens.queue import queue_name
from tokenlens.results import RunStore

pytestmark = pytest.mark.integration


def test_two_models_two_queues(
    tmp_path: Path, tiny_llama_dir: Path, tiny_gpt2_dir: Path, broker_url: str, start_worker: StartWorker
) -> None:
    results = tmp_path / "results"
    llama_ids = [f"l{i:03d}" for i in range(6)]
    gpt2_ids = [f"g{i:03d}" for i in range(6)]
    submit(
        write_prompts(tmp_path / "llama.jsonl", 6, prefix="l"),
        tiny_llama_dir,
        results,
        broker_url,
        "run-llama",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "4",
    )
    submit(
        write_prompts(tmp_path / "gpt2.jsonl", 6, prefix="g"),
        tiny_gpt2_dir,
        results,
        broker_url,
        "run-gpt2",
        "--batch-size",
        "3",
        "--max-new-tokens",
        "4",
        "--format",
        "compact",
    )
    client = redis.Redis.from_url(broker_url)
    llama_queue, gpt2_queue = queue_name(str(tiny_llama_dir)), queue_name(str(tiny_gpt2_dir))
    assert llama_queue != gpt2_queue
    assert (client.llen(llama_queue), client.llen(gpt2_queue)) == (3, 2)

    llama_worker = start_worker(tiny_llama_dir, broker_url, name="llama", wait=False)
    gpt2_worker = start_worker(tiny_gpt2_dir, broker_url, name="gpt2", via_celery=True, wait=False)
    llama_worker.wait_ready()
    gpt2_worker.wait_ready()
    llama_store = RunStore(LocalStorage(results), "run-llama")
    gpt2_store = RunStore(LocalStorage(results), "run-gpt2")
    wait_until(lambda: len(llama_store.ids("results")) == 6 and len(gpt2_store.ids("results")) == 6, 90, "both runs")

    assert_exactly_one_valid_result(llama_store, llama_ids)
    assert_exactly_one_valid_result(gpt2_store, gpt2_ids)
    wait_until(lambda: len(llama_worker.batches()) == 3 and len(gpt2_worker.batches()) == 2, 10, "the batch log lines")
    assert {row["run"] for row in llama_worker.batches()} == {"run-llama"}
    assert {row["run"] for row in gpt2_worker.batches()} == {"run-gpt2"}
    # Each result was made by its own model.
    assert llama_store.read_result("l000").metadata.llm_id == str(tiny_llama_dir)
    assert gpt2_store.read_result("g000").metadata.llm_id == str(tiny_gpt2_dir)
    # `submit --format compact` travels in the batch message: the worker wrote gzip files, plain JSON otherwise.
    assert LocalStorage(results).get("runs/run-gpt2/results/g000.json")[:2] == b"\x1f\x8b"
    assert LocalStorage(results).get("runs/run-llama/results/l000.json")[:1] == b"{"
    assert gpt2_store.read_manifest().result_format == "compact"
