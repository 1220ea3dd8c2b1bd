"""Configuration, in one home: flags, then TOKENLENS_* environment variables, then `tokenlens.defaults`.

`Settings.from_env()` is the only code that reads TOKENLENS_* variables (like arq's
settings object): every command builds one at start-up, passing the flags it was
given as overrides, and hands it on. A value that can't be used raises `ConfigError`,
whose message names the variable and what to set instead; the CLI prints it as one line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tokenlens import defaults
from tokenlens.devices import GPU_LIST_HELP, parse_gpu_list
from tokenlens.errors import ConfigError
from tokenlens.signing import check_key

#: The environment variables `Settings.from_env` reads, by the field each one sets.
ENV_VARS: Mapping[str, str] = {
    "results_url": "TOKENLENS_RESULTS",
    "broker_url": "TOKENLENS_BROKER_URL",
    "lease_timeout_s": "TOKENLENS_LEASE_TIMEOUT",
    "max_attempts": "TOKENLENS_MAX_ATTEMPTS",
    "batch_time_limit_s": "TOKENLENS_BATCH_TIME_LIMIT",
    "cache_dir": "TOKENLENS_CACHE_DIR",
    "worker_model": "TOKENLENS_MODEL",
    "worker_gpu": "TOKENLENS_GPU",
    "worker_device": "TOKENLENS_DEVICE",
    "worker_dtype": "TOKENLENS_DTYPE",
    "metrics_port": "TOKENLENS_METRICS_PORT",
    "metrics_host": "TOKENLENS_METRICS_HOST",
    "queue_key": "TOKENLENS_QUEUE_KEY",
    "test_crash_prompt_ids": "TOKENLENS_TEST_CRASH_PROMPT_IDS",
    "test_kill_during_write": "TOKENLENS_TEST_KILL_DURING_WRITE",
}


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """The user cache directory for converted weights (XDG_CACHE_HOME, else ~/.cache)."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / defaults.CACHE_SUBDIR


@dataclass(frozen=True)
class Settings:
    """Every tunable with its unit in its name. Read once per command with `Settings.from_env()`."""

    #: Where results are written and read (`--results`, TOKENLENS_RESULTS).
    results_url: str = defaults.RESULTS_URL
    #: The Redis broker (`--broker`, TOKENLENS_BROKER_URL).
    broker_url: str = defaults.BROKER_URL
    #: A lost worker's batch runs again elsewhere this long after its last heartbeat (TOKENLENS_LEASE_TIMEOUT).
    lease_timeout_s: int = defaults.LEASE_TIMEOUT_S
    #: A prompt that fails this many times becomes an error record (`--max-attempts`, TOKENLENS_MAX_ATTEMPTS).
    max_attempts: int = defaults.MAX_ATTEMPTS
    #: A worker's batch starts no new sub-batch after this long (TOKENLENS_BATCH_TIME_LIMIT; 0: the default).
    batch_time_limit_s: float = defaults.BATCH_TIME_LIMIT_S
    #: Converted GGUF weights (TOKENLENS_CACHE_DIR, else the user cache directory).
    cache_dir: Path = field(default_factory=lambda: default_cache_dir(os.environ))
    #: The model of a worker started by `celery -A worker.app worker` (TOKENLENS_MODEL).
    worker_model: str | None = None
    #: The GPU(s) such a worker pins (TOKENLENS_GPU: N, or N,M,... to shard the model over several).
    worker_gpu: tuple[int, ...] | None = None
    #: Its device (TOKENLENS_DEVICE).
    worker_device: str = defaults.DEVICE
    #: Its dtype (TOKENLENS_DTYPE).
    worker_dtype: str = defaults.DTYPE
    #: Its Prometheus port (TOKENLENS_METRICS_PORT; unset: no metrics server).
    metrics_port: int | None = None
    #: The address the metrics server listens on (`--metrics-host`, TOKENLENS_METRICS_HOST).
    metrics_host: str = defaults.METRICS_HOST
    #: The shared secret batches are signed with (TOKENLENS_QUEUE_KEY; tokenlens.signing). Never printed.
    queue_key: str | None = field(default=None, repr=False)
    #: TEST-ONLY, never set in production: prompt ids on which a worker kills itself with SIGKILL, as a
    #: segfault or the kernel's OOM killer would (TOKENLENS_TEST_CRASH_PROMPT_IDS, comma-separated; see
    #: tests/integration/test_poison_prompts.py).
    test_crash_prompt_ids: frozenset[str] = frozenset()
    #: TEST-ONLY, never set in production: the prompt id whose result write kills the worker with SIGKILL halfway
    #: (its temp file written, not yet in place), once (TOKENLENS_TEST_KILL_DURING_WRITE; see
    #: tests/integration/test_fault_injection.py).
    test_kill_during_write: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `environ` (default: this process's environment), then `overrides` that are not None.

        Raises `ConfigError` naming the variable when a value can't be used.
        """
        env = os.environ if environ is None else environ
        reader = _EnvReader(env)
        base = cls(
            results_url=reader.text("results_url") or defaults.RESULTS_URL,
            broker_url=reader.text("broker_url") or defaults.BROKER_URL,
            lease_timeout_s=reader.integer("lease_timeout_s", defaults.LEASE_TIMEOUT_S, minimum=1),
            max_attempts=reader.integer("max_attempts", defaults.MAX_ATTEMPTS, minimum=1),
            batch_time_limit_s=reader.seconds_or_default("batch_time_limit_s", defaults.BATCH_TIME_LIMIT_S),
            cache_dir=reader.path("cache_dir") or default_cache_dir(env),
            worker_model=reader.text("worker_model") or None,
            worker_gpu=reader.gpu_list("worker_gpu"),
            worker_device=reader.text("worker_device") or defaults.DEVICE,
            worker_dtype=reader.text("worker_dtype") or defaults.DTYPE,
            metrics_port=reader.optional_integer("metrics_port", minimum=1, maximum=65535),
            metrics_host=reader.text("metrics_host") or defaults.METRICS_HOST,
            queue_key=reader.secret("queue_key"),
            test_crash_prompt_ids=frozenset(p for p in reader.text("test_crash_prompt_ids").split(",") if p),
            test_kill_during_write=reader.text("test_kill_during_write") or None,
        )
        given = {name: value for name, value in overrides.items() if value is not None}
        unknown = sorted(set(given) - set(ENV_VARS))
        if unknown:
            raise TypeError(f"Settings has no field(s) {', '.join(unknown)}")
        return replace(base, **given)


class _EnvReader:
    """Parses one environment's TOKENLENS_* values, naming the variable in every error."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def text(self, name: str) -> str:
        return self.environ.get(ENV_VARS[name], "").strip()

    def secret(self, name: str) -> str | None:
        """A secret's value (unset: None); its errors never show it."""
        raw = self.environ.get(ENV_VARS[name], "").strip()  # a key file's trailing newline is not the key
        return check_key(raw) if raw else None

    def path(self, name: str) -> Path | None:
        raw = self.text(name)
        return Path(raw).expanduser() if raw else None

    def _fail(self, name: str, expected: str) -> ConfigError:
        variable = ENV_VARS[name]
        return ConfigError(
            f"environment variable {variable}={self.environ.get(variable)!r} must be {expected}; "
            f"fix it or unset {variable}"
        )

    def optional_integer(self, name: str, *, minimum: int, maximum: int | None = None) -> int | None:
        raw = self.text(name)
        if not raw:
            return None
        bounds = f"at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        try:
            value = int(raw)
        except ValueError:
            raise self._fail(name, f"a whole number {bounds}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise self._fail(name, f"a whole number {bounds}")
        return value

    def gpu_list(self, name: str) -> tuple[int, ...] | None:
        """GPU indices, N or N,M,... (unset: None)."""
        raw = self.text(name)
        if not raw:
            return None
        try:
            return parse_gpu_list(raw)
        except ConfigError:
            raise self._fail(name, f"{GPU_LIST_HELP}, each a whole number at least 0 and listed once") from None

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        value = self.optional_integer(name, minimum=minimum)
        return default if value is None else value

    def seconds_or_default(self, name: str, default: float) -> float:
        """A number of seconds; unset, 0 or negative means the default."""
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self._fail(name, "a number of seconds (0 for the default)") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise self._fail(name, "a finite number of seconds (0 for the default)")
        return value if value > 0 else default
