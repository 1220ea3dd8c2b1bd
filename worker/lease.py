"""How a worker keeps its lease on a batch (`LeaseTiming`), and how long it needs to stop (`SHUTDOWN_GRACE_S`).

The lease mechanism itself is described in worker/app.py. Deploy files and docs must agree with
these numbers; tests/deploy checks them. The values come from `tokenlens.defaults` and
`tokenlens.settings.Settings`; this module derives the timings kombu needs from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenlens.defaults import SHUTDOWN_GRACE_S
from tokenlens.errors import ConfigError

__all__ = ["MIN_LEASE_TIMEOUT_S", "SHUTDOWN_GRACE_S", "LeaseTiming"]

#: The shortest lease that still leaves room for heartbeats and restore sweeps.
MIN_LEASE_TIMEOUT_S = 4.0


@dataclass(frozen=True)
class LeaseTiming:
    """How a lease of `lease_timeout_s` is kept: all derived from TOKENLENS_LEASE_TIMEOUT.

    A lost worker's batch is back in the queue at most `visibility_timeout_s +
    restore_interval_s` = `lease_timeout_s` after its last heartbeat.
    """

    lease_timeout_s: float
    #: kombu's visibility timeout: an unacked message whose heartbeat is older than this is restored.
    visibility_timeout_s: float
    #: How often idle workers sweep for expired leases (kombu's unacked_restore_interval).
    restore_interval_s: float
    #: How often a busy worker renews the lease of the batch it runs; well below the visibility timeout.
    heartbeat_interval_s: float

    @classmethod
    def from_lease(cls, lease_timeout_s: float) -> LeaseTiming:
        """The timings for a lease; `ConfigError` if it is too short to keep."""
        if lease_timeout_s < MIN_LEASE_TIMEOUT_S:
            raise ConfigError(
                f"TOKENLENS_LEASE_TIMEOUT={lease_timeout_s:g} is too short; use at least {MIN_LEASE_TIMEOUT_S:g} s"
            )
        restore_interval_s = max(1.0, min(30.0, lease_timeout_s / 10))
        visibility_timeout_s = lease_timeout_s - restore_interval_s
        return cls(
            lease_timeout_s=lease_timeout_s,
            visibility_timeout_s=visibility_timeout_s,
            restore_interval_s=restore_interval_s,
            heartbeat_interval_s=visibility_timeout_s / 4,
        )
