"""Integration-test fixtures: real worker processes (tests/integration/workers.py); Redis comes from tests/fixtures."""

from tests.integration.workers import start_worker

__all__ = ["start_worker"]
