"""A real Celery worker (the installed version, solo pool, JSON only) that runs TASK_NAME once and prints its args.

Run in its own process by tests/integration/test_queue_contract.py, because a Celery worker configures
logging for the whole process:

    python -m tests.integration.celery_consumer BROKER_URL QUEUE    # prints {"task": ..., "batch_id": ..., "id": ...}
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu.entity import Queue

from tokenlens.queue import TASK_NAME

WAIT_S = 30.0


def consume_one(broker_url: str, queue: str) -> dict[str, Any] | None:
    """Start a worker on `queue`, let it run one TASK_NAME message, return what the task received."""
    app = Celery("tokenlens-contract", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json", accept_content=["json"], task_queues=[Queue(queue, routing_key=queue)],
        task_default_queue=queue, broker_connection_retry_on_startup=True,
    )  # fmt: skip
    received: dict[str, Any] = {}
    finished = threading.Event()

    @app.task(name=TASK_NAME, bind=True)
    def attribute_batch(self: Any, task: dict[str, Any], batch_id: str) -> None:
        received.update(task=task, batch_id=batch_id, id=self.request.id)
        finished.set()

    with start_worker(app, pool="solo", perform_ping_check=False, queues=[queue], shutdown_timeout=WAIT_S):
        finished.wait(WAIT_S)
    return received or None


if __name__ == "__main__":
    print(json.dumps(consume_one(sys.argv[1], sys.argv[2])))
