"""`tokenlens worker`: pin a GPU, load one model, and attribute the batches on that model's queue.

torch is not imported here at module level: `--gpu N` sets CUDA_VISIBLE_DEVICES
before anything loads it.
"""

from __future__ import annotations

import logging
import os
import socket

import click

from tokenlens import defaults
from tokenlens.cli_options import broker_option, device_option, dtype_option, model_option
from tokenlens.defaults import METRICS_HOST
from tokenlens.devices import DEVICES_HELP
from tokenlens.settings import Settings
from worker.lease import SHUTDOWN_GRACE_S

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _gpu_list(context: click.Context, parameter: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    from tokenlens.devices import parse_gpu_list
    from tokenlens.errors import ConfigError

    if value is None:
        return None
    try:
        return parse_gpu_list(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


WORKER_HELP = f"""Attribute the batches queued for MODEL until stopped.

The worker loads the model once, consumes only that model's queue
(tokenlens.<model>), and writes each batch's results to its results URL, which
must be one of the --results locations (or beneath one). A batch for anywhere
else, a message that is not a valid batch, or (with TOKENLENS_QUEUE_KEY set) an
unsigned one is refused to the dead-letter list. A model that can't load stops
the worker before it takes any batch.

\b
Stopping: SIGTERM finishes the engine sub-batch in progress, hands the rest of
the batch back to the queue and exits; allow it {SHUTDOWN_GRACE_S} s before SIGKILL
(tokenlens.defaults.SHUTDOWN_GRACE_S). A killed worker loses no prompt: its batch
comes back after TOKENLENS_LEASE_TIMEOUT seconds.

\b
Examples:
  tokenlens worker --model smollm2-135m-instruct
  tokenlens worker --model Qwen/Qwen2.5-7B-Instruct --gpu 1 --broker redis://queue:6379/0 \\
      --results s3://bucket/tokenlens --metrics-port 9801
  tokenlens worker --model meta-llama/Llama-3.1-70B-Instruct --gpu 0,1   # sharded over two GPUs
"""


@click.command("worker", help=WORKER_HELP)
@model_option(required=True, help="Alias, Hugging Face id, local dir or .gguf (as given to submit).")
@click.option(
    "--gpu",
    metavar="N[,M,...]",
    callback=_gpu_list,
    help="GPU(s) to use; sets CUDA_VISIBLE_DEVICES before torch loads. Several: the model is sharded over them.",
)
@broker_option()
@click.option(
    "--concurrency",
    type=int,
    default=1,
    show_default=True,
    help="Batches at once; TokenLens runs one per process (start one worker per GPU for more).",
)
@click.option(
    "--results",
    "results_urls",
    metavar="URL",
    multiple=True,
    help="A results location this worker may write to (repeatable; default: $TOKENLENS_RESULTS, else ./results).",
)
@click.option(
    "--metrics-port", type=click.IntRange(1, 65535), help="Serve Prometheus /metrics and /healthz on this port."
)
@click.option(
    "--metrics-host",
    metavar="ADDRESS",
    help=f"Address the metrics server listens on (default: $TOKENLENS_METRICS_HOST, else {METRICS_HOST}).",
)
@device_option(None, f"{DEVICES_HELP} (default: the --gpu GPUs, sharded if several; else auto).")
@dtype_option(None, f" (default: $TOKENLENS_DTYPE, else {defaults.DTYPE})")
@click.option("--hostname", help="Celery node name (default: tokenlens-<pid>@<host>).")
@click.option("--loglevel", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="INFO", show_default=True)
def worker_command(
    model: str,
    gpu: tuple[int, ...] | None,
    broker_url: str | None,
    concurrency: int,
    results_urls: tuple[str, ...],
    metrics_port: int | None,
    metrics_host: str | None,
    device: str | None,
    dtype: str | None,
    hostname: str | None,
    loglevel: str,
) -> None:
    """Attribute the batches queued for MODEL until stopped (help: WORKER_HELP)."""
    from worker.runtime import pin_gpu, worker_device

    if concurrency != 1:
        raise click.BadParameter(
            "a TokenLens worker runs one batch at a time on its one model; start one worker per GPU "
            "(or more worker processes on CPU) for more throughput",
            param_hint="--concurrency",
        )
    if gpu is not None and device == "cpu":
        raise click.BadParameter("--gpu pins a GPU; drop it to run on CPU", param_hint="--device")
    pin_gpu(gpu)
    # The `tokenlens` group configured logging at WARNING; model loading should show at --loglevel too.
    logging.getLogger().setLevel(loglevel.upper())
    settings = Settings.from_env(broker_url=broker_url, metrics_host=metrics_host)

    from tokenlens.broker_url import check_broker_url, redact_url
    from tokenlens.locations import ResultsLocations
    from tokenlens.queue import queue_name

    check_broker_url(settings.broker_url)
    locations = ResultsLocations(results_urls or [settings.results_url])
    from worker.app import app, configure
    from worker.runtime import start_runtime

    configure(app, settings, model)
    queue = queue_name(model)
    click.echo(f"worker for {model} on queue {queue}, broker {redact_url(settings.broker_url)}", err=True)
    signed = "signed batches only (TOKENLENS_QUEUE_KEY)" if settings.queue_key else "unsigned batches accepted"
    click.echo(f"writing only to {locations.describe()}; {signed}", err=True)
    # Load before consuming: a model that can't load raises here and no batch is ever taken.
    start_runtime(
        model,
        device=worker_device(gpu, device),
        dtype=dtype or settings.worker_dtype,
        settings=settings,
        metrics_port=metrics_port,
        results_urls=results_urls,
    )
    node = hostname or f"tokenlens-{os.getpid()}@{socket.gethostname()}"
    click.echo(f"consuming {queue}; SIGTERM stops within {SHUTDOWN_GRACE_S}s", err=True)
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={queue}",
            f"--hostname={node}",
            f"--loglevel={loglevel.upper()}",
            "--task-events",
            "--without-gossip",
            "--without-mingle",
        ]
    )
