"""Poison prompts end as error records while the rest of their batch finishes.

Two kinds: one the engine refuses for good (longer than the model's context),
and one that kills every worker that tries it, which must still end as an error
after TOKENLENS_MAX_ATTEMPTS tries, counted in Redis across the crashes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from storage_backends import LocalStorage
from tests.integration.workers import StartWorker, assert_exactly_one_valid_result, submit, wait_until, write_prompts
from tokenlens.queue import RunKeys
from tokenlens.results import RunStore
from tokenlens.settings import ENV_VARS

pytestmark = pytest.mark.integration


def test_a_prompt_longer_than_the_context_becomes_an_error(
    tmp_path: Path, tiny_llama_dir: Path, broker_url: str, start_worker: StartWorker
) -> None:
    results = tmp_path / "results"
    # The tiny model's context is 256 tokens.
    too_long: dict[str, object] = {"id": "too-long", "prompt": "many words " * 400}
    prompts = write_prompts(tmp_path / "prompts.jsonl", 7, extra=[too_long])
    start_worker(tiny_llama_dir, broker_url)
    submit(prompts, tiny_llama_dir, results, broker_url, "poison", "--batch-size", "4", "--max-new-tokens", "4")
    store = RunStore(LocalStorage(results), "poison")
    wait_until(lambda: len(store.ids("results") | store.ids("errors")) == 8, 60, "every prompt to finish")

    assert_exactly_one_valid_result(store, [f"p{i:03d}" for i in range(7)])
    assert store.ids("errors") == {"too-long"}
    error = store.read_error("too-long")
    assert error.error_type == "PromptTooLongError"
    assert error.run_id == "poison" and error.prompt == too_long["prompt"]


def test_a_prompt_that_kills_its_worker_ends_as_an_error_after_max_attempts(
    tmp_path: Path, tiny_llama_dir: Path, broker_url: str, start_worker: StartWorker
) -> None:
    results = tmp_path / "results"
    ids = [f"p{i:03d}" for i in range(6)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", len(ids))
    env = {ENV_VARS["test_crash_prompt_ids"]: "p002", "TOKENLENS_MAX_ATTEMPTS": "2", "TOKENLENS_LEASE_TIMEOUT": "5"}
    # Restarted whenever it dies, as systemd or Kubernetes would.
    worker = start_worker(tiny_llama_dir, broker_url, env=env, restart_loop=True)
    submit(prompts, tiny_llama_dir, results, broker_url, "crash", "--batch-size", "6", "--max-new-tokens", "4")
    store = RunStore(LocalStorage(results), "crash")
    wait_until(lambda: len(store.ids("results") | store.ids("errors")) == 6, 150, "every prompt to finish")

    good = [pid for pid in ids if pid != "p002"]
    assert_exactly_one_valid_result(store, good)
    error = store.read_error("p002")
    assert error.error_type == "WorkerLost"
    assert error.attempts == 2
    # Two tries killed a worker each time (the whole batch, then p002 on its own); the third worker recorded it.
    assert worker.log().count("killing this worker on a test poison prompt") == 2
    assert worker.log().count("worker ready: model") == 3
    attempts = redis.Redis.from_url(broker_url).hgetall(RunKeys("crash").attempts)
    assert int(attempts[b"p002"]) == 2
    # The other prompts were tried at most twice (once in the batch that crashed, once on their own).
    assert all(int(attempts[pid.encode()]) <= 2 for pid in good)
