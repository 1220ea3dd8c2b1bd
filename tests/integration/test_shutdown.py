"""SIGTERM: the worker finishes the prompt in hand, hands the rest of its batch back uncharged, and exits."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from storage_backends import LocalStorage
from tests.integration.workers import StartWorker, assert_exactly_one_valid_result, submit, wait_until, write_prompts
from tokenlens.queue import RunKeys, queue_name
from tokenlens.results import RunStore
from worker.lease import SHUTDOWN_GRACE_S

pytestmark = pytest.mark.integration


def test_sigterm_hands_back_the_rest_of_the_batch(
    tmp_path: Path, tiny_llama_dir: Path, broker_url: str, start_worker: StartWorker
) -> None:
    results = tmp_path / "results"
    ids = [f"p{i:03d}" for i in range(12)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", len(ids))
    first = start_worker(tiny_llama_dir, broker_url, name="first")
    # Inseq attributes one prompt per engine call, so the worker can stop between prompts.
    submit(
        prompts,
        tiny_llama_dir,
        results,
        broker_url,
        "term",
        "--batch-size",
        "12",
        "--engine",
        "inseq",
        "--max-new-tokens",
        "32",
    )
    store = RunStore(LocalStorage(results), "term")
    wait_until(lambda: len(store.ids("results")) >= 2, 60, "the batch to be under way", poll_s=0.05)

    status = first.terminate(timeout_s=SHUTDOWN_GRACE_S)
    assert status == 0, first.log()[-2000:]
    done_before = store.ids("results")
    assert 2 <= len(done_before) < len(ids), "the batch finished before SIGTERM; nothing was tested"
    (row,) = first.batches()
    assert sorted(row["done"]) == sorted(done_before)
    handed_back = sorted(set(ids) - done_before)
    assert sorted(row["retry"]) == handed_back

    # The rest is back on the queue as one new batch, the original batch is acknowledged,
    # and the handed-back prompts were not charged an attempt.
    client = redis.Redis.from_url(broker_url)
    keys = RunKeys("term")
    assert client.llen(queue_name(str(tiny_llama_dir))) == 1
    assert [int(v) for v in client.hvals(keys.queued)] == [len(handed_back)]
    assert client.hlen(keys.in_flight) == 0 and client.hlen("unacked") == 0
    attempts = client.hgetall(keys.attempts)
    assert all(int(attempts.get(pid.encode(), 0)) == 0 for pid in handed_back)

    second = start_worker(tiny_llama_dir, broker_url, name="second")
    wait_until(lambda: len(store.ids("results")) == len(ids), 60, "the handed-back prompts")
    assert_exactly_one_valid_result(store, ids)
    wait_until(lambda: bool(second.batches()), 10, "the second worker's log line")
    assert sorted(second.done_ids()) == handed_back
