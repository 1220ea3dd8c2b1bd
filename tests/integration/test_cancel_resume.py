"""Cancel marks a run cancelled: workers drop its queued batches and stop its running one; finished results stay;
resubmit resumes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from storage_backends import LocalStorage
from tests.integration.workers import (
    StartWorker,
    assert_exactly_one_valid_result,
    assert_queue_drained,
    run_cli,
    submit,
    wait_until,
    write_prompts,
)
from tokenlens.queue import RunKeys, queue_name
from tokenlens.results import RunStore

pytestmark = pytest.mark.integration


def test_cancel_then_resume(tmp_path: Path, tiny_llama_dir: Path, broker_url: str, start_worker: StartWorker) -> None:
    results = tmp_path / "results"
    ids = [f"p{i:03d}" for i in range(20)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", len(ids))
    settings = ("--batch-size", "2", "--engine", "inseq", "--max-new-tokens", "32")
    worker = start_worker(tiny_llama_dir, broker_url)
    submit(prompts, tiny_llama_dir, results, broker_url, "cancel-me", *settings)
    store = RunStore(LocalStorage(results), "cancel-me")
    client = redis.Redis.from_url(broker_url)
    queue = queue_name(str(tiny_llama_dir))
    wait_until(lambda: len(store.ids("results")) >= 3, 60, "the run to be under way", poll_s=0.05)

    cancelled = run_cli("cancel", "cancel-me", "--broker", broker_url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "removed" in cancelled.stdout and "Finished results stay" in cancelled.stdout
    assert client.hlen(RunKeys("cancel-me").queued) == 0, "nothing counted queued from the moment of the cancel"
    # Cancel scans no queue: the worker drops the run's batches as it pops them, in milliseconds each.
    wait_until(lambda: client.llen(queue) == 0, 30, "the worker to drop the cancelled batches")
    # The running batch stops at its next prompt; nothing of the run is picked up afterwards.
    wait_until(lambda: client.hlen(RunKeys("cancel-me").in_flight) == 0, 30, "the running batch to stop")
    done_at_cancel = store.ids("results")
    time.sleep(3)
    assert store.ids("results") == done_at_cancel
    assert 3 <= len(done_at_cancel) < len(ids)
    status = run_cli("status", "cancel-me", "--results", str(results), "--broker", broker_url)
    assert "cancelled" in status.stdout and f"done       {len(done_at_cancel)}/20" in status.stdout

    # Resubmitting the same run id queues only what has no result, and the run finishes.
    output = submit(prompts, tiny_llama_dir, results, broker_url, "cancel-me", *settings)
    assert f"resumed run cancel-me: {len(ids) - len(done_at_cancel)} prompts" in output
    wait_until(lambda: len(store.ids("results")) == len(ids), 90, "the resumed run to finish")
    assert_exactly_one_valid_result(store, ids)
    done = worker.done_ids()
    assert sorted(done) == ids, "every prompt written once, by the one worker"
    wait_until(lambda: client.hlen("unacked") == 0, 10, "the last ack")
    assert_queue_drained(broker_url, "cancel-me", queue)
