"""A worker lost for good costs time, not results: its batch comes back within the lease, and nothing is written twice.

Also the other side of the lease: a live worker whose batch runs longer than
the lease keeps it (heartbeats), so no second worker starts the same batch.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from storage_backends import LocalStorage
from tests.integration.workers import (
    TEST_LEASE_TIMEOUT_S,
    StartWorker,
    assert_exactly_one_valid_result,
    submit,
    wait_until,
    write_prompts,
)
from tokenlens.queue import RunKeys
from tokenlens.results import RunStore

pytestmark = pytest.mark.integration

#: Inseq attributes one prompt per engine call (about a second each for the tiny model at 32 tokens): slow enough
#: to catch a batch in the middle.
SLOW_BATCH = ("--engine", "inseq", "--max-new-tokens", "32")


def _batch_in_flight(broker_url: str, run_id: str) -> str:
    ids = redis.Redis.from_url(broker_url).hkeys(RunKeys(run_id).in_flight)
    assert len(ids) == 1, f"expected one batch in flight, got {ids}"
    assert isinstance(ids[0], bytes)
    return ids[0].decode()


def test_worker_killed_mid_batch_loses_nothing(
    tmp_path: Path, tiny_llama_dir: Path, broker_url: str, start_worker: StartWorker
) -> None:
    results = tmp_path / "results"
    ids = [f"p{i:03d}" for i in range(8)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", len(ids))
    workers = [start_worker(tiny_llama_dir, broker_url, name=f"w{i}", wait=False) for i in range(2)]
    for worker in workers:
        worker.wait_ready()
    submit(prompts, tiny_llama_dir, results, broker_url, "lost", "--batch-size", "8", *SLOW_BATCH)
    store = RunStore(LocalStorage(results), "lost")

    # Kill the worker holding the (only) batch once it has written part of it.
    wait_until(lambda: 2 <= len(store.ids("results")) < len(ids), 60, "the batch to be half done", poll_s=0.05)
    batch_id = _batch_in_flight(broker_url, "lost")
    holder, other = workers if workers[0].received(batch_id) else workers[::-1]
    assert holder.received(batch_id) and not other.received(batch_id)
    holder.kill_tree()
    killed_at = time.monotonic()
    written_before = {pid: store.storage.get(store.key("results", pid)) for pid in store.ids("results")}
    assert 2 <= len(written_before) < len(ids)

    # The lease runs out and the other worker takes the same batch, within TOKENLENS_LEASE_TIMEOUT.
    wait_until(lambda: other.received(batch_id), TEST_LEASE_TIMEOUT_S + 10, "the batch to come back")
    redelivered_after_s = time.monotonic() - killed_at
    assert redelivered_after_s <= TEST_LEASE_TIMEOUT_S + 2, f"redelivered after {redelivered_after_s:.1f}s"
    wait_until(lambda: len(store.ids("results")) == len(ids), 60, "all results")
    wait_until(lambda: bool(other.batches()), 10, "the batch log line")

    assert_exactly_one_valid_result(store, ids)
    (row,) = other.batches()
    # What the killed worker wrote was skipped, not rewritten; the rest was written once, by the other worker.
    assert sorted(row["skipped"]) == sorted(written_before)
    assert sorted(row["done"]) == sorted(set(ids) - set(written_before))
    for pid, data in written_before.items():
        assert store.storage.get(store.key("results", pid)) == data
    assert store.ids("errors") == set()


def test_a_batch_longer_than_the_lease_stays_with_its_worker(
    tmp_path: Path, tiny_llama_dir: Path, broker_url: str, start_worker: StartWorker
) -> None:
    # The shortest lease allowed and a batch several times longer (about 0.45 s per prompt on a quiet 2-core
    # machine, more on a busy one), so the batch outlasts the lease whatever the machine's speed.
    lease_s = 4
    results = tmp_path / "results"
    ids = [f"p{i:03d}" for i in range(30)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", len(ids))
    env = {"TOKENLENS_LEASE_TIMEOUT": str(lease_s)}
    workers = [start_worker(tiny_llama_dir, broker_url, name=f"w{i}", env=env, wait=False) for i in range(2)]
    for worker in workers:
        worker.wait_ready()
    started = time.monotonic()
    submit(prompts, tiny_llama_dir, results, broker_url, "long", "--batch-size", str(len(ids)), *SLOW_BATCH)
    store = RunStore(LocalStorage(results), "long")
    wait_until(lambda: len(store.ids("results")) == len(ids), 240, "all results")
    took_s = time.monotonic() - started
    wait_until(lambda: sum(len(w.batches()) for w in workers) == 1, 10, "the batch log line")

    assert took_s > 1.5 * lease_s, f"the batch took {took_s:.1f}s; it must outlast the {lease_s}s lease to test it"
    # Exactly one worker ever received the batch: the heartbeat kept its lease alive.
    received = [w for w in workers if "] received" in w.log()]
    assert len(received) == 1
    (row,) = received[0].batches()
    assert sorted(row["done"]) == ids and row["skipped"] == []
    assert_exactly_one_valid_result(store, ids)
