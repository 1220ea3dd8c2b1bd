"""Configuration, in one home: flags, then TOKENLENS_* environment variables, then defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_RESULTS_URL = "./results"
DEFAULT_BROKER_URL = "redis://localhost:6379/0"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer") from None


@dataclass(frozen=True)
class Settings:
    """Every tunable with its unit in its name. Read once with `Settings.from_env()`."""

    #: Where results are written and read (`--results`, TOKENLENS_RESULTS).
    results_url: str = DEFAULT_RESULTS_URL
    #: The Celery broker (`--broker`, TOKENLENS_BROKER_URL).
    broker_url: str = DEFAULT_BROKER_URL
    #: A lost worker's batch is redelivered after this long (TOKENLENS_LEASE_TIMEOUT).
    lease_timeout_s: int = 600
    #: A prompt that fails this many times becomes an error record (TOKENLENS_MAX_ATTEMPTS).
    max_attempts: int = 3
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        base = cls(
            results_url=os.environ.get("TOKENLENS_RESULTS") or DEFAULT_RESULTS_URL,
            broker_url=os.environ.get("TOKENLENS_BROKER_URL") or DEFAULT_BROKER_URL,
            lease_timeout_s=_env_int("TOKENLENS_LEASE_TIMEOUT", 600),
            max_attempts=_env_int("TOKENLENS_MAX_ATTEMPTS", 3),
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(base, **given)
