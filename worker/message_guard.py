"""The worker's door: every message is checked before Celery runs it, and a bad one goes to the dead-letter list.

Celery and kombu stop a worker on some malformed messages ("Unrecoverable
error"), and a restarted worker takes the same message again and dies too. Two
layers make sure no message can do that:

- `GuardedRedisTransport`: kombu's Redis transport, whose client turns a queue
  item that is not a kombu message at all (not JSON, no properties, a body that
  is not base64, ...) into a *quarantined* message that carries the raw item, so
  kombu's own parsing never sees it. Selected with Celery's `broker_transport`.
- `GuardedConsumer`: Celery's consumer, whose task handler first runs
  `tokenlens.message_check.check_message` (JSON only, exactly our task and its
  arguments, a valid batch, its signature, an allowed results location) and
  hands only accepted messages to Celery. Celery's own refusal callbacks (decode
  errors, unknown or invalid tasks) are routed to the same place. Selected with
  Celery's `worker_consumer`.

A refused message is acknowledged (so it is gone from the queue for good),
recorded in the dead-letter list with the reason (tokenlens.dead_letters),
counted in `tokenlens_dead_letters_total`, and logged in one line; the worker
goes on with the next message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import socket
import uuid
from typing import TYPE_CHECKING, Any

import redis
from celery.worker.consumer.consumer import Consumer
from kombu.transport import redis as kombu_redis

from tokenlens.dead_letters import DeadLetter, record_dead_letter
from tokenlens.message_check import AcceptedBatch, Refusal, check_message
from tokenlens.queue import RunQueue

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

#: The content type of a queue item the transport could not read as a message (see `quarantine`).
QUARANTINE_CONTENT_TYPE = "application/x-tokenlens-quarantined"
QUARANTINE_REASON_HEADER = "tokenlens_quarantined"
#: The most of an unreadable queue item kept in its quarantined message.
QUARANTINE_RAW_BYTES = 4096


# --- the transport: queue items that are not messages ---------------------------------------------------------


def envelope_problem(item: bytes | str) -> str | None:
    """What stops kombu from reading `item` as a message (None: it can), without trusting anything in it."""
    try:
        envelope = json.loads(item)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"the queue item is not JSON ({exc})"
    if not isinstance(envelope, dict):
        return "the queue item is not a JSON object"
    properties = envelope.get("properties")
    if not isinstance(properties, dict):
        return "the queue item has no properties"
    if not isinstance(properties.get("delivery_tag"), str) or not properties["delivery_tag"]:
        return "the queue item has no delivery tag"
    delivery_info = properties.get("delivery_info")
    if not isinstance(delivery_info, dict) or not isinstance(delivery_info.get("routing_key", ""), str):
        return "the queue item has no delivery info"
    if not isinstance(delivery_info.get("exchange", ""), str):
        return "the queue item's exchange is not a name"
    headers = envelope.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return "the queue item's headers are not an object"
    body = envelope.get("body")
    if body is not None and not isinstance(body, str):
        return "the queue item's body is not text"
    encoding = properties.get("body_encoding")
    if encoding not in (None, "base64"):
        return f"the queue item's body encoding {encoding!r} is unknown"
    if encoding == "base64" and body:
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "the queue item's body is not base64"
    for name in ("content-type", "content-encoding"):
        if envelope.get(name) is not None and not isinstance(envelope.get(name), str):
            return f"the queue item's {name} is not text"
    return None


def quarantine(item: bytes | str, queue: str, problem: str) -> bytes:
    """A well-formed kombu message carrying the unreadable `item`, for the consumer to dead-letter."""
    raw = item if isinstance(item, bytes) else item.encode("utf-8", errors="replace")
    envelope = {
        "body": base64.b64encode(raw[:QUARANTINE_RAW_BYTES]).decode("ascii"),
        "content-encoding": "binary",
        "content-type": QUARANTINE_CONTENT_TYPE,
        "headers": {QUARANTINE_REASON_HEADER: problem},
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
        },
    }
    return json.dumps(envelope).encode("utf-8")


def _checked_item(item: Any, queue: str) -> Any:
    if not isinstance(item, bytes | str):
        return item
    problem = envelope_problem(item)
    return item if problem is None else quarantine(item, queue, problem)


def _name(key: Any) -> str:
    return key.decode("utf-8", errors="replace") if isinstance(key, bytes) else str(key)


class GuardedRedisClient(redis.Redis):
    """The transport's Redis client: a popped queue item that is not a kombu message comes out quarantined."""

    def parse_response(self, connection: Any, command_name: str | bytes, **options: Any) -> Any:
        response = super().parse_response(connection, command_name, **options)  # type: ignore[no-untyped-call]
        # kombu consumes with BRPOP, which it sends and parses itself: the reply is [queue, item].
        if command_name == "BRPOP" and isinstance(response, list | tuple) and len(response) == 2:
            queue, item = response
            return [queue, _checked_item(item, _name(queue))]
        return response

    def execute_command(self, *args: Any, **options: Any) -> Any:
        response = super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        # kombu's basic_get path pops with RPOP.
        if args and args[0] == "RPOP" and len(args) == 2:
            return _checked_item(response, _name(args[1]))
        return response


class GuardedRedisChannel(kombu_redis.Channel):
    def _get_client(self) -> Any:
        client = super()._get_client()  # type: ignore[no-untyped-call]
        if client is not redis.Redis:  # a global key prefix: kombu's own client class; keep it
            log.warning("TokenLens's queue-item guard is off: the broker uses a global key prefix")
            return client
        return GuardedRedisClient


class GuardedRedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with `GuardedRedisChannel` (Celery's `broker_transport`)."""

    Channel = GuardedRedisChannel


# --- the consumer: messages that are not batches this worker may run ------------------------------------------


def _raw_text(message: Any) -> str:
    """The refused message as text for the dead-letter list: its headers and body."""
    body = getattr(message, "body", b"")
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes | bytearray) else str(body)
    try:
        headers = json.dumps(getattr(message, "headers", None), default=repr)
    except (TypeError, ValueError):
        headers = repr(getattr(message, "headers", None))
    return f"headers={headers} body={text}"


def inspect_delivery(message: Any) -> AcceptedBatch | Refusal:
    """`check_message` for what kombu delivered; never raises."""
    from worker.runtime import current_runtime

    try:
        if getattr(message, "content_type", None) == QUARANTINE_CONTENT_TYPE:
            reason = (message.headers or {}).get(QUARANTINE_REASON_HEADER, "unreadable queue item")
            return Refusal("undecodable", str(reason))
        return check_message(message.headers, message.body, message.content_type, current_runtime().door_policy)
    except Exception as exc:  # the door must never be what crashes the worker
        return Refusal("not_a_batch", f"the message could not be inspected ({type(exc).__name__}: {exc})")


def dead_letter(message: Any, refusal: Refusal) -> None:
    """Acknowledge `message`, record it in the dead-letter list, count it and log it in one line."""
    from worker.runtime import runtime_or_none

    rt = runtime_or_none()
    delivery_info = getattr(message, "delivery_info", None) or {}
    queue = str(delivery_info.get("routing_key") or (rt.queue if rt is not None else ""))
    record_refusal(rt, refusal, queue=queue, raw=_raw_text(message))
    if not message.acknowledged:
        message.ack()


def record_refusal(rt: WorkerRuntime | None, refusal: Refusal, *, queue: str, raw: str) -> None:
    """Record a refused message in the dead-letter list, count it and log it in one line (nothing is acked)."""
    letter = DeadLetter.of(
        refusal.kind,
        refusal.reason,
        queue=queue,
        raw=raw,
        worker=socket.gethostname(),
        run_id=refusal.run_id,
        batch_id=refusal.batch_id,
    )
    log.error(
        "dead letter: refused a message from queue %s (run %s, batch %s): %s: %s",
        queue,
        letter.run_id or "-",
        letter.batch_id or "-",
        refusal.kind,
        refusal.reason,
    )
    if rt is not None:
        try:
            record_dead_letter(rt.broker, letter)
            if letter.run_id is not None and letter.batch_id is not None:
                # A batch its producer queued (for a location this worker can't write, say) is no longer waiting.
                RunQueue(rt.broker, letter.run_id).mark_finished(letter.batch_id)
        except redis.RedisError as exc:
            log.warning("could not record the dead letter in Redis (%s); it is in this log only", exc)
        if rt.metrics is not None:
            rt.metrics.dead_letters.labels(reason=refusal.kind).inc()


class GuardedConsumer(Consumer):  # type: ignore[misc]  # Celery has no type information
    """Celery's consumer with TokenLens's door in front of every task message (Celery's `worker_consumer`)."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        celery_handler = super().create_task_handler(*args, **kwargs)
        connection_errors = tuple(self.connection_errors or ())

        def on_task_received(message: Any) -> Any:
            verdict = inspect_delivery(message)
            if isinstance(verdict, Refusal):
                return dead_letter(message, verdict)
            try:
                return celery_handler(message)
            except connection_errors:
                raise
            except Exception as exc:  # Celery could not make a task of an accepted message
                return dead_letter(message, Refusal("not_a_batch", f"Celery could not run it ({exc})"))

        return on_task_received

    # Celery's own refusals, should a message get past the door to them.
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        dead_letter(message, Refusal("undecodable", f"Celery could not decode it ({exc})"))

    def on_unknown_message(self, body: Any, message: Any) -> None:
        dead_letter(message, Refusal("not_a_batch", "not a Celery task message"))

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        dead_letter(message, Refusal("not_a_batch", f"unknown task ({exc})"))

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        dead_letter(message, Refusal("not_a_batch", f"invalid task ({exc})"))
