"""Redis restarted in the middle of a run: workers reconnect and the run finishes, each prompt once."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage_backends import LocalStorage
from tests.fixtures.redis_server import RedisServer
from tests.integration.workers import StartWorker, assert_exactly_one_valid_result, submit, wait_until, write_prompts
from tokenlens.results import RunStore

pytestmark = pytest.mark.integration


def test_run_survives_a_redis_restart(
    tmp_path: Path, tiny_llama_dir: Path, private_redis: RedisServer, start_worker: StartWorker
) -> None:
    broker_url = private_redis.url(0)
    results = tmp_path / "results"
    ids = [f"p{i:03d}" for i in range(24)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", len(ids))
    workers = [start_worker(tiny_llama_dir, broker_url, name=f"w{i}", wait=False) for i in range(2)]
    for worker in workers:
        worker.wait_ready()
    submit(
        prompts,
        tiny_llama_dir,
        results,
        broker_url,
        "restart",
        "--batch-size",
        "4",
        "--engine",
        "inseq",
        "--max-new-tokens",
        "16",
    )
    store = RunStore(LocalStorage(results), "restart")

    wait_until(lambda: len(store.ids("results")) >= 4, 60, "the run to be under way", poll_s=0.05)
    private_redis.restart(down_s=3.0)
    assert len(store.ids("results")) < len(ids), "the run finished before Redis restarted; nothing was tested"

    wait_until(lambda: len(store.ids("results")) == len(ids), 120, "the run to finish after the restart")
    assert_exactly_one_valid_result(store, ids)
    assert store.ids("errors") == set()
    for worker in workers:
        assert worker.process.poll() is None, f"a worker died with the broker:\n{worker.log()[-2000:]}"
    # No prompt was written twice: each was reported done by exactly one worker.
    done = [pid for worker in workers for pid in worker.done_ids()]
    assert len(done) == len(set(done))
