"""How a worker keeps its lease on a batch (LeaseTiming), its batch time limit and its shutdown grace.

Deploy files and docs must agree with these numbers; tests/deploy checks them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: Seconds a worker needs after SIGTERM to finish or hand back its current batch and exit.
#: After SIGTERM the worker finishes the engine sub-batch it is in (at most 8 prompts on the native
#: engine, 1 on Inseq), hands the rest of its batch back to the queue and exits. Size it above your
#: slowest sub-batch; if the grace runs out and the worker is killed, nothing is lost: its batch comes
#: back after the lease (TOKENLENS_LEASE_TIMEOUT). Deploy files give at least this as their stop grace
#: period (tests/deploy checks it).
SHUTDOWN_GRACE_S = 120

#: The shortest lease that still leaves room for heartbeats and restore sweeps.
MIN_LEASE_TIMEOUT_S = 4.0
#: Default batch time limit (TOKENLENS_BATCH_TIME_LIMIT): past it a batch takes no new sub-batch and
#: hands the rest back; past twice it the worker is declared hung and exits (see worker/app.py).
DEFAULT_BATCH_TIME_LIMIT_S = 3600.0


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
        if lease_timeout_s < MIN_LEASE_TIMEOUT_S:
            raise ValueError(
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


def batch_time_limit_s() -> float:
    """TOKENLENS_BATCH_TIME_LIMIT in seconds (0 or unset: the default)."""
    raw = os.environ.get("TOKENLENS_BATCH_TIME_LIMIT", "").strip()
    if not raw:
        return DEFAULT_BATCH_TIME_LIMIT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"TOKENLENS_BATCH_TIME_LIMIT={raw!r} must be a number of seconds") from None
    return value if value > 0 else DEFAULT_BATCH_TIME_LIMIT_S
