"""The Celery task that runs one batch: a thin wrapper around `tokenlens.pipeline.process_batch`.

Around the shared pipeline it adds only what a queue needs: the lease heartbeat,
attempt counting that survives crashes, hand-back on shutdown, cancel, and the
bookkeeping `tokenlens status` reads (tokenlens/queue.py).

Attempts. A prompt's try is counted in Redis *before* it starts, so a prompt
that kills its worker (segfault, out of host memory, kill -9) is still counted.
A batch's fresh prompts run together; a prompt that was tried before runs on
its own, so a poison prompt only charges itself. A prompt whose count already
reached TOKENLENS_MAX_ATTEMPTS without an outcome becomes an error record
without running again, and the rest of its batch goes on.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Reject
from pydantic import ValidationError

from tokenlens.batch import BatchTask, PromptRecord, describe_validation_error
from tokenlens.message_check import Refusal
from tokenlens.queue import TASK_NAME, UNACKED_INDEX_KEY, RunQueue, queue_name, session_of
from tokenlens.results import RunStore
from tokenlens.schema import ErrorRecord
from worker.app import app
from worker.message_guard import record_refusal
from worker.runtime import WorkerRuntime, current_runtime, gpu_peak_memory_bytes

if TYPE_CHECKING:
    from tokenlens.pipeline import BatchReport

log = logging.getLogger(__name__)

#: Exit status of a worker whose batch hung past twice the batch time limit (EX_SOFTWARE).
HUNG_EXIT_STATUS = 70
#: Seconds to wait before handing back a batch that failed outside the engine (storage down, ...).
FAILED_BATCH_BACKOFF_S = 5.0


def _crash_if_test_poison(rt: WorkerRuntime, prompts: list[PromptRecord]) -> None:
    """TEST-ONLY (`Settings.test_crash_prompt_ids`, empty in production): die as a segfault would."""
    if rt.settings.test_crash_prompt_ids & {p.id for p in prompts}:
        log.critical("killing this worker on a test poison prompt (TOKENLENS_TEST_CRASH_PROMPT_IDS)")
        os.kill(os.getpid(), signal.SIGKILL)


def install_test_kill_during_write(victim: str) -> None:
    """TEST-ONLY (`Settings.test_kill_during_write`, unset in production): SIGKILL this worker in the middle of
    writing `victim`'s result, where local storage has written and synced its temp file but not yet linked it in
    place; once (not again while that temp file is left over), so the restarted worker finishes the run."""
    real_link = os.link

    def link_or_die(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        target = Path(os.fsdecode(dst))
        leftover = list(target.parent.glob(f".{target.name}.*.tmp"))
        if target.name == f"{victim}.json" and target.parent.name == "results" and leftover == [Path(os.fsdecode(src))]:
            log.critical("killing this worker while it writes %s (TOKENLENS_TEST_KILL_DURING_WRITE)", target)
            os.kill(os.getpid(), signal.SIGKILL)
        real_link(src, dst, *args, **kwargs)

    os.link = link_or_die


class LeaseHeartbeat:
    """Renews the lease of the message being worked on while the batch runs (see worker/app.py)."""

    def __init__(self, rt: WorkerRuntime, delivery_tag: str) -> None:
        self.rt = rt
        self.delivery_tag = delivery_tag
        self.started = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tokenlens-lease", daemon=True)

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def _run(self) -> None:
        hung_after_s = 2 * self.rt.batch_time_limit_s
        while not self._done.wait(self.rt.lease.heartbeat_interval_s):
            if time.monotonic() - self.started > hung_after_s:
                log.critical(
                    "batch still running after %.0fs (twice TOKENLENS_BATCH_TIME_LIMIT): the worker is hung; "
                    "exiting so its batch goes to another worker after the lease",
                    hung_after_s,
                )
                os._exit(HUNG_EXIT_STATUS)
            try:
                # XX: only renew; never resurrect an entry kombu removed on ack.
                self.rt.broker.zadd(UNACKED_INDEX_KEY, {self.delivery_tag: time.time()}, xx=True)
            except Exception as exc:  # Redis restarting: the next beat retries, the lease is longer than a beat
                log.warning("lease heartbeat failed (%s); retrying in %.0fs", exc, self.rt.lease.heartbeat_interval_s)


class StopCheck:
    """`should_stop` for the pipeline: shutdown requested, run cancelled, or batch time limit reached."""

    #: Redis is asked about a cancel at most this often.
    CANCEL_POLL_S = 2.0

    def __init__(self, rt: WorkerRuntime, run_queue: RunQueue) -> None:
        self.rt = rt
        self.run_queue = run_queue
        self.deadline = time.monotonic() + rt.batch_time_limit_s
        self.reason: str | None = None
        self._cancel_checked = 0.0

    def __call__(self) -> bool:
        if self.reason is None:
            if self.rt.stop_requested.is_set():
                self.reason = "shutdown"
            elif time.monotonic() > self.deadline:
                self.reason = "time limit"
            elif self._cancelled():
                self.reason = "cancelled"
        return self.reason is not None

    def _cancelled(self) -> bool:
        now = time.monotonic()
        if now - self._cancel_checked < self.CANCEL_POLL_S:
            return False
        self._cancel_checked = now
        try:
            return self.run_queue.is_cancelled()
        except Exception:  # a Redis blip must not stop the batch
            return False


@app.task(name=TASK_NAME, bind=True)
def attribute_batch(self: Task, task: dict[str, Any], batch_id: str) -> dict[str, Any]:
    """Attribute one batch of prompts and store the results (see the module docstring).

    Celery removes a batch whose task raised (acks_late only protects against a
    lost worker), so nothing but `Reject(requeue=True)` may leave this function.
    """
    rt = current_runtime()
    # The consumer checked the message already (worker/message_guard.py); checked again here, for any
    # other way a call could arrive. A refused batch is acknowledged by returning.
    run_hint = task.get("run_id") if isinstance(task, dict) else None
    try:
        batch = BatchTask.model_validate(task)
    except ValidationError as exc:
        refusal = Refusal("invalid_batch", f"not a valid batch: {describe_validation_error(exc)}", run_hint, batch_id)
        record_refusal(rt, refusal, queue=rt.queue, raw=repr(task))
        return {"refused": refusal.reason}
    if not rt.locations.allows(batch.results_url):
        reason = f"results URL {batch.results_url!r} is not among this worker's results locations"
        record_refusal(rt, Refusal("results_location", reason, batch.run_id, batch_id), queue=rt.queue, raw="")
        return {"refused": reason}
    delivery_tag = (self.request.properties or {}).get("delivery_tag")
    try:
        if not delivery_tag:  # called directly, not from a queue: no lease to keep
            return run_batch(rt, batch, batch_id)
        with LeaseHeartbeat(rt, str(delivery_tag)):
            return run_batch(rt, batch, batch_id)
    except Exception as exc:
        # Outside the engine (storage or Redis down, ...): give the batch back, after a pause, rather than
        # lose it. Attempts were counted before each try, so one bad prompt cannot loop forever.
        log.exception("batch %s of run %s failed outside the engine; handing it back", batch_id, batch.run_id)
        time.sleep(FAILED_BATCH_BACKOFF_S)
        try:
            RunQueue(rt.broker, batch.run_id).mark_requeued(batch_id, len(batch.prompts))
        except Exception:
            log.warning("could not update the queued count of run %s", batch.run_id)
        raise Reject(exc, requeue=True) from exc


def run_batch(rt: WorkerRuntime, batch: BatchTask, batch_id: str) -> dict[str, Any]:
    """Everything one delivery of a batch does; the return value shows in Flower's task result."""
    # Batches this worker queues (re-routed, handed back) are signed like the producer's.
    run_queue = RunQueue(rt.broker, batch.run_id, signing_key=rt.settings.queue_key)
    right_queue = queue_name(batch.model)
    if right_queue != rt.queue:
        # Only possible when an operator points a worker at another model's queue: route it where it belongs.
        run_queue.enqueue([batch], right_queue, [batch_id])
        log.error(
            "batch %s is for model %s (queue %s), not %s: re-routed", batch_id, batch.model, right_queue, rt.queue
        )
        return {"rerouted": right_queue}

    started = time.perf_counter()
    # One O(1) call: the batch is dropped here if its run was cancelled or submitted again since it was queued.
    taken = run_queue.take(batch_id, len(batch.prompts))
    if taken != "taken":
        why = "the run was cancelled" if taken == "cancelled" else "the run was submitted again since"
        log.info("batch %s of run %s dropped: %s", batch_id, batch.run_id, why)
        return {taken: True}
    outcome, stop = _attribute(rt, batch, run_queue)
    if outcome.retry and stop.reason != "cancelled":
        retry_ids = set(outcome.retry)
        handed_back = batch.model_copy(update={"prompts": [p for p in batch.prompts if p.id in retry_ids]})
        run_queue.enqueue([handed_back], rt.queue, session=session_of(batch_id))
    run_queue.mark_finished(batch_id)
    elapsed_s = time.perf_counter() - started
    if rt.metrics is not None:
        rt.metrics.observe_batch(
            done=len(outcome.done),
            failed=len(outcome.failed),
            tokens=outcome.tokens_attributed,
            elapsed_s=elapsed_s,
            gpu_memory_bytes=gpu_peak_memory_bytes(rt.loaded.device),
        )
    log.info(
        "batch %s run %s: done=%s skipped=%s failed=%s retry=%s%s in %.2fs",
        batch_id,
        batch.run_id,
        ",".join(outcome.done) or "-",
        ",".join(outcome.skipped) or "-",
        ",".join(outcome.failed) or "-",
        ",".join(outcome.retry) or "-",
        f" (stopped: {stop.reason})" if stop.reason else "",
        elapsed_s,
    )
    return outcome.summary()


def _attribute(rt: WorkerRuntime, batch: BatchTask, run_queue: RunQueue) -> tuple[BatchReport, StopCheck]:
    from tokenlens.pipeline import BatchReport, process_batch, result_done

    storage = rt.storage_for(batch.results_url)
    store = RunStore(storage, batch.run_id)
    stop = StopCheck(rt, run_queue)
    outcome = BatchReport()
    max_attempts = rt.settings.max_attempts

    # A prompt with a result or an error record has its outcome for this submission (resubmit clears errors).
    todo: list[PromptRecord] = []
    for record in batch.prompts:
        # A corrupt result is removed here (result_done), so the prompt is attributed again.
        if result_done(store, record.id) or storage.exists(store.key("errors", record.id)):
            outcome.skipped.append(record.id)
        else:
            todo.append(record)
    tried = run_queue.attempts([p.id for p in todo])
    fresh = [p for p in todo if tried[p.id] == 0]
    retried = [p for p in todo if tried[p.id] > 0]

    def run(prompts: list[PromptRecord]) -> None:
        attempts = run_queue.charge([p.id for p in prompts])
        _crash_if_test_poison(rt, prompts)
        report = process_batch(
            rt.loaded,
            batch.model_copy(update={"prompts": prompts}),
            storage=storage,
            attempts=attempts,
            max_attempts=max_attempts,
            should_stop=stop,
        )
        if stop.reason is not None:
            # Prompts handed back unstarted are not charged (a failed one may get one extra try).
            run_queue.refund(report.retry)
        report.results.clear()  # the worker reports ids, not whole results
        outcome.merge(report)

    if fresh:
        run(fresh)
    for record in retried:
        if stop():
            outcome.retry.append(record.id)
        elif tried[record.id] >= max_attempts:
            store.write_error(
                ErrorRecord(
                    run_id=batch.run_id,
                    prompt_id=record.id,
                    prompt=record.prompt,
                    error_type="WorkerLost",
                    message=(
                        f"{tried[record.id]} tries of this prompt never finished: the worker running it was lost "
                        "(killed, crashed, out of memory) or its batch failed outside the engine; see worker logs"
                    ),
                    attempts=tried[record.id],
                )
            )
            outcome.failed.append(record.id)
        else:
            run([record])
    return outcome, stop
