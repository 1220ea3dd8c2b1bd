"""Worker constants that deploy files and docs must agree with (tests check them)."""

from __future__ import annotations

#: Seconds a worker needs after SIGTERM to finish or hand back its current batch and exit.
#: Deploy files give at least this as their stop grace period (tests/deploy checks it).
SHUTDOWN_GRACE_S = 120

#: Prometheus metrics a worker exposes on --metrics-port.
METRIC_NAMES = (
    "tokenlens_prompts_done_total",
    "tokenlens_prompts_failed_total",
    "tokenlens_tokens_attributed_total",
    "tokenlens_tokens_per_second",
    "tokenlens_batch_latency_seconds",
    "tokenlens_gpu_memory_bytes",
    "tokenlens_model_load_seconds",
)
