"""Two real workers turn a 30-prompt run into exactly one valid result per prompt; status tells the truth."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from storage_backends import LocalStorage
from tests.integration.workers import (
    TOKENLENS,
    StartWorker,
    assert_exactly_one_valid_result,
    assert_queue_drained,
    finished_count,
    run_cli,
    submit,
    wait_until,
    worker_env,
    write_prompts,
)
from tokenlens.queue import queue_name
from tokenlens.results import RunStore

pytestmark = pytest.mark.integration


def test_two_workers_finish_a_30_prompt_run(
    tmp_path: Path, tiny_llama_dir: Path, broker_url: str, start_worker: StartWorker
) -> None:
    results = tmp_path / "results"
    prompts = write_prompts(tmp_path / "prompts.jsonl", 30)
    workers = [start_worker(tiny_llama_dir, broker_url, name=f"w{i}", wait=False) for i in range(2)]
    for worker in workers:
        worker.wait_ready()

    output = submit(
        prompts, tiny_llama_dir, results, broker_url, "two-workers", "--batch-size", "3", "--max-new-tokens", "6"
    )
    assert "30 prompts in 10 batches" in output
    watch_argv = [
        "status",
        "two-workers",
        "--results",
        str(results),
        "--broker",
        broker_url,
        "--watch",
        "--interval",
        "0.5",
    ]
    watch = subprocess.Popen(
        [TOKENLENS, *watch_argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=worker_env()
    )
    store = RunStore(LocalStorage(results), "two-workers")
    wait_until(lambda: finished_count(store) == 30, 120, "30 results")
    watch_output, _ = watch.communicate(timeout=30)
    assert watch.returncode == 0
    assert "30/30" in watch_output

    ids = [f"p{i:03d}" for i in range(30)]
    assert_exactly_one_valid_result(store, ids)
    assert store.ids("errors") == set()
    # Each worker did part of the run, and no prompt was written by both.
    done = [worker.done_ids() for worker in workers]
    assert all(done), "both workers should have taken batches"
    assert sorted(done[0] + done[1]) == ids
    wait_until(lambda: not redis.Redis.from_url(broker_url).hlen("unacked"), 10, "the last ack")
    assert_queue_drained(broker_url, "two-workers", queue_name(str(tiny_llama_dir)))

    status = run_cli("status", "two-workers", "--results", str(results), "--broker", broker_url)
    assert status.returncode == 0, status.stderr
    assert "done       30/30" in status.stdout
    assert "queued     0 prompts" in status.stdout
    assert "throughput" in status.stdout and "ETA        finished" in status.stdout

    # Redis flushed: storage alone still knows what is done, and status says where its numbers come from.
    redis.Redis.from_url(broker_url).flushdb()
    flushed = run_cli("status", "two-workers", "--results", str(results), "--broker", broker_url)
    assert flushed.returncode == 0, flushed.stderr
    assert "done       30/30" in flushed.stdout
    assert "no record of this run" in flushed.stdout and "storage alone" in flushed.stdout
    unreachable = run_cli("status", "two-workers", "--results", str(results), "--broker", "redis://127.0.0.1:1/0")
    assert unreachable.returncode == 0, unreachable.stderr
    assert "done       30/30" in unreachable.stdout and "unreachable" in unreachable.stdout
