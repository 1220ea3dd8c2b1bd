"""The dead-letter list: messages a worker refused, kept in Redis with the reason, so nothing vanishes silently.

A worker that takes a message it cannot decode or must not run (not JSON, not a
TokenLens batch, unsigned or wrongly signed, for a results location it may not
write) acknowledges it, so it can't stop this or any other worker, and records it
here: the reason, the queue, the run id where one can be read, and the raw message
cut to `RAW_MESSAGE_CHARS`. Both keys are named in `tokenlens.queue`:

    tokenlens:dead_letters              every refused message (the newest `MAX_DEAD_LETTERS`)
    tokenlens:run:<run_id>:dead_letters the run's own (the newest `MAX_RUN_DEAD_LETTERS`),
                                        counted in the run's hash as `dead_letters`

`tokenlens status RUN` shows the run's count and latest reasons; an operator reads
the whole list with ``redis-cli LRANGE tokenlens:dead_letters 0 -1``.

Recording is at least once: a worker that loses Redis between recording a message
and acknowledging it sees the message again after the lease, and records it again.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from tokenlens.batch import is_safe_id
from tokenlens.queue import DEAD_LETTERS_KEY, RUN_KEYS_TTL_S, RunKeys

#: How much of a refused message is kept: enough to see what it was, not a whole prompt set.
RAW_MESSAGE_CHARS = 2000
MAX_DEAD_LETTERS = 10_000
MAX_RUN_DEAD_LETTERS = 100
#: What kinds of refusal there are (the `reason` label of the tokenlens_dead_letters_total metric).
KINDS = ("undecodable", "not_a_batch", "invalid_batch", "unsigned", "bad_signature", "results_location")


@dataclass(frozen=True)
class DeadLetter:
    """One refused message."""

    kind: str
    reason: str
    queue: str
    run_id: str | None
    batch_id: str | None
    worker: str
    raw: str
    at: float

    @classmethod
    def of(
        cls,
        kind: str,
        reason: str,
        *,
        queue: str,
        raw: str | bytes,
        worker: str,
        run_id: str | None = None,
        batch_id: str | None = None,
    ) -> DeadLetter:
        if kind not in KINDS:
            raise ValueError(f"unknown dead-letter kind {kind!r}; one of {KINDS}")
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        # A run id from a hostile message names Redis keys: only a safe one is trusted to.
        safe_run = run_id if isinstance(run_id, str) and is_safe_id(run_id) else None
        safe_batch = batch_id if isinstance(batch_id, str) and is_safe_id(batch_id) else None
        return cls(
            kind=kind,
            reason=reason,
            queue=queue,
            run_id=safe_run,
            batch_id=safe_batch,
            worker=worker,
            raw=text[:RAW_MESSAGE_CHARS],
            at=time.time(),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: bytes | str) -> DeadLetter | None:
        """A stored entry, or None if it is not one (the list is in a shared Redis)."""
        try:
            data: Any = json.loads(raw)
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except (ValueError, TypeError, KeyError):
            return None


def record_dead_letter(client: redis.Redis, letter: DeadLetter) -> None:
    """Keep `letter` in the dead-letter list (and its run's, with the run's count), newest first."""
    entry = letter.to_json()
    pipe = client.pipeline(transaction=True)
    pipe.lpush(DEAD_LETTERS_KEY, entry)
    pipe.ltrim(DEAD_LETTERS_KEY, 0, MAX_DEAD_LETTERS - 1)
    if letter.run_id is not None:
        keys = RunKeys(letter.run_id)
        pipe.lpush(keys.dead_letters, entry)
        pipe.ltrim(keys.dead_letters, 0, MAX_RUN_DEAD_LETTERS - 1)
        pipe.expire(keys.dead_letters, RUN_KEYS_TTL_S)
        pipe.hincrby(keys.info, "dead_letters", 1)
        pipe.expire(keys.info, RUN_KEYS_TTL_S)
    pipe.execute()


@dataclass(frozen=True)
class RunDeadLetters:
    """A run's refused messages: how many in all, and the latest few."""

    count: int
    latest: list[DeadLetter]


def read_run_dead_letters(client: redis.Redis, run_id: str, latest: int = 3) -> RunDeadLetters:
    """The run's dead-letter count and its `latest` entries, newest first."""
    keys = RunKeys(run_id)
    pipe = client.pipeline(transaction=False)
    pipe.hget(keys.info, "dead_letters")
    pipe.lrange(keys.dead_letters, 0, max(latest, 1) - 1)
    count_raw, entries = pipe.execute()
    letters = [letter for letter in map(DeadLetter.from_json, entries) if letter is not None]
    try:
        count = int(count_raw) if count_raw is not None else len(letters)
    except ValueError:
        count = len(letters)
    return RunDeadLetters(count=count, latest=letters[:latest])
