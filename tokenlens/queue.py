"""The queue contract shared by `submit`, `status`, `cancel` and the worker: queue names, messages, Redis keys.

Everything a run keeps in Redis is named here, once (like rq's key templates):

    tokenlens.<model-slug>              the model's queue (a kombu/Celery list; one per model)
    tokenlens:run:<run_id>              hash: the run as submitted (model, queue, counts, times, session)
    tokenlens:run:<run_id>:queued       hash: batch id -> prompts, for batches waiting in the queue
    tokenlens:run:<run_id>:in_flight    hash: batch id -> prompts, for batches a worker has taken
    tokenlens:run:<run_id>:attempts     hash: prompt id -> tries started (survives worker crashes)
    tokenlens:run:<run_id>:cancelled    string: set by `tokenlens cancel`; workers drop the run's batches
    tokenlens:run:<run_id>:dead_letters list: the run's latest messages a worker refused (newest first)
    tokenlens:dead_letters              list: every refused message, newest first (tokenlens.dead_letters)

A batch is in exactly one of `queued` / `in_flight` at a time, keyed by its id, so
a batch redelivered after a crash moves again without double counting.

Nothing here ever scans a queue, so no call blocks Redis for longer than a few
commands on one run's keys, however long the queue. Each submit of a run (a resume
included) starts a new *session* (`session` in the run's hash, one HINCRBY); its
batch ids carry it (``s<session>-<hex>``). Cancel sets the run's `cancelled` key,
resume bumps the session, and a worker drops a batch as it pops it when the run is
cancelled or the batch belongs to an earlier session (`RunQueue.take`). So an old
session's batches cost a worker a few milliseconds each when they reach it, instead
of a sweep of the whole queue in one atomic call. A batch id without a session (a
message pushed by other tools) is never dropped as stale.
Storage (results/ and errors/) stays the truth about finished prompts; these
keys only say what is waiting and running, and can be lost (a flushed Redis)
without losing a result.

Submit builds Celery protocol-2 JSON messages itself and pushes them with a
Redis pipeline (100k prompts in seconds); the worker consumes them with Celery.
The worker imports this module too: it is the one place both sides agree on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from tokenlens.batch import BatchTask
from tokenlens.broker_url import check_broker_url, redact_url
from tokenlens.errors import TokenLensError
from tokenlens.signing import sign_batch

#: The Celery task name every batch message carries (worker/tasks.py registers it).
TASK_NAME = "tokenlens.attribute_batch"
#: A message header naming the batch's run, so `cancel` can find a run's batches without decoding bodies.
RUN_HEADER = "tokenlens_run"
QUEUE_PREFIX = "tokenlens."
KEY_PREFIX = "tokenlens:run:"
#: Every message a worker refused (undecodable, invalid, unsigned, for a results location it may not write).
DEAD_LETTERS_KEY = "tokenlens:dead_letters"
#: The message header carrying a batch's HMAC when TOKENLENS_QUEUE_KEY is set (tokenlens.signing).
SIGNATURE_HEADER = "tokenlens_signature"
#: Bookkeeping keys expire this long after the run's last activity; storage keeps the results forever.
RUN_KEYS_TTL_S = 30 * 24 * 3600
#: kombu's Redis transport keeps each delivered-but-unacked message's delivery time here (its default
#: name); the worker's lease heartbeat renews its own entry (see worker/app.py).
UNACKED_INDEX_KEY = "unacked_index"
#: Fields per HDEL when forgetting attempts (one command never holds Redis for long).
PIPELINE_CHUNK = 1000
#: Batches pushed by one LPUSH (and marked queued by one HSET) when enqueueing: a few ms of Redis time each.
ENQUEUE_CHUNK = 250
#: Chunks sent per pipeline round trip.
PIPELINE_CHUNKS = 4


class BrokerError(TokenLensError):
    """The broker URL is not a Redis URL, or the Redis behind it can't be reached."""


def queue_name(model: str) -> str:
    """The queue of a model: ``tokenlens.<slug>``, the same for submit, worker, status and cancel.

    A local model directory is named by its absolute path, so `./models/x` and
    `/abs/models/x` share a queue. Long names keep their tail and gain a hash.
    """
    spec = os.path.realpath(model) if os.path.exists(model) else model
    slug = re.sub(r"[^a-z0-9._-]+", "-", spec.lower()).strip("-.") or "model"
    if len(slug) > 80:
        digest = hashlib.sha1(spec.encode("utf-8")).hexdigest()[:10]
        slug = f"{slug[-60:].lstrip('-.')}-{digest}"
    return QUEUE_PREFIX + slug


def connect_broker(url: str, *, check: bool = True, timeout_s: float = 5.0, patient: bool = False) -> redis.Redis:
    """A Redis client for the broker URL; with `check`, raise `BrokerError` unless it answers PING.

    A `patient` client (the worker's) retries a lost connection for about half a
    minute, so a Redis restart in the middle of a batch costs a pause, not the batch.
    """
    check_broker_url(url)  # a malformed URL is one clear line, not a silent db 0 or a traceback
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.2), 20) if patient else Retry(NoBackoff(), 1)
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=max(timeout_s, 10.0),
        health_check_interval=30,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    if check:
        try:
            client.ping()
        except redis.RedisError as exc:
            raise BrokerError(
                f"can't reach the broker at {redact_url(url)} ({exc}); start Redis there or pass the right "
                "--broker / TOKENLENS_BROKER_URL"
            ) from None
    return client


def new_batch_id(session: int | None = None) -> str:
    """A fresh batch id, carrying the run's submit session when known (see the module docstring)."""
    token = uuid.uuid4().hex[:16]
    return f"s{session}-{token}" if session is not None else token


def session_of(batch_id: str) -> int | None:
    """The submit session a batch id names (None: an id without one)."""
    match = _SESSION_ID.match(batch_id)
    return int(match.group(1)) if match else None


_SESSION_ID = re.compile(r"^s(\d{1,12})-[0-9a-f]+$")


_NO_CALLBACKS = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_NO_CALLBACKS_JSON = json.dumps(_NO_CALLBACKS)


def build_message(task: BatchTask, batch_id: str, queue: str, signing_key: str | None = None) -> str:
    """One batch as the JSON message Celery's Redis transport stores (protocol 2, JSON body, no pickle).

    This is what `app.send_task(TASK_NAME, args=[task], kwargs={"batch_id": ...}, queue=queue)`
    would push, built directly so that submit needs neither a Celery app nor one
    round trip per batch. With `signing_key`, the batch's HMAC goes in the SIGNATURE_HEADER.
    """
    task_id = f"{task.run_id}:{batch_id}"
    signature = None
    if signing_key is not None:
        batch = task.model_dump(mode="json")
        signature = sign_batch(signing_key, batch, batch_id)
        body_json = json.dumps([[batch], {"batch_id": batch_id}, _NO_CALLBACKS])
    else:
        # The same JSON, serialised by pydantic's core in one step (submit builds 12,500 of these per 100k prompts).
        body_json = f"[[{task.model_dump_json()}], {json.dumps({'batch_id': batch_id})}, {_NO_CALLBACKS_JSON}]"
    headers: dict[str, Any] = {
        "lang": "py",
        "task": TASK_NAME,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        # Shown by Flower and the worker log instead of the prompt texts.
        "argsrepr": f"[<{len(task.prompts)} prompts of run {task.run_id}>]",
        "kwargsrepr": repr({"batch_id": batch_id}),
        "origin": f"tokenlens@{socket.gethostname()}",
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        RUN_HEADER: task.run_id,
    }
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    envelope = {
        "body": base64.b64encode(body_json.encode("utf-8")).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": None,
            "delivery_mode": 2,
            # The default exchange: kombu routes a restored (redelivered) message back to this queue by name.
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope)


# Moves a batch from queued to in flight, unless its run was cancelled or resubmitted since it was queued.
# O(1): a few commands on the run's own keys. KEYS: info, queued, in_flight, cancelled; ARGV: batch id,
# prompts, the batch's session ('' if none), now. Returns 'taken', 'cancelled' or 'stale'.
_TAKE_SCRIPT = """
local drop = nil
if redis.call('EXISTS', KEYS[4]) == 1 then
  drop = 'cancelled'
else
  local current = tonumber(redis.call('HGET', KEYS[1], 'session') or '')
  if ARGV[3] ~= '' and current ~= nil and tonumber(ARGV[3]) < current then
    drop = 'stale'
  end
end
if drop then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  return drop
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[4])
return 'taken'
"""


@dataclass(frozen=True)
class RunKeys:
    """The Redis keys of one run (see the module docstring)."""

    run_id: str

    @property
    def info(self) -> str:
        return f"{KEY_PREFIX}{self.run_id}"

    @property
    def queued(self) -> str:
        return f"{KEY_PREFIX}{self.run_id}:queued"

    @property
    def in_flight(self) -> str:
        return f"{KEY_PREFIX}{self.run_id}:in_flight"

    @property
    def attempts(self) -> str:
        return f"{KEY_PREFIX}{self.run_id}:attempts"

    @property
    def cancelled(self) -> str:
        return f"{KEY_PREFIX}{self.run_id}:cancelled"

    @property
    def dead_letters(self) -> str:
        return f"{KEY_PREFIX}{self.run_id}:dead_letters"

    def all(self) -> tuple[str, ...]:
        return (self.info, self.queued, self.in_flight, self.attempts, self.cancelled, self.dead_letters)


@dataclass(frozen=True)
class QueueProgress:
    """What Redis knows about a run: batches waiting and running, and when it was submitted and started."""

    queued_prompts: int
    queued_batches: int
    in_flight_prompts: int
    in_flight_batches: int
    cancelled: bool
    info: dict[str, str]

    def number(self, name: str) -> float | None:
        raw = self.info.get(name)
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None


def _sum_counts(values: Iterable[bytes]) -> int:
    return sum(int(v) for v in values)


class RunQueue:
    """One run's batches on its model's queue, and the bookkeeping that says where each batch is."""

    def __init__(self, client: redis.Redis, run_id: str, signing_key: str | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.keys = RunKeys(run_id)
        #: TOKENLENS_QUEUE_KEY: every batch this queue pushes is signed with it (tokenlens.signing).
        self.signing_key = signing_key

    # submit ------------------------------------------------------------------
    def register(self, fields: dict[str, Any]) -> int:
        """Start a new session of the run: record it as submitted, forget what an earlier session queued,
        clear an earlier cancel. Returns the new session number (batch ids carry it).

        O(1) in the queue's length: the earlier session's batches stay in the queue and are dropped by
        the worker that pops them (`take`). `started_at` is cleared, so the first batch a worker takes
        in this session sets it: throughput and ETA measure this session only.
        """
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(self.keys.info, "session", 1)
        pipe.hset(self.keys.info, mapping={k: str(v) for k, v in fields.items()})
        pipe.hdel(self.keys.info, "started_at")
        pipe.unlink(self.keys.queued, self.keys.cancelled)
        pipe.expire(self.keys.info, RUN_KEYS_TTL_S)
        return int(pipe.execute()[0])

    def enqueue(
        self,
        tasks: Sequence[BatchTask],
        queue: str,
        batch_ids: Sequence[str] | None = None,
        *,
        session: int | None = None,
    ) -> list[str]:
        """Push batches to the tail of `queue` and mark them queued, pipelined in chunks; returns the batch ids.

        New ids carry `session` (the one `register` returned, or the session of the batch handed back).
        """
        ids = list(batch_ids) if batch_ids is not None else [new_batch_id(session) for _ in tasks]
        if len(ids) != len(tasks):
            raise ValueError(f"{len(tasks)} batches but {len(ids)} batch ids")
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(tasks), ENQUEUE_CHUNK):
            chunk = range(start, min(start + ENQUEUE_CHUNK, len(tasks)))
            # Marked queued before they are pushed: a worker popping one at once finds it. kombu's Redis
            # transport pops with BRPOP, and LPUSH of several puts the last at the head: the order is kept.
            pipe.hset(self.keys.queued, mapping={ids[i]: len(tasks[i].prompts) for i in chunk})
            pipe.lpush(queue, *(build_message(tasks[i], ids[i], queue, self.signing_key) for i in chunk))
            if (start // ENQUEUE_CHUNK) % PIPELINE_CHUNKS == PIPELINE_CHUNKS - 1:
                pipe.execute()
        pipe.expire(self.keys.queued, RUN_KEYS_TTL_S)
        pipe.execute()
        return ids

    def cancel(self) -> int:
        """Mark the run cancelled: workers drop its batches as they pop them. Returns how many batches were
        waiting (they are no longer counted as queued). O(1) in the queue's length: nothing is scanned."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.cancelled, str(time.time()), ex=RUN_KEYS_TTL_S)
        pipe.hlen(self.keys.queued)
        pipe.unlink(self.keys.queued)
        return int(pipe.execute()[1])

    def reset_attempts(self, prompt_ids: Sequence[str]) -> None:
        """Forget the tries counted for `prompt_ids`, in commands of `PIPELINE_CHUNK` fields (none blocks Redis)."""
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(prompt_ids), PIPELINE_CHUNK):
            pipe.hdel(self.keys.attempts, *prompt_ids[start : start + PIPELINE_CHUNK])
        pipe.execute()

    # worker ------------------------------------------------------------------
    def is_cancelled(self) -> bool:
        return bool(self.client.exists(self.keys.cancelled))

    def take(self, batch_id: str, prompts: int) -> str:
        """Move a popped batch to in flight: "taken"; or "cancelled" / "stale" (resubmitted since): drop it."""
        session = session_of(batch_id)
        keys = (self.keys.info, self.keys.queued, self.keys.in_flight, self.keys.cancelled)
        args = (batch_id, prompts, "" if session is None else session, str(time.time()))
        outcome = self.client.eval(_TAKE_SCRIPT, len(keys), *keys, *args)
        self.client.expire(self.keys.in_flight, RUN_KEYS_TTL_S)
        return outcome.decode() if isinstance(outcome, bytes) else str(outcome)

    def mark_requeued(self, batch_id: str, prompts: int) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.keys.in_flight, batch_id)
        pipe.hset(self.keys.queued, batch_id, prompts)
        pipe.execute()

    def mark_finished(self, batch_id: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.keys.in_flight, batch_id)
        pipe.hdel(self.keys.queued, batch_id)
        pipe.hset(self.keys.info, "last_batch_at", str(time.time()))
        for key in self.keys.all():
            pipe.expire(key, RUN_KEYS_TTL_S)
        pipe.execute()

    def attempts(self, prompt_ids: Sequence[str]) -> dict[str, int]:
        """Tries started so far per prompt (0 if never)."""
        if not prompt_ids:
            return {}
        values = self.client.hmget(self.keys.attempts, list(prompt_ids))
        return {pid: int(v) if v is not None else 0 for pid, v in zip(prompt_ids, values, strict=True)}

    def charge(self, prompt_ids: Sequence[str]) -> dict[str, int]:
        """Count a new try of each prompt before it starts; returns this try's number (1 on the first)."""
        if not prompt_ids:
            return {}
        pipe = self.client.pipeline(transaction=True)
        for pid in prompt_ids:
            pipe.hincrby(self.keys.attempts, pid, 1)
        pipe.expire(self.keys.attempts, RUN_KEYS_TTL_S)
        counts = pipe.execute()[:-1]
        return {pid: int(n) for pid, n in zip(prompt_ids, counts, strict=True)}

    def refund(self, prompt_ids: Sequence[str]) -> None:
        """Take back the try charged to prompts that were handed back without starting."""
        if prompt_ids:
            pipe = self.client.pipeline(transaction=True)
            for pid in prompt_ids:
                pipe.hincrby(self.keys.attempts, pid, -1)
            pipe.execute()

    # status --------------------------------------------------------------------
    def progress(self) -> QueueProgress | None:
        """What Redis knows about the run, or None if it knows nothing (never submitted here, or flushed)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.info)
        pipe.hvals(self.keys.queued)
        pipe.hvals(self.keys.in_flight)
        pipe.exists(self.keys.cancelled)
        info_raw, queued, in_flight, cancelled = pipe.execute()
        if not info_raw and not queued and not in_flight and not cancelled:
            return None
        info = {k.decode(): v.decode() for k, v in info_raw.items()}
        return QueueProgress(
            queued_prompts=_sum_counts(queued),
            queued_batches=len(queued),
            in_flight_prompts=_sum_counts(in_flight),
            in_flight_batches=len(in_flight),
            cancelled=bool(cancelled),
            info=info,
        )
