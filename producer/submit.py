"""Submit a run to the queue, report its progress, cancel it: the producer side of distributed runs.

Submit validates everything first (prompt set, method, options, model name,
results URL, broker) and enqueues nothing unless all of it is fine. Submitting
an existing run id again resumes it: only prompts without a valid result are
queued (every stored result is read and checked, so a corrupt one runs again).
With TOKENLENS_QUEUE_KEY set, every batch is signed (tokenlens.signing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from storage_backends import StorageError, open_storage
from tokenlens import defaults
from tokenlens.broker_url import redact_url
from tokenlens.dead_letters import RunDeadLetters, read_run_dead_letters
from tokenlens.errors import TokenLensError
from tokenlens.plan import plan_run
from tokenlens.progress import RunCounts, mark_cancelled, read_progress, run_counts
from tokenlens.prompt_sets import PromptSource
from tokenlens.queue import BrokerError, QueueProgress, RunQueue, connect_broker, queue_name
from tokenlens.results import RunStore
from tokenlens.schema import RunManifest
from tokenlens.spec import RunSpec, build_batches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubmitReport:
    """What `submit_run` did."""

    run_id: str
    queue: str
    prompt_count: int
    enqueued_prompts: int
    enqueued_batches: int
    already_done: int
    resumed: bool
    elapsed_s: float


def submit_run(
    spec: RunSpec, prompts_path: str | Path | PromptSource, *, broker_url: str, signing_key: str | None = None
) -> SubmitReport:
    """Validate a prompt set and queue it for `spec.model`'s workers; nothing is enqueued if anything is wrong.

    With `signing_key` (TOKENLENS_QUEUE_KEY), every batch carries its HMAC.
    """
    started = time.perf_counter()
    plan = plan_run(spec, prompts_path, mode="distributed")
    client = connect_broker(broker_url)  # an unreachable broker fails here, before run.json is written
    plan.save_manifest()
    spec, records, store = plan.spec, plan.records, plan.store
    model = spec.worker_model
    queue = queue_name(model)

    # A resumed run's results are read and checked: a corrupt one is queued again (its worker replaces it).
    done = read_progress(store, plan.manifest, verify=True).done_ids if plan.resumed else frozenset()
    pending = [r for r in records if r.id not in done]
    run_queue = RunQueue(client, spec.run_id, signing_key=signing_key)
    try:
        if plan.resumed:
            # Give failed prompts fresh attempts and forget their old error records; no longer cancelled.
            mark_cancelled(store, False)
            _clear_errors(store, [r.id for r in pending])
            run_queue.reset_attempts([r.id for r in pending])
        # A new session: what an earlier submit still has queued is dropped by the worker that pops it
        # (it is queued again below), and a cancel is cleared. Nothing scans the queue.
        session = run_queue.register(
            {
                "model": model,
                "queue": queue,
                "method": spec.method,
                "results_url": spec.results_url,
                "prompt_count": len(records),
                "submitted_at": time.time(),
                "done_at_submit": len(done),
            }
        )
        batches = build_batches(spec, pending, spec.batch_size or defaults.SUBMIT_BATCH_SIZE)
        run_queue.enqueue(batches, queue, session=session)
    except redis.RedisError as exc:
        raise BrokerError(
            f"the broker failed while queueing run {spec.run_id!r} ({exc}); submit it again to resume"
        ) from None
    return SubmitReport(
        run_id=spec.run_id,
        queue=queue,
        prompt_count=len(records),
        enqueued_prompts=len(pending),
        enqueued_batches=len(batches),
        already_done=len(done),
        resumed=plan.resumed,
        elapsed_s=time.perf_counter() - started,
    )


def _clear_errors(store: RunStore, pending: Sequence[str]) -> None:
    pending_set = set(pending)
    for prompt_id in store.ids("errors") & pending_set:
        store.clear_error(prompt_id)
    store.flush_progress()  # the run's progress record no longer counts them failed


@dataclass(frozen=True)
class RunStatus:
    """A run's progress: storage's counts, and what Redis knows (None when it can't tell)."""

    run_id: str
    manifest: RunManifest
    counts: RunCounts
    queue: QueueProgress | None
    #: Why `queue` is None, for the user ("Redis unreachable ...", "Redis has no record ...").
    queue_note: str | None
    checked_at: float
    #: Messages for this run that workers refused (tokenlens.dead_letters); None when Redis can't be asked.
    dead_letters: RunDeadLetters | None = None
    #: Result files found corrupt (only looked for beyond empty files with `verify`).
    corrupt_ids: frozenset[str] = frozenset()

    @property
    def finished(self) -> bool:
        """Nothing more will come from workers: every prompt has an outcome (a corrupt result waits for a resume)."""
        return self.counts.pending == 0

    def throughput_per_s(self) -> float | None:
        """Prompts finished per second in this session of the run: since the first worker took a batch of the
        latest submit (`started_at`, reset by each submit), counting only what finished since
        (`done_at_submit`, the done count when it was submitted). A pause before a resume is not counted."""
        if self.queue is None:
            return None
        since = self.queue.number("started_at")
        baseline = self.queue.number("done_at_submit") or 0.0
        if since is None:
            return None
        elapsed = self.checked_at - since
        finished = self.counts.done + self.counts.failed - baseline
        if elapsed <= 0 or finished <= 0:
            return None
        return finished / elapsed

    def eta_s(self) -> float | None:
        rate = self.throughput_per_s()
        if rate is None or rate <= 0:
            return None
        return self.counts.pending / rate


def run_status(run_id: str, *, results_url: str, broker_url: str, verify: bool = False) -> RunStatus:
    """Read a run's progress from storage (always) and Redis (when it can be reached and remembers the run).

    With `verify`, every result file is read and checked, and corrupt ones are not counted done.
    """
    storage = open_storage(results_url)
    store = RunStore(storage, run_id)
    manifest = store.read_manifest(prompt_ids=False)  # counts need the prompt count, not the list
    if verify:
        stored = read_progress(store, manifest, verify=True)
        counts, corrupt_ids = stored.counts, stored.corrupt_ids
    else:  # the progress record: a few small reads, however many prompts the run has
        counts, corrupt_ids = run_counts(store, manifest), frozenset()
    progress: QueueProgress | None = None
    note: str | None = None
    dead_letters: RunDeadLetters | None = None
    try:
        client = connect_broker(broker_url, timeout_s=2.0)
        progress = RunQueue(client, run_id).progress()
        dead_letters = read_run_dead_letters(client, run_id)
        if progress is None:
            note = (
                f"Redis at {redact_url(broker_url)} has no record of this run (flushed, expired, or submitted to "
                "another broker): counts come from storage alone; queued and in-flight are unknown"
            )
    except BrokerError:
        note = (
            f"Redis at {redact_url(broker_url)} is unreachable: counts come from storage alone; "
            "queued and in-flight are unknown"
        )
    except redis.RedisError as exc:
        note = f"Redis error ({exc}): counts come from storage alone; queued and in-flight are unknown"
    return RunStatus(
        run_id=run_id, manifest=manifest, counts=counts, queue=progress, queue_note=note, checked_at=time.time(),
        dead_letters=dead_letters, corrupt_ids=corrupt_ids,
    )  # fmt: skip


@dataclass(frozen=True)
class CancelReport:
    run_id: str
    queue: str
    removed_batches: int
    in_flight_batches: int


def cancel_run(run_id: str, *, broker_url: str, results_url: str | None = None) -> CancelReport:
    """Mark the run cancelled: workers drop its batches as they pop them and stop the ones they hold; results stay.

    O(1) in the queue's length (no scan of the queue): Redis is never blocked, however much is queued.
    """
    client = connect_broker(broker_url)
    run_queue = RunQueue(client, run_id)
    progress = run_queue.progress()
    queue = progress.info.get("queue") if progress is not None else None
    results_url = results_url or (progress.info.get("results_url") if progress is not None else None)
    if queue is None:
        if results_url is None:
            raise TokenLensError(
                f"Redis at {redact_url(broker_url)} has no record of run {run_id!r}; pass --results URL so "
                "the run's queue can be found from its run.json"
            )
        try:
            manifest = RunStore(open_storage(results_url), run_id).read_manifest(prompt_ids=False)
        except StorageError as exc:
            raise TokenLensError(f"can't read run {run_id!r} under {results_url}: {exc}") from None
        queue = queue_name(manifest.model)
    removed = run_queue.cancel()
    if results_url is not None:
        # The UI reads storage, not Redis: the record tells it to stop waiting for the run.
        try:
            mark_cancelled(RunStore(open_storage(results_url), run_id), True)
        except StorageError as exc:
            log.warning("run %s is cancelled, but its results storage could not record it (%s)", run_id, exc)
    return CancelReport(
        run_id=run_id,
        queue=queue,
        removed_batches=removed,
        in_flight_batches=progress.in_flight_batches if progress is not None else 0,
    )
