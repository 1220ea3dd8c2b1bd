"""Each writer's running count of what it changed in a run: the writers' half of a run's progress record.

Every process that writes a run's results or error records (a worker, `tokenlens run`, the
Python API, `submit` clearing old errors) keeps one tally per run and stores it, alone, at

    runs/<run_id>/progress/w-<host>-<pid>-<token>.json   {"done": n, "failed": n, "removed": n, "updated_at": t}

`done` counts results this process *created* (results are create-only, so no result is
counted by two writers), `failed` error records it created minus those it cleared, and
`removed` the corrupt results it deleted. No two processes write the same object, so no
lock or compare-and-swap is needed, and a reader sums a handful of small objects (one per
writer) instead of listing every result. `tokenlens.progress` turns the tallies into counts
and says when they must be rebuilt from storage (missing, or possibly stale after a crash).

A tally is stored after each change (at most every `FLUSH_EVERY_S`), at the end of each
batch (`flush_run`), and when the process exits.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from storage_backends import Storage, StorageError

log = logging.getLogger(__name__)

#: A working writer stores its tally at most this often (and always at the end of a batch). 0: after every
#: change, so counts are never behind storage; one small write per outcome, next to a result's much larger one.
FLUSH_EVERY_S = 0.0
#: The folder of a run's progress record, and the prefix of writers' tallies in it.
PROGRESS_FOLDER = "progress"
TALLY_PREFIX = "w-"


def progress_prefix(run_id: str) -> str:
    """The folder under the storage root holding a run's progress record."""
    return f"runs/{run_id}/{PROGRESS_FOLDER}/"


class _WriterName:
    """This process's tally name; a forked child gets a new one, so two processes never share a tally."""

    def __init__(self) -> None:
        self.pid = -1
        self.name = ""

    def get(self) -> str:
        if self.pid != os.getpid():
            host = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname())[:40] or "host"
            self.pid = os.getpid()
            self.name = f"{TALLY_PREFIX}{host}-{self.pid}-{uuid.uuid4().hex[:8]}"
        return self.name


_writer = _WriterName()


@dataclass
class Tally:
    """What this process changed in one run's storage (cumulative since it started)."""

    storage: Storage
    run_id: str
    done: int = 0
    failed: int = 0
    removed: int = 0
    dirty: bool = False
    flushed_at: float = 0.0

    def key(self) -> str:
        return f"{progress_prefix(self.run_id)}{_writer.get()}.json"

    def flush(self) -> None:
        """Store the tally if it changed; a storage error is logged, never raised (counts heal by a rebuild)."""
        if not self.dirty:
            return
        body = {"done": self.done, "failed": self.failed, "removed": self.removed, "updated_at": time.time()}
        try:
            self.storage.put(self.key(), json.dumps(body).encode(), content_type="application/json")
        except StorageError as exc:
            log.warning("run %s: could not store the progress tally (%s); counts are rebuilt later", self.run_id, exc)
            return
        self.dirty = False
        self.flushed_at = time.monotonic()


_tallies: dict[tuple[str, str], Tally] = {}
_lock = threading.Lock()


def note(storage: Storage, run_id: str, *, done: int = 0, failed: int = 0, removed: int = 0) -> None:
    """Count a change this process made to the run's storage; stored now if the last store is old enough."""
    with _lock:
        tally = _tallies.setdefault((storage.url, run_id), Tally(storage, run_id))
        tally.done += done
        tally.failed += failed
        tally.removed += removed
        tally.dirty = True
        if time.monotonic() - tally.flushed_at >= FLUSH_EVERY_S:
            tally.flush()


def flush_run(storage: Storage, run_id: str) -> None:
    """Store this process's tally of the run now (the end of a batch)."""
    with _lock:
        tally = _tallies.get((storage.url, run_id))
        if tally is not None:
            tally.flush()


@atexit.register
def flush_all() -> None:
    """Store every tally not yet stored (at exit)."""
    with _lock:
        for tally in _tallies.values():
            tally.flush()


def _forget_after_fork() -> None:
    # A forked child inherits the parent's counts; they are the parent's to store, not the child's.
    global _lock
    _lock = threading.Lock()
    _tallies.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
