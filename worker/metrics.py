"""A worker's Prometheus metrics and its health endpoint, served on --metrics-port.

    GET /metrics   the metrics named in METRIC_NAMES (Prometheus text format)
    GET /healthz   200 once the model is loaded and the worker consumes its queue, else 503

The metrics live in their own registry, so /metrics shows exactly TokenLens's
names. The server runs in a daemon thread of the worker process.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from tokenlens import defaults
from tokenlens.dead_letters import KINDS as DEAD_LETTER_KINDS

log = logging.getLogger(__name__)

#: Prometheus metrics a worker exposes on --metrics-port.
METRIC_NAMES = (
    "tokenlens_prompts_done_total",
    "tokenlens_prompts_failed_total",
    "tokenlens_tokens_attributed_total",
    "tokenlens_tokens_per_second",
    "tokenlens_batch_latency_seconds",
    "tokenlens_gpu_memory_bytes",
    "tokenlens_model_load_seconds",
    "tokenlens_dead_letters_total",
)

#: Batch latencies from a tiny model on CPU (sub-second) to long generations on big ones (an hour).
LATENCY_BUCKETS_S = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)


class WorkerMetrics:
    """The counters a worker updates after each batch."""

    def __init__(self) -> None:
        # No `*_created` series: /metrics shows exactly METRIC_NAMES (Prometheus doesn't need them).
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        # prometheus_client adds the `_total` suffix to counters itself.
        self.prompts_done = Counter(
            "tokenlens_prompts_done", "Prompts whose result this worker wrote.", registry=self.registry
        )
        self.prompts_failed = Counter(
            "tokenlens_prompts_failed", "Prompts this worker recorded as failed for good.", registry=self.registry
        )
        self.tokens_attributed = Counter(
            "tokenlens_tokens_attributed", "Output tokens attributed by this worker.", registry=self.registry
        )
        self.tokens_per_second = Gauge(
            "tokenlens_tokens_per_second",
            "Output tokens attributed per second in the last batch.",
            registry=self.registry,
        )
        self.batch_latency = Histogram(
            "tokenlens_batch_latency_seconds",
            "Seconds from taking a batch to finishing it.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.gpu_memory = Gauge(
            "tokenlens_gpu_memory_bytes",
            "Peak GPU memory allocated during the last batch (0 on CPU).",
            registry=self.registry,
        )
        self.model_load = Gauge(
            "tokenlens_model_load_seconds", "Seconds the worker took to load its model.", registry=self.registry
        )
        # Labelled by tokenlens.dead_letters.KINDS: a handful of values, never anything from the message.
        self.dead_letters = Counter(
            "tokenlens_dead_letters",
            "Messages this worker refused to the dead-letter list, by reason.",
            ["reason"],
            registry=self.registry,
        )
        for kind in DEAD_LETTER_KINDS:  # every series from the start, at 0, so rate() and alerts see them
            self.dead_letters.labels(reason=kind)
        self.ready = threading.Event()

    def observe_batch(self, *, done: int, failed: int, tokens: int, elapsed_s: float, gpu_memory_bytes: int) -> None:
        self.prompts_done.inc(done)
        self.prompts_failed.inc(failed)
        self.tokens_attributed.inc(tokens)
        self.batch_latency.observe(elapsed_s)
        if elapsed_s > 0:
            self.tokens_per_second.set(tokens / elapsed_s)
        self.gpu_memory.set(gpu_memory_bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = defaults.METRICS_HOST) -> ThreadingHTTPServer:
        """Serve /metrics and /healthz on `host`:`port` from a daemon thread (loopback unless told otherwise)."""
        server = ThreadingHTTPServer((host, port), _handler_for(self))
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name="tokenlens-metrics", daemon=True)
        thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz", host, port)
        return server


def _handler_for(metrics: WorkerMetrics) -> type[BaseHTTPRequestHandler]:
    class MetricsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                if metrics.ready.is_set():
                    self._reply(200, b"ok\n", "text/plain")
                else:
                    self._reply(503, b"not ready: loading the model, connecting, or shutting down\n", "text/plain")
            else:
                self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: keep logs quiet
            log.debug("metrics: " + format, *args)

    return MetricsHandler
