"""The worker's own hardening, without starting a worker: the guarded transport and consumer are the ones Celery
uses, queue items that are not messages are quarantined before kombu parses them, TLS brokers are verified, and
the metrics server stays on loopback unless told otherwise. (tests/integration/test_hostile_queue_messages.py
pushes hostile messages at a real worker.)"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.request
from typing import Any

import pytest
from celery import Celery
from redis.connection import SSLConnection

from tests.fixtures.redis_server import free_port
from tokenlens.queue import connect_broker
from tokenlens.settings import Settings
from worker.app import configure
from worker.message_guard import QUARANTINE_CONTENT_TYPE, envelope_problem, quarantine
from worker.metrics import WorkerMetrics


def test_celery_uses_the_guarded_transport_and_consumer() -> None:
    app = Celery("security-test")
    configure(app, Settings(broker_url="redis://127.0.0.1:6379/0"), "org/model")
    assert app.conf.broker_transport == "worker.message_guard:GuardedRedisTransport"
    assert app.conf.worker_consumer == "worker.message_guard:GuardedConsumer"
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"


def test_a_tls_broker_is_verified_by_workers_and_producers() -> None:
    app = Celery("security-test")
    configure(app, Settings(broker_url="rediss://:pw@queue.example.com:6380/0"))
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    # ...and kombu's connection, through the guarded transport, really asks for it.
    assert app.connection_for_write().ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    # An explicit choice in the URL is the operator's.
    explicit = Celery("security-test-2")
    configure(explicit, Settings(broker_url="rediss://queue.example.com:6380/0?ssl_cert_reqs=optional"))
    assert not explicit.conf.broker_use_ssl
    assert explicit.connection_for_write().ssl == {"ssl_cert_reqs": ssl.CERT_OPTIONAL}
    producer = connect_broker("rediss://:pw@queue.example.com:6380/0", check=False).connection_pool.make_connection()
    assert isinstance(producer, SSLConnection)
    assert producer.cert_reqs == ssl.CERT_REQUIRED and producer.check_hostname


def _item(**changes: Any) -> bytes:
    envelope: dict[str, Any] = {
        "body": base64.b64encode(b"[]").decode(),
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {"task": "x"},
        "properties": {"delivery_tag": "t1", "body_encoding": "base64", "delivery_info": {"routing_key": "q"}},
    }
    envelope.update(changes)
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        (b"\xff not json", "not JSON"),
        (b'"a string"', "not a JSON object"),
        (b"{}", "no properties"),
        (_item(properties={"delivery_tag": 7}), "no delivery tag"),
        (_item(properties={"delivery_tag": "t", "delivery_info": "q"}), "no delivery info"),
        (_item(properties={"delivery_tag": "t", "delivery_info": {"exchange": 1}}), "exchange"),
        (_item(headers=["x"]), "headers are not an object"),
        (_item(body=5), "body is not text"),
        (_item(body="%%%"), "not base64"),
        (_item(properties={"delivery_tag": "t", "delivery_info": {}, "body_encoding": "rot13"}), "unknown"),
        (_item(**{"content-type": ["json"]}), "content-type is not text"),
    ],
)
def test_queue_items_kombu_cannot_read_are_quarantined(item: bytes, problem: str) -> None:
    found = envelope_problem(item)
    assert found is not None and problem in found
    wrapped = json.loads(quarantine(item, "tokenlens.m", found))
    assert envelope_problem(json.dumps(wrapped)) is None, "the quarantined message is one kombu can read"
    assert wrapped["content-type"] == QUARANTINE_CONTENT_TYPE
    assert base64.b64decode(wrapped["body"]) == item[:4096]
    assert wrapped["properties"]["delivery_info"]["routing_key"] == "tokenlens.m"


def test_a_well_formed_message_passes_the_transport_untouched() -> None:
    assert envelope_problem(_item()) is None


@pytest.mark.parametrize(("host", "reachable_as"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_the_metrics_server_listens_on_loopback_unless_told_otherwise(host: str | None, reachable_as: str) -> None:
    metrics = WorkerMetrics()
    port = free_port()
    server = metrics.serve(port) if host is None else metrics.serve(port, host=host)
    try:
        assert server.server_address[0] == reachable_as
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert 'tokenlens_dead_letters_total{reason="unsigned"} 0.0' in text
    finally:
        server.shutdown()
        server.server_close()
