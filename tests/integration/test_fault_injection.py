"""Faults injected with everything running (real Redis, real workers, real SeaweedFS): the S3 store down for half
a minute mid-run, hostile messages among good batches while Redis restarts, a worker killed in the middle of writing
a result. Each run finishes with exactly one valid result per prompt, nothing lost and nothing written twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from storage_backends import LocalStorage
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.seaweedfs import WeedServer
from tests.integration.workers import (
    StartWorker,
    assert_exactly_one_valid_result,
    run_cli,
    submit,
    wait_until,
    write_prompts,
)
from tokenlens.dead_letters import DeadLetter
from tokenlens.progress import read_progress
from tokenlens.queue import DEAD_LETTERS_KEY, queue_name
from tokenlens.results import RunStore

pytestmark = pytest.mark.integration

#: How long the S3 store stays down: longer than botocore's own retries, shorter than a call's retry budget (60 s).
S3_OUTAGE_S = 30.0
NATIVE = ("--max-new-tokens", "4")


def test_run_finishes_after_the_s3_store_is_down_for_half_a_minute(
    tmp_path: Path,
    tiny_llama_dir: Path,
    broker_url: str,
    start_worker: StartWorker,
    weed_server_factory: Callable[[], WeedServer],
) -> None:
    server = weed_server_factory()
    results_url = f"s3://{server.bucket}/outage"
    env = {**server.env(), "TOKENLENS_RESULTS": results_url}
    ids = [f"p{i:03d}" for i in range(10)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", len(ids))
    # Inseq: one prompt per engine call, so the run is still going when the store goes down.
    worker = start_worker(tiny_llama_dir, broker_url, env=env)
    proc = run_cli(
        "submit", str(prompts), "--model", str(tiny_llama_dir), "--results", results_url, "--broker", broker_url,
        "--run-id", "outage", "--batch-size", "2", "--engine", "inseq", "--max-new-tokens", "8", env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr

    client = server.client()

    def stored(kind: str) -> list[str]:
        listing = client.list_objects_v2(Bucket=server.bucket, Prefix=f"outage/runs/outage/{kind}/")
        return sorted(item["Key"].rsplit("/", 1)[1][: -len(".json")] for item in listing.get("Contents", []))

    wait_until(lambda: len(stored("results")) >= 2, 120, "the run to be under way", poll_s=0.1)
    assert len(stored("results")) < len(ids), "the run finished before the store went down; nothing was tested"
    server.stop()
    time.sleep(S3_OUTAGE_S)
    server.start()
    wait_until(lambda: len(stored("results")) == len(ids), 240, "the run to finish after the outage")

    assert stored("results") == ids and stored("errors") == []
    assert worker.process.poll() is None
    done = worker.done_ids()
    assert sorted(done) == ids, "every prompt was attributed exactly once"
    for pid in ids:
        stored_object = client.get_object(Bucket=server.bucket, Key=f"outage/runs/outage/results/{pid}.json")
        body = json.loads(stored_object["Body"].read())
        assert body["metadata"]["prompt_id"] == pid and body["metadata"]["run_id"] == "outage"


def test_dead_letters_among_good_batches_survive_a_redis_restart(
    tmp_path: Path, tiny_llama_dir: Path, private_redis: RedisServer, start_worker: StartWorker
) -> None:
    broker_url = private_redis.url(0)
    client = redis.Redis.from_url(broker_url)
    results = tmp_path / "results"
    ids = [f"p{i:03d}" for i in range(8)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", len(ids))
    queue = queue_name(str(tiny_llama_dir))
    submit(prompts, tiny_llama_dir, results, broker_url, "mixed", "--batch-size", "2", *NATIVE)

    # Put a hostile message between every two good batches (the queue is consumed from its right end).
    good = client.lrange(queue, 0, -1)
    hostile = [b"not a message", b'{"properties": "no"}', json.dumps({"body": "%%", "properties": {}}).encode()]
    mixed = [item for pair in zip(good, [*hostile, b"[]"], strict=True) for item in pair]
    client.delete(queue)
    client.rpush(queue, *mixed)

    worker = start_worker(tiny_llama_dir, broker_url, wait=False)
    pid = worker.process.pid
    worker.wait_ready()
    store = RunStore(LocalStorage(results), "mixed")
    wait_until(lambda: client.llen(DEAD_LETTERS_KEY) >= 1, 60, "a first dead letter", poll_s=0.05)
    private_redis.restart(down_s=2.0)

    wait_until(lambda: len(store.ids("results")) == len(ids), 120, "the good batches to finish after the restart")
    wait_until(lambda: client.llen(queue) == 0, 30, "the queue to be empty")
    letters = [letter for letter in map(DeadLetter.from_json, client.lrange(DEAD_LETTERS_KEY, 0, -1)) if letter]
    assert {letter.kind for letter in letters} == {"undecodable"}
    # None lost across the restart. (Recording and acknowledging are two Redis calls: a restart between them would
    # record a message twice, so the count may exceed by one, never fall short.)
    refused = [item for item in mixed if item not in good]
    assert all(isinstance(item, bytes) for item in refused)
    assert all(any(item.decode() in letter.raw for letter in letters) for item in refused if isinstance(item, bytes))
    assert len(refused) <= len(letters) <= len(refused) + 1
    assert_exactly_one_valid_result(store, ids)
    assert worker.process.poll() is None and worker.process.pid == pid
    # The worker logs a batch's ids after its results are stored: wait for the last batch's line, don't race it.
    wait_until(lambda: len(worker.done_ids()) >= len(ids), 30, "the worker to log every batch", poll_s=0.1)
    done = worker.done_ids()
    assert sorted(done) == ids


def test_a_worker_killed_while_writing_a_result_loses_and_duplicates_nothing(
    tmp_path: Path, tiny_llama_dir: Path, broker_url: str, start_worker: StartWorker
) -> None:
    results = tmp_path / "results"
    ids = [f"p{i:03d}" for i in range(6)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", len(ids))
    # Killed (SIGKILL) between writing p002's temp file and linking it in place; restarted as systemd would.
    worker = start_worker(
        tiny_llama_dir, broker_url, env={"TOKENLENS_TEST_KILL_DURING_WRITE": "p002"}, restart_loop=True
    )
    submit(prompts, tiny_llama_dir, results, broker_url, "torn", "--batch-size", "3", *NATIVE)
    store = RunStore(LocalStorage(results), "torn")

    wait_until(lambda: len(store.ids("results")) == len(ids), 180, "the run to finish after the kill")
    assert "killing this worker while it writes" in worker.log(), "the worker was never killed: nothing was tested"
    leftover = list((results / "runs/torn/results").glob(".p002.json.*.tmp"))
    assert len(leftover) == 1, "the kill left the half-done write behind"
    assert_exactly_one_valid_result(store, ids)  # the temp file is no result
    progress = read_progress(store, verify=True)
    assert progress.done_ids == set(ids) and not progress.corrupt_ids and progress.counts.complete
    assert store.ids("errors") == set()
