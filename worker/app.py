"""The Celery app `app` and every Celery setting TokenLens relies on, each chosen on purpose.

`tokenlens worker --model M` configures and starts it; operators who prefer
Celery's own CLI can run ``TOKENLENS_MODEL=M celery -A worker.app worker``
(the model, queue, solo pool and concurrency 1 come from here).

How a lost worker's batch comes back (leases)
---------------------------------------------
The lease is kombu's Redis *visibility timeout*, renewed by a *heartbeat*.
kombu's Redis transport keeps every delivered, unacknowledged message in the
`unacked` hash and its delivery time in the `unacked_index` sorted set; idle
workers periodically restore messages whose time there is older than the
visibility timeout (kombu 5.7: `QoS.restore_visible`, run by the event loop
every `unacked_restore_interval` s, every `unacked_restore_throttle`-th time).
kombu alone would therefore hand a batch that runs longer than the timeout to a
second worker while the first is still on it. So while a batch runs, a
heartbeat thread in the worker rewrites that batch's time in `unacked_index`
(ZADD XX) every `heartbeat_interval_s`; only a worker that stopped
heartbeating (killed with -9, node gone, or hung past twice the batch time
limit) loses its batch. With TOKENLENS_LEASE_TIMEOUT = L (worker.lease.LeaseTiming):

    visibility timeout = L - sweep interval,  sweep interval = clamp(L/10, 1 s, 30 s)  (throttle 1)
    heartbeat interval = visibility timeout / 4

so a lost batch is back in the queue at most L seconds after its worker's last
heartbeat, and taken by the next idle worker. (Verified with kill -9 in
tests/integration/test_worker_lost.py.)

Time limits: the rule "task time limit below the visibility timeout" exists so
that a live worker never loses its batch; here the heartbeat interval is what
stays below the visibility timeout, and batches may run longer than the lease.
Celery does not enforce time limits in the solo pool, so TokenLens enforces
its own batch limit (TOKENLENS_BATCH_TIME_LIMIT, default tokenlens.defaults.BATCH_TIME_LIMIT_S = 3600 s): past it a
batch starts no new sub-batch and hands the rest back; past twice it the worker
is declared hung, stops heartbeating and exits non-zero, so its batch comes
back elsewhere after the lease with an attempt charged.

Hostile messages: anyone who can write to the broker can push anything onto a
queue, so `broker_transport` and `worker_consumer` are TokenLens's guarded
versions of kombu's and Celery's (worker/message_guard.py): a message that is
not a valid batch this worker may run goes to the dead-letter list instead of
stopping the worker.

Shutdown: SIGTERM starts Celery's warm shutdown. The running batch finishes the
engine sub-batch it is in, hands its unstarted prompts back to the queue (no
attempt charged), is acknowledged, and the worker exits: tokenlens.defaults.SHUTDOWN_GRACE_S.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any
from urllib.parse import urlparse

from celery import Celery, signals
from kombu.entity import Queue

from tokenlens.queue import queue_name
from tokenlens.settings import Settings
from worker.lease import LeaseTiming

log = logging.getLogger(__name__)

app = Celery("tokenlens", include=["worker.tasks"])


def configure(app: Celery, settings: Settings, model: str | None = None) -> None:
    """Apply TokenLens's Celery settings for `settings` (broker, lease) and, if given, `model`'s queue."""
    lease = LeaseTiming.from_lease(float(settings.lease_timeout_s))
    app.conf.update(
        broker_url=settings.broker_url,
        # Every message passes TokenLens's door before Celery sees it (worker/message_guard.py).
        broker_transport="worker.message_guard:GuardedRedisTransport",
        worker_consumer="worker.message_guard:GuardedConsumer",
        # JSON only: task messages are data (ids, texts, settings), never pickles a broker user could forge.
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # Results go to storage, not to Celery's result backend.
        task_ignore_result=True,
        result_backend=None,
        # Acknowledge a batch only after it is done, and give it back if the worker process dies,
        # so that a lost worker costs time, never prompts.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One batch at a time per worker: a prefetched batch would wait behind the running one
        # (and hold a lease) while another worker sits idle.
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        # One process, one model: no fork after the model (and CUDA) are loaded. Celery lets these
        # settings win over `celery worker -P/-c`, so operators can't pick a pool that would break it.
        worker_pool="solo",
        # Task events for Flower and `celery events`.
        worker_send_task_events=True,
        task_send_sent_event=True,
        # Keep reconnecting forever when Redis restarts or is not up yet.
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_channel_error_retry=True,
        # A batch running when the connection drops goes on: kombu's Redis acks are by delivery tag in the
        # `unacked` hash, which survives reconnects, so its ack still lands afterwards.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options={
            "visibility_timeout": lease.visibility_timeout_s,
            "unacked_restore_interval": lease.restore_interval_s,
            "unacked_restore_throttle": 1,
            # A worker killed during a restore sweep holds kombu's sweep mutex until this expires.
            "unacked_mutex_expire": max(5, int(lease.lease_timeout_s)),
            # A broker that vanishes without closing TCP must not hang a worker forever.
            "socket_timeout": 30,
            "socket_connect_timeout": 10,
            "socket_keepalive": True,
            "health_check_interval": 25,
        },
        # Time limits are TokenLens's own (see the module docstring): solo does not enforce Celery's.
        task_time_limit=None,
        task_soft_time_limit=None,
    )
    try:
        broker = urlparse(settings.broker_url)
    except ValueError:  # refused with a clear message where the worker connects (tokenlens.broker_url)
        broker = urlparse("")
    if broker.scheme == "rediss" and "ssl_cert_reqs" not in broker.query:
        # kombu alone would fall back to an unverified TLS connection; verify the server like redis-py does.
        app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if model:
        queue = queue_name(model)
        # Consume only this model's queue. The default exchange routes by queue name, as submit publishes.
        app.conf.task_queues = (Queue(queue, routing_key=queue),)
        app.conf.task_default_queue = queue
        app.conf.task_create_missing_queues = False


#: This process's settings, read once at import: `celery -A worker.app worker` configures itself from them.
ENV_SETTINGS = Settings.from_env()
configure(app, ENV_SETTINGS, ENV_SETTINGS.worker_model)


@signals.worker_init.connect
def _load_model_before_consuming(**_: Any) -> None:
    """`celery -A worker.app worker`: load TOKENLENS_MODEL before the consumer starts (tokenlens worker did already)."""
    from worker import runtime

    if runtime.runtime_or_none() is not None:
        return
    settings = ENV_SETTINGS
    if not settings.worker_model:
        log.error("set TOKENLENS_MODEL (or use `tokenlens worker --model M`): a worker serves exactly one model")
        raise SystemExit(2)
    try:
        runtime.pin_gpu(settings.worker_gpu)
        runtime.start_runtime(
            settings.worker_model,
            device=settings.worker_device,
            dtype=settings.worker_dtype,
            settings=settings,
            metrics_port=settings.metrics_port,
        )
    except Exception as exc:  # the worker must not consume without a model: exit with the reason
        log.error("worker not started: %s", exc)
        raise SystemExit(2) from exc


@signals.worker_ready.connect
def _mark_ready(**_: Any) -> None:
    from worker.runtime import runtime_or_none

    rt = runtime_or_none()
    if rt is not None:
        log.info("worker ready: model %s, queue %s", rt.model_spec, rt.queue)
        if rt.metrics is not None:
            rt.metrics.ready.set()


@signals.worker_shutting_down.connect
def _request_stop(**_: Any) -> None:
    from worker.runtime import runtime_or_none

    rt = runtime_or_none()
    if rt is not None:
        rt.stop_requested.set()
        if rt.metrics is not None:
            rt.metrics.ready.clear()
