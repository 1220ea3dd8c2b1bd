"""Submit a run to the queue, report its progress, cancel it: the producer side of distributed runs.

Submit validates everything first (prompt set, method, options, model name,
results URL, broker) and enqueues nothing unless all of it is fine. Submitting
an existing run id again resumes it: only prompts without a result are queued.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from storage_backends import Storage, StorageError, open_storage
from tokenlens.batch import BatchTask, PromptRecord
from tokenlens.errors import TokenLensError
from tokenlens.plan import plan_run
from tokenlens.queue import BrokerError, QueueProgress, RunQueue, connect_broker, queue_name, redact_url
from tokenlens.results import RunCounts, RunStore
from tokenlens.schema import RunManifest

DEFAULT_BATCH_SIZE = 8


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
    prompts_path: str | Path,
    *,
    model: str,
    method: str,
    results_url: str,
    broker_url: str,
    run_id: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = 64,
    engine: str = "auto",
    method_params: dict[str, Any] | None = None,
    chat_template: bool = True,
) -> SubmitReport:
    """Validate a prompt set and queue it for `model`'s workers; nothing is enqueued if anything is wrong."""
    started = time.perf_counter()
    if batch_size < 1:
        raise TokenLensError(f"--batch-size {batch_size} must be at least 1")
    plan = plan_run(
        prompts_path, model=model, method=method, engine=engine, method_params=method_params,
        max_new_tokens=max_new_tokens, chat_template=chat_template, results_url=results_url, run_id=run_id,
        mode="distributed",
    )  # fmt: skip
    client = connect_broker(broker_url)  # an unreachable broker fails here, before run.json is written
    plan.save_manifest()
    records, options, storage, store, resumed = plan.records, plan.options, plan.storage, plan.store, plan.resumed
    model = plan.manifest.model
    queue = queue_name(model)

    done = store.ids("results")
    pending = [r for r in records if r.id not in done]
    run_queue = RunQueue(client, run_id)
    try:
        # Resuming: drop what an earlier submit still has queued (it is queued again below), clear a
        # cancel, give failed prompts fresh attempts, and forget their old error records.
        run_queue.remove_queued(queue)
        _clear_errors(store, storage, [r.id for r in pending])
        run_queue.reset_attempts([r.id for r in pending])
        run_queue.register(
            {
                "model": model,
                "queue": queue,
                "method": method,
                "results_url": storage.url,
                "prompt_count": len(records),
                "submitted_at": time.time(),
                "done_at_submit": len(done),
            }
        )
        batches = [
            BatchTask(
                run_id=run_id,
                results_url=storage.url,
                model=model,
                method=method,
                engine=engine,
                method_params=options,
                max_new_tokens=max_new_tokens,
                chat_template=chat_template,
                prompts=chunk,
            )
            for chunk in _chunks(pending, batch_size)
        ]
        run_queue.enqueue(batches, queue)
    except redis.RedisError as exc:
        raise BrokerError(
            f"the broker failed while queueing run {run_id!r} ({exc}); submit it again to resume"
        ) from None
    return SubmitReport(
        run_id=run_id,
        queue=queue,
        prompt_count=len(records),
        enqueued_prompts=len(pending),
        enqueued_batches=len(batches),
        already_done=len(done),
        resumed=resumed,
        elapsed_s=time.perf_counter() - started,
    )


def _chunks(items: Sequence[PromptRecord], size: int) -> list[list[PromptRecord]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _clear_errors(store: RunStore, storage: Storage, pending: Sequence[str]) -> None:
    pending_set = set(pending)
    for prompt_id in store.ids("errors") & pending_set:
        store.clear_error(prompt_id)


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

    @property
    def finished(self) -> bool:
        return self.counts.remaining == 0

    def throughput_per_s(self) -> float | None:
        """Prompts finished per second since the first worker took a batch of this submission."""
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
        return self.counts.remaining / rate


def run_status(run_id: str, *, results_url: str, broker_url: str) -> RunStatus:
    """Read a run's progress from storage (always) and Redis (when it can be reached and remembers the run)."""
    storage = open_storage(results_url)
    store = RunStore(storage, run_id)
    manifest = store.read_manifest()
    counts = store.counts()
    progress: QueueProgress | None = None
    note: str | None = None
    try:
        client = connect_broker(broker_url, timeout_s=2.0)
        progress = RunQueue(client, run_id).progress()
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
        run_id=run_id, manifest=manifest, counts=counts, queue=progress, queue_note=note, checked_at=time.time()
    )


@dataclass(frozen=True)
class CancelReport:
    run_id: str
    queue: str
    removed_batches: int
    in_flight_batches: int


def cancel_run(run_id: str, *, broker_url: str, results_url: str | None = None) -> CancelReport:
    """Remove the run's queued batches and tell workers to drop the ones they hold; results stay."""
    client = connect_broker(broker_url)
    run_queue = RunQueue(client, run_id)
    progress = run_queue.progress()
    queue = progress.info.get("queue") if progress is not None else None
    if queue is None:
        if results_url is None:
            raise TokenLensError(
                f"Redis at {redact_url(broker_url)} has no record of run {run_id!r}; pass --results URL so "
                "the run's queue can be found from its run.json"
            )
        try:
            manifest = RunStore(open_storage(results_url), run_id).read_manifest()
        except StorageError as exc:
            raise TokenLensError(f"can't read run {run_id!r} under {results_url}: {exc}") from None
        queue = queue_name(manifest.model)
    # Flag first, so a worker that pops a batch while we sweep the queue drops it.
    run_queue.cancel()
    removed = run_queue.remove_queued(queue)
    return CancelReport(
        run_id=run_id,
        queue=queue,
        removed_batches=removed,
        in_flight_batches=progress.in_flight_batches if progress is not None else 0,
    )
