"""Hostile queue messages pushed at a real running worker: each goes to the dead-letter list with its reason, none
runs code, loads anything or writes outside the worker's results location, the worker's process stays the same,
and a good (signed) run submitted afterwards finishes.

The worker runs with TOKENLENS_QUEUE_KEY set, so the messages that must reach the deeper checks (a batch asking for
`custom_generate`, a results URL elsewhere) are signed here with that key: what a producer that skipped submit's
own checks, or a stolen key, could send.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from storage_backends import LocalStorage
from tests.integration.workers import StartWorker, run_cli, submit, wait_until, write_prompts
from tokenlens.batch import BatchTask, PromptRecord
from tokenlens.dead_letters import DeadLetter
from tokenlens.queue import DEAD_LETTERS_KEY, RUN_HEADER, SIGNATURE_HEADER, build_message, queue_name
from tokenlens.results import RunStore
from tokenlens.signing import sign_batch

pytestmark = pytest.mark.integration

QUEUE_KEY = "integration-test-queue-key-0123456789abcdef"


def _batch(model: Path, results: Path, run_id: str = "forged", **changes: Any) -> dict[str, Any]:
    task = BatchTask(
        run_id="forged",
        results_url=str(results),
        model=str(model),
        method="saliency",
        max_new_tokens=4,
        prompts=[PromptRecord(id="x1", prompt="Hello there")],
    ).model_dump(mode="json")
    task.update(run_id=run_id, **changes)  # unchecked: hostile values go in as they are
    return task


def _envelope(
    queue: str, batch: dict[str, Any], *, key: str | None = QUEUE_KEY, batch_id: str = "b1"
) -> dict[str, Any]:
    """A protocol-2 message carrying `batch` as submit would build it (signed with `key`), as a dict to tamper with.

    `batch` is not validated: the point is to send what submit itself would refuse.
    """
    template = BatchTask(
        run_id="template", results_url="/r", model="m", method="saliency", prompts=[PromptRecord(id="t", prompt="t")]
    )
    envelope: dict[str, Any] = json.loads(build_message(template, batch_id, queue))
    envelope["headers"][RUN_HEADER] = batch.get("run_id")
    body = [[batch], {"batch_id": batch_id}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    envelope["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    if key is not None:
        envelope["headers"][SIGNATURE_HEADER] = sign_batch(key, batch, batch_id)
    return envelope


def _with_body(envelope: dict[str, Any], body: bytes) -> dict[str, Any]:
    envelope["body"] = base64.b64encode(body).decode()
    return envelope


def _hostile_messages(
    model: Path, results: Path, outside: Path, evil: Path, good_run: str
) -> list[tuple[str, str, bytes]]:
    """(name, expected dead-letter kind, raw queue item), one for each kind of hostile input."""
    queue = queue_name(str(model))
    ok = _batch(model, results)

    def item(envelope: dict[str, Any]) -> bytes:
        return json.dumps(envelope).encode()

    def tampered(change: Callable[[dict[str, Any]], None], batch: dict[str, Any] | None = None) -> bytes:
        envelope = _envelope(queue, batch or ok)
        change(envelope)
        return item(envelope)

    link = results / "link-out"
    link.symlink_to(outside, target_is_directory=True)
    return [
        ("not JSON at all", "undecodable", b"this is not a message \xff\xfe"),
        ("JSON, not an envelope", "undecodable", b"[1, 2, 3]"),
        ("headers not an object", "undecodable", tampered(lambda e: e.update(headers="x"))),
        ("body not base64", "undecodable", tampered(lambda e: e.update(body="%%% not base64 %%%"))),
        ("body not JSON", "undecodable", item(_with_body(_envelope(queue, ok), b"\x80\x04 pickle?"))),
        (
            "pickle content type",
            "undecodable",
            tampered(lambda e: e.update({"content-type": "application/x-python-serialize"})),
        ),
        ("body not a list", "not_a_batch", item(_with_body(_envelope(queue, ok), b'{"not": "a list"}'))),
        ("another task", "not_a_batch", tampered(lambda e: e["headers"].update(task="celery.backend_cleanup"))),
        ("no args", "not_a_batch", item(_with_body(_envelope(queue, ok), b'[[], {"batch_id": "b1"}, {}]'))),
        (
            "extra kwargs",
            "not_a_batch",
            item(_with_body(_envelope(queue, ok), json.dumps([[ok], {"batch_id": "b1", "x": 1}, {}]).encode())),
        ),
        (
            "a callback",
            "not_a_batch",
            item(
                _with_body(
                    _envelope(queue, ok),
                    json.dumps([[ok], {"batch_id": "b1"}, {"callbacks": [{"task": "x"}]}]).encode(),
                )
            ),
        ),
        ("a delay", "not_a_batch", tampered(lambda e: e["headers"].update(eta="2999-01-01T00:00:00+00:00"))),
        ("a bad time limit header", "not_a_batch", tampered(lambda e: e["headers"].update(timelimit="forever"))),
        ("unsigned", "unsigned", item(_envelope(queue, ok, key=None))),
        ("wrong key", "bad_signature", item(_envelope(queue, ok, key="another-key-of-enough-length-0123456789"))),
        (
            "altered after signing",
            "bad_signature",
            tampered(lambda e: e["headers"].update({SIGNATURE_HEADER: "0" * 64})),
        ),
        (
            "custom_generate + trust_remote_code",
            "invalid_batch",
            item(
                _envelope(
                    queue,
                    _batch(model, results, generation_params={"custom_generate": str(evil), "trust_remote_code": True}),
                )
            ),
        ),
        (
            "unknown nested field",
            "invalid_batch",
            item(_envelope(queue, _batch(model, results, prompts=[{"id": "x1", "prompt": "hi", "exec": "rm -rf /"}]))),
        ),
        ("run id with a path", "invalid_batch", item(_envelope(queue, _batch(model, results, run_id="../../etc")))),
        ("results elsewhere", "results_location", item(_envelope(queue, _batch(model, outside, run_id=good_run)))),
        ("results via ..", "results_location", item(_envelope(queue, _batch(model, Path(f"{results}/../outside"))))),
        ("results via a symlink", "results_location", item(_envelope(queue, _batch(model, link)))),
    ]


def _dead_letters(client: redis.Redis) -> list[DeadLetter]:
    letters = [DeadLetter.from_json(raw) for raw in client.lrange(DEAD_LETTERS_KEY, 0, -1)]
    return [letter for letter in reversed(letters) if letter is not None]  # oldest first


def test_hostile_messages_go_to_the_dead_letter_list_and_the_worker_goes_on(
    tmp_path: Path, tiny_llama_dir: Path, broker_url: str, start_worker: StartWorker
) -> None:
    results, outside, evil = tmp_path / "results", tmp_path / "outside", tmp_path / "evil"
    results.mkdir()
    outside.mkdir()
    # A directory `custom_generate` would import code from: if it ever ran, the marker file would appear.
    marker = tmp_path / "code-ran"
    (evil / "custom_generate").mkdir(parents=True)
    (evil / "custom_generate" / "generate.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    client = redis.Redis.from_url(broker_url)
    queue = queue_name(str(tiny_llama_dir))
    env = {"TOKENLENS_QUEUE_KEY": QUEUE_KEY}

    # A good run first, so a forged batch can name it and `status` has a run to show its dead letters under.
    good_prompts = write_prompts(tmp_path / "good.jsonl", 2)
    submit(good_prompts, tiny_llama_dir, results, broker_url, "good", "--max-new-tokens", "4", env=env)
    client.delete(queue)  # the worker is not up yet: keep the good batches for after the hostile ones

    hostile = _hostile_messages(tiny_llama_dir, results, outside, evil, "good")
    for _name, _kind, raw in hostile:
        client.lpush(queue, raw)
    # A well-formed, signed batch for a method no engine has: an error record with that reason, at once.
    unknown = _batch(tiny_llama_dir, results, run_id="unknown-method", method="no_such_method")
    client.lpush(queue, json.dumps(_envelope(queue, unknown)))
    worker = start_worker(tiny_llama_dir, broker_url, env=env)
    pid = worker.process.pid

    wait_until(lambda: client.llen(DEAD_LETTERS_KEY) >= len(hostile), 120, "every hostile message to be refused")
    letters = _dead_letters(client)
    assert [letter.kind for letter in letters] == [kind for _name, kind, _raw in hostile], [
        (name, letter.kind, letter.reason) for (name, _k, _r), letter in zip(hostile, letters, strict=False)
    ]
    assert all(letter.reason and letter.queue == queue for letter in letters)
    unknown_store = RunStore(LocalStorage(results), "unknown-method")
    wait_until(lambda: unknown_store.ids("errors") == {"x1"}, 60, "the unknown method's error record")
    error = unknown_store.read_error("x1")
    assert (error.error_type, error.attempts) == ("UnknownMethodError", 1) and "no_such_method" in error.message
    # Everything acknowledged: nothing waits to come back after the lease.
    wait_until(lambda: client.llen(queue) == 0 and client.hlen("unacked") == 0, 30, "every message to be acked")
    assert "Unrecoverable error" not in worker.log()
    assert QUEUE_KEY not in worker.log(), "the queue key is never logged"

    # Nothing ran, nothing was written outside the worker's results location, the forged runs wrote nothing.
    assert not marker.exists()
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in (results / "runs").iterdir()) == ["good", "unknown-method"]

    # The run a forged batch named shows it in `tokenlens status`.
    proc = run_cli("status", "good", "--results", str(results), "--broker", broker_url)
    assert proc.returncode == 0, proc.stderr
    assert "dead letters 1" in proc.stdout and "results_location" in proc.stdout

    # A good, signed run submitted afterwards finishes on the same worker process.
    submit(good_prompts, tiny_llama_dir, results, broker_url, "good", "--max-new-tokens", "4", env=env)
    store = RunStore(LocalStorage(results), "good")
    wait_until(lambda: len(store.ids("results")) == 2, 120, "the good run to finish")
    assert worker.process.poll() is None and worker.process.pid == pid
