"""The door of a worker: a queue message, checked field by field, becomes a batch to run or a reason to refuse it.

This is the inverse of `tokenlens.queue.build_message`, written for hostile input:
anyone who can write to the broker can push any bytes onto a model's queue. A
message is accepted only if it is a JSON Celery protocol-2 message for
`TASK_NAME`, with exactly ``[[batch], {"batch_id": id}, {no callbacks}]`` as its
body, no delay, a batch that `BatchTask` validates (strict types, no unknown
fields, generation options from the allow-list), a valid signature when the worker
has a queue key, and a results URL among the worker's results locations. Anything
else is a `Refusal` whose `kind` is one of `tokenlens.dead_letters.KINDS`.

Nothing here imports Celery: the worker's consumer (worker/message_guard.py) hands
over what kombu delivered, and tests call `check_message` directly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tokenlens.batch import BatchTask, describe_validation_error, is_safe_id
from tokenlens.locations import ResultsLocations
from tokenlens.queue import RUN_HEADER, SIGNATURE_HEADER, TASK_NAME
from tokenlens.signing import signature_matches

JSON_CONTENT_TYPE = "application/json"
#: Body parts that would make Celery send further tasks after this one: a batch never has any.
WORKFLOW_FIELDS = ("callbacks", "errbacks", "chain", "chord")
#: Headers that would make a worker hold a message for later (or drop it): a batch is run now.
DELAY_HEADERS = ("eta", "expires", "countdown")


@dataclass(frozen=True)
class DoorPolicy:
    """What this worker accepts: where it may write, and the key batches must be signed with (None: unsigned ok)."""

    locations: ResultsLocations
    signing_key: str | None = None


@dataclass(frozen=True)
class AcceptedBatch:
    batch: BatchTask
    batch_id: str


@dataclass(frozen=True)
class Refusal:
    """Why a message is refused; `run_id`/`batch_id` where the message names them (unverified)."""

    kind: str
    reason: str
    run_id: str | None = None
    batch_id: str | None = None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_body(body: bytes | str) -> Any:
    """The JSON body of a message; `ValueError` for anything else (bad UTF-8, NaN, not JSON)."""
    text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
    if not isinstance(text, str):
        raise ValueError(f"the body is {type(body).__name__}, not text")
    return json.loads(text, parse_constant=_refuse_constant)


def _header_problem(headers: Mapping[str, Any]) -> str | None:
    """What in the headers Celery would choke on (it trusts them): None if they are plain."""
    if not isinstance(headers.get("id"), str) or not headers["id"]:
        return "the message has no task id"
    retries = headers.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        return f"retries {retries!r} is not a count"
    limits = headers.get("timelimit", [None, None])
    if not isinstance(limits, list) or len(limits) != 2 or not all(_is_limit(v) for v in limits):
        return f"timelimit {limits!r} is not [soft, hard]"
    for name in ("root_id", "parent_id", "group", "shadow", "argsrepr", "kwargsrepr", "origin"):
        if headers.get(name) is not None and not isinstance(headers[name], str):
            return f"header {name} is not text"
    return None


def _is_limit(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool) and value >= 0)


def _batch_parts(decoded: Any) -> tuple[dict[str, Any], str] | str:
    """(batch dict, batch id) from a decoded body, or what is wrong with it."""
    if not isinstance(decoded, list) or len(decoded) != 3:
        return "the body is not Celery's [args, kwargs, embed]"
    args, kwargs, embed = decoded
    if not isinstance(args, list) or len(args) != 1 or not isinstance(args[0], dict):
        return "args must be exactly one batch object"
    if not isinstance(kwargs, dict) or set(kwargs) != {"batch_id"}:
        return "kwargs must be exactly {batch_id}"
    batch_id = kwargs["batch_id"]
    if not isinstance(batch_id, str) or not is_safe_id(batch_id):
        return f"batch id {batch_id!r} is not a safe id"
    if not isinstance(embed, dict) or any(embed.get(name) for name in WORKFLOW_FIELDS):
        return "a batch may not carry callbacks, errbacks, chains or chords"
    return args[0], batch_id


def check_message(
    headers: object, body: bytes | str | None, content_type: object, policy: DoorPolicy
) -> AcceptedBatch | Refusal:
    """Accept the message as a batch this worker may run, or say why not (see the module docstring)."""
    if not isinstance(headers, Mapping):
        return Refusal("not_a_batch", "the message has no headers (not a Celery protocol-2 message)")
    run_hint = headers.get(RUN_HEADER) if isinstance(headers.get(RUN_HEADER), str) else None
    if headers.get("task") != TASK_NAME:
        return Refusal("not_a_batch", f"task {headers.get('task')!r} is not {TASK_NAME}", run_hint)
    if content_type != JSON_CONTENT_TYPE:
        return Refusal("undecodable", f"content type {content_type!r}; only {JSON_CONTENT_TYPE} is accepted", run_hint)
    delayed = [name for name in DELAY_HEADERS if headers.get(name) is not None]
    if delayed:
        return Refusal("not_a_batch", f"a batch runs now; it may not set {', '.join(delayed)}", run_hint)
    header_problem = _header_problem(headers)
    if header_problem is not None:
        return Refusal("not_a_batch", header_problem, run_hint)
    try:
        decoded = decode_body(body if body is not None else b"")
    except (ValueError, UnicodeDecodeError) as exc:
        return Refusal("undecodable", f"the body is not JSON ({exc})", run_hint)
    parts = _batch_parts(decoded)
    if isinstance(parts, str):
        return Refusal("not_a_batch", parts, run_hint)
    raw_batch, batch_id = parts
    run_id = raw_batch.get("run_id") if isinstance(raw_batch.get("run_id"), str) else run_hint

    if policy.signing_key is not None:
        signature = headers.get(SIGNATURE_HEADER)
        if signature is None:
            return Refusal(
                "unsigned", "the batch is not signed and this worker requires TOKENLENS_QUEUE_KEY", run_id, batch_id
            )
        if not signature_matches(policy.signing_key, raw_batch, batch_id, signature):
            return Refusal(
                "bad_signature", "the batch's signature does not match (another key, or altered)", run_id, batch_id
            )
    try:
        batch = BatchTask.model_validate(raw_batch)
    except ValidationError as exc:
        return Refusal("invalid_batch", f"not a valid batch: {describe_validation_error(exc)}", run_id, batch_id)
    if headers.get(RUN_HEADER) != batch.run_id:
        return Refusal(
            "invalid_batch", f"header {RUN_HEADER}={run_hint!r} does not name the batch's run", batch.run_id, batch_id
        )
    if not policy.locations.allows(batch.results_url):
        return Refusal(
            "results_location",
            f"results URL {batch.results_url!r} is not among this worker's results locations "
            f"({policy.locations.describe()}); start workers with --results for it",
            batch.run_id,
            batch_id,
        )
    return AcceptedBatch(batch=batch, batch_id=batch_id)
