"""The queue contract (tokenlens/queue.py) against real Redis and real Celery/kombu code, without workers."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from celery import Celery

from producer.submit import RunStatus
from tests.integration.workers import REPO_ROOT
from tokenlens.batch import BatchTask, PromptRecord
from tokenlens.progress import RunCounts
from tokenlens.queue import (
    RUN_HEADER,
    TASK_NAME,
    RunKeys,
    RunQueue,
    build_message,
    new_batch_id,
    queue_name,
    session_of,
)
from tokenlens.schema import RunManifest

pytestmark = pytest.mark.integration


def _batch(run_id: str, *prompt_ids: str) -> BatchTask:
    prompts = [PromptRecord(id=pid, prompt=f"prompt {pid}") for pid in prompt_ids]
    return BatchTask(run_id=run_id, results_url="/tmp/r", model="org/model", method="saliency", prompts=prompts)


def test_submit_builds_the_message_celery_would_send(broker_url: str) -> None:
    client = redis.Redis.from_url(broker_url)
    batch = _batch("run-a", "p1", "p2")
    app = Celery("contract", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    app.send_task(TASK_NAME, args=[batch.model_dump(mode="json")], kwargs={"batch_id": "b1"}, queue="celery-made")
    ours = json.loads(build_message(batch, "b1", "ours"))
    raw = client.lpop("celery-made")
    assert isinstance(raw, bytes)
    theirs = json.loads(raw)

    assert set(ours) == set(theirs)
    assert set(ours["headers"]) - {RUN_HEADER} == set(theirs["headers"])
    assert set(ours["properties"]) == set(theirs["properties"])
    for name in ("task", "lang", "retries", "timelimit"):
        assert ours["headers"][name] == theirs["headers"][name]
    for name in ("content-type", "content-encoding"):
        assert ours[name] == theirs[name]
    assert ours["properties"]["body_encoding"] == theirs["properties"]["body_encoding"] == "base64"
    assert ours["properties"]["delivery_info"] == {"exchange": "", "routing_key": "ours"}
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(theirs["body"]))


def test_cancel_marks_the_run_and_workers_drop_only_its_batches(broker_url: str) -> None:
    client = redis.Redis.from_url(broker_url)
    queue = queue_name("org/model")
    mine, other = RunQueue(client, "mine"), RunQueue(client, "other")
    mine.enqueue([_batch("mine", "a")], queue, ["m1"])
    other.enqueue([_batch("other", "b")], queue, ["o1"])
    mine.enqueue([_batch("mine", "c")], queue, ["m2"])
    assert client.hlen(RunKeys("mine").queued) == 2

    assert mine.cancel() == 2  # the two waiting batches are no longer counted queued
    assert client.llen(queue) == 3, "cancel scans nothing: the messages stay until a worker pops them"
    assert client.hlen(RunKeys("mine").queued) == 0 and client.hlen(RunKeys("other").queued) == 1
    assert mine.take("m1", 1) == "cancelled" and mine.take("m2", 1) == "cancelled"
    assert other.take("o1", 1) == "taken"
    progress = mine.progress()
    assert progress is not None and progress.cancelled and progress.in_flight_batches == 0


def test_a_resubmit_starts_a_session_and_earlier_batches_are_dropped(broker_url: str) -> None:
    client = redis.Redis.from_url(broker_url)
    queue = queue_name("org/model")
    run = RunQueue(client, "resumed")
    first = run.register({"model": "org/model", "queue": queue})
    old_ids = run.enqueue([_batch("resumed", "a"), _batch("resumed", "b")], queue, session=first)
    assert all(session_of(batch_id) == first for batch_id in old_ids)
    run.cancel()
    assert run.take(old_ids[0], 1) == "cancelled"
    started_first = run.progress()
    assert started_first is not None and started_first.number("started_at") is None, "nothing taken yet"
    second = run.register({"model": "org/model", "queue": queue})  # resume: a new session, the cancel cleared
    assert second == first + 1
    new_ids = run.enqueue([_batch("resumed", "a")], queue, session=second)
    assert [run.take(batch_id, 1) for batch_id in old_ids[1:]] == ["stale"]
    resumed = run.progress()
    assert resumed is not None and resumed.number("started_at") is None, "a stale batch does not start the session"
    assert run.take(new_ids[0], 1) == "taken"
    taken = run.progress()
    assert taken is not None and taken.number("started_at") is not None, "the session starts at its first batch"
    # A batch id with no session (pushed by other tools) is never dropped as stale.
    assert run.take(new_batch_id(), 1) == "taken"
    progress = run.progress()
    assert progress is not None and not progress.cancelled and progress.in_flight_batches == 2


def test_throughput_and_eta_measure_only_the_current_session(broker_url: str) -> None:
    """A run resumed after a pause: only prompts finished since the resume, over the time since its first batch."""
    run = RunQueue(redis.Redis.from_url(broker_url), "paused")
    first = run.register({"model": "org/model", "queue": "q", "done_at_submit": 0})
    assert run.take(run.enqueue([_batch("paused", "a")], "q", session=first)[0], 1) == "taken"
    before = run.progress()
    assert before is not None and before.number("started_at") is not None  # the first session started
    run.register({"model": "org/model", "queue": "q", "done_at_submit": 60})  # resumed later with 60 done
    session = run.progress()
    assert session is not None and session.number("started_at") is None
    manifest = RunManifest(run_id="paused", model="org/model", method="saliency", prompt_count=100)
    counts = RunCounts(prompt_count=100, done=80, failed=0)
    status = RunStatus("paused", manifest, counts, session, None, checked_at=5000.0)
    assert status.throughput_per_s() is None, "no batch taken in this session yet: no rate to tell"
    with_start = replace(session, info={**session.info, "started_at": "4990"})
    status = RunStatus("paused", manifest, counts, with_start, None, checked_at=5000.0)
    assert status.throughput_per_s() == pytest.approx(2.0)  # 20 prompts since the resume, in 10 s
    assert status.eta_s() == pytest.approx(10.0)  # 20 pending at 2/s


def test_attempts_are_counted_per_prompt_and_refunded(broker_url: str) -> None:
    run = RunQueue(redis.Redis.from_url(broker_url), "counting")
    assert run.attempts(["a", "b"]) == {"a": 0, "b": 0}
    assert run.charge(["a", "b"]) == {"a": 1, "b": 1}
    assert run.charge(["a"]) == {"a": 2}
    run.refund(["b"])
    assert run.attempts(["a", "b"]) == {"a": 2, "b": 0}
    run.reset_attempts(["a"])
    assert run.attempts(["a"]) == {"a": 0}


def test_batches_move_from_queued_to_in_flight_once(broker_url: str) -> None:
    client = redis.Redis.from_url(broker_url)
    run = RunQueue(client, "moving")
    run.register({"model": "org/model", "queue": queue_name("org/model"), "prompt_count": 5})
    run.enqueue([_batch("moving", "a", "b", "c"), _batch("moving", "d", "e")], queue_name("org/model"), ["b1", "b2"])
    assert run.take("b1", 3) == "taken"
    assert run.take("b1", 3) == "taken"  # redelivered after a crash: still one batch in flight
    progress = run.progress()
    assert progress is not None
    assert (progress.queued_prompts, progress.queued_batches) == (2, 1)
    assert (progress.in_flight_prompts, progress.in_flight_batches) == (3, 1)
    assert progress.number("started_at") is not None
    run.mark_finished("b1")
    progress = run.progress()
    assert progress is not None and progress.in_flight_batches == 0
    assert RunQueue(client, "never-submitted").progress() is None


def test_queue_names_are_stable_slugs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = tmp_path / "My Model"
    model_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    assert queue_name("My Model") == queue_name(str(model_dir)) == queue_name(f"{tmp_path}/./My Model")
    assert queue_name("Qwen/Qwen2.5-0.5B-Instruct") == "tokenlens.qwen-qwen2.5-0.5b-instruct"
    assert queue_name("smollm2-135m-instruct") == "tokenlens.smollm2-135m-instruct"
    long_a, long_b = queue_name("org/" + "x" * 200 + "a"), queue_name("org/" + "x" * 200 + "b")
    assert long_a != long_b and len(long_a) < 100


def test_the_installed_celery_runs_a_task_from_our_message(broker_url: str) -> None:
    """A real Celery worker (the installed version) consumes queue.py's message and runs the task with its args."""
    queue = "tokenlens-contract-accept"
    batch = _batch("run-accept", "p1", "p2")
    redis.Redis.from_url(broker_url).lpush(queue, build_message(batch, "b7", queue))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.celery_consumer", broker_url, queue],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    received = json.loads(proc.stdout.strip().splitlines()[-1])
    assert received is not None, f"the Celery worker never ran the task: {proc.stderr[-3000:]}"
    assert BatchTask.model_validate(received["task"]) == batch
    assert (received["batch_id"], received["id"]) == ("b7", "run-accept:b7")
