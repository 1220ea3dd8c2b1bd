"""Signed batches: an HMAC-SHA256 of each batch under a key producers and workers share (TOKENLENS_QUEUE_KEY).

With a key set, `tokenlens submit` signs every batch it queues and workers refuse
(to the dead-letter list) any batch whose signature is missing or wrong, so that
only holders of the key can have work done, even by someone who can write to Redis.
The signature covers a canonical encoding of the batch and its batch id: JSON with
sorted keys, no whitespace, UTF-8. It travels in a message header
(`tokenlens.queue.SIGNATURE_HEADER`), never inside the batch itself.

The key is a secret: it is read from the environment only, never printed, logged
or put in a message (`Settings` keeps it out of its repr).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from tokenlens.errors import ConfigError

#: A shorter key is too easy to guess; `openssl rand -hex 32` gives one of 64 characters.
MIN_KEY_CHARS = 32
KEY_HELP = "generate one with `openssl rand -hex 32` and give producers and workers the same value"


def check_key(key: str) -> str:
    """The key if it is long enough; `ConfigError` (never showing the key) otherwise."""
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"TOKENLENS_QUEUE_KEY is {len(key)} characters; use at least {MIN_KEY_CHARS} ({KEY_HELP})")
    return key


def canonical_batch(batch: Mapping[str, Any], batch_id: str) -> bytes:
    """The bytes a signature covers: the batch and its id as canonical JSON."""
    document = {"batch": batch, "batch_id": batch_id}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign_batch(key: str, batch: Mapping[str, Any], batch_id: str) -> str:
    """The hex HMAC-SHA256 of the batch under `key`."""
    return hmac.new(key.encode("utf-8"), canonical_batch(batch, batch_id), hashlib.sha256).hexdigest()


def signature_matches(key: str, batch: Mapping[str, Any], batch_id: str, signature: object) -> bool:
    """Whether `signature` is the batch's signature under `key` (compared in constant time)."""
    if not isinstance(signature, str):
        return False
    try:
        expected = sign_batch(key, batch, batch_id)
    except (TypeError, ValueError):  # not JSON-encodable canonically (NaN, odd types): not ours
        return False
    return hmac.compare_digest(expected, signature)
