"""LeaseTiming: a lost batch is back within the lease, and a lease too short to keep is a ConfigError."""

from __future__ import annotations

import pytest

from tokenlens.errors import ConfigError
from worker.lease import LeaseTiming


def test_lease_timing_returns_a_lost_batch_within_the_lease() -> None:
    for lease_s in (4.0, 15.0, 600.0, 7200.0):
        timing = LeaseTiming.from_lease(lease_s)
        assert timing.visibility_timeout_s + timing.restore_interval_s == pytest.approx(lease_s)
        assert timing.heartbeat_interval_s * 3 < timing.visibility_timeout_s
    assert LeaseTiming.from_lease(600).restore_interval_s == 30
    with pytest.raises(ConfigError, match="TOKENLENS_LEASE_TIMEOUT=2 is too short"):
        LeaseTiming.from_lease(2)
