"""One worker process's lifecycle: pin the GPU, load the model once, serve metrics, know when to stop.

The worker is one process with one model (Celery's solo pool): `tokenlens worker`
and `celery -A worker.app worker` both end up in `start_runtime`, before the
worker consumes anything, so a model that can't load means no batch is taken.
Nothing here imports torch at module level: `--gpu N` must set
CUDA_VISIBLE_DEVICES before torch is first imported.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from storage_backends import Storage, open_storage
from tokenlens import defaults
from tokenlens.devices import visible_gpus_device
from tokenlens.errors import TokenLensError
from tokenlens.locations import ResultsLocations
from tokenlens.message_check import DoorPolicy
from tokenlens.queue import connect_broker, queue_name
from tokenlens.settings import Settings
from worker.lease import LeaseTiming
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


def pin_gpu(gpu: int | Sequence[int] | None) -> None:
    """Make GPU `gpu` (or the GPUs listed) the only ones this process sees (must run before torch is imported).

    torch then numbers them from 0: `--gpu 2,3` is cuda:0 and cuda:1 inside the worker (`worker_device`).
    """
    if gpu is None:
        return
    gpus = [gpu] if isinstance(gpu, int) else list(gpu)
    for index in gpus:
        if index < 0:
            raise TokenLensError(f"--gpu {index} is not a GPU index; use 0, 1, ... (as nvidia-smi numbers them)")
    import sys

    if "torch" in sys.modules:
        raise TokenLensError("--gpu must be applied before torch is imported; this is a bug in the worker start-up")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(index) for index in gpus)


def worker_device(gpus: Sequence[int] | None, device: str | None) -> str:
    """The device a worker loads its model on: `--device` if given; with `--gpu`, the GPUs it pinned (one: "cuda",
    several: all of them, the model sharded); else the default (auto)."""
    if device is not None:
        return device
    if gpus:
        return visible_gpus_device(len(gpus))
    return defaults.DEVICE


@dataclass
class WorkerRuntime:
    """Everything a batch needs that outlives it: the loaded model, clients, limits, and the stop flag."""

    model_spec: str
    queue: str
    loaded: Any
    settings: Settings
    lease: LeaseTiming
    batch_time_limit_s: float
    broker: redis.Redis
    #: Where this worker may write (`--results`, else TOKENLENS_RESULTS): batches for anywhere else are refused.
    locations: ResultsLocations
    metrics: WorkerMetrics | None = None
    #: Set on SIGTERM (Celery's warm shutdown): the running batch hands back what it hasn't started.
    stop_requested: threading.Event = field(default_factory=threading.Event)
    _storages: dict[str, Storage] = field(default_factory=dict)

    @property
    def door_policy(self) -> DoorPolicy:
        """What the worker's door accepts (worker/message_guard.py): its locations, and its queue key if set."""
        return DoorPolicy(locations=self.locations, signing_key=self.settings.queue_key)

    def storage_for(self, url: str) -> Storage:
        """One storage client per results URL, reused across batches; only for this worker's results locations."""
        if not self.locations.allows(url):
            raise TokenLensError(f"results URL {url!r} is not among this worker's results locations")
        if url not in self._storages:
            self._storages[url] = open_storage(url)
        return self._storages[url]


_current: WorkerRuntime | None = None


def current_runtime() -> WorkerRuntime:
    if _current is None:
        raise TokenLensError(
            "this process has no model loaded: start workers with `tokenlens worker --model M`, or set "
            "TOKENLENS_MODEL for `celery -A worker.app worker`"
        )
    return _current


def start_runtime(
    model: str,
    *,
    device: str = defaults.DEVICE,
    dtype: str = defaults.DTYPE,
    settings: Settings | None = None,
    metrics_port: int | None = None,
    results_urls: Sequence[str] = (),
) -> WorkerRuntime:
    """Load the model once and make this process a worker for its queue; raises if the model can't load.

    `results_urls` are where it may write (default: `settings.results_url`, from TOKENLENS_RESULTS).
    """
    global _current
    from tokenlens.models import check_model_spec, load_model

    settings = settings or Settings.from_env()
    lease = LeaseTiming.from_lease(float(settings.lease_timeout_s))
    check_model_spec(model)
    locations = ResultsLocations(results_urls or [settings.results_url])
    broker = connect_broker(settings.broker_url, check=False, patient=True)
    metrics = WorkerMetrics() if metrics_port is not None else None
    if metrics is not None and metrics_port is not None:
        # Up before the model loads, so /healthz says "not ready" instead of refusing connections.
        metrics.serve(metrics_port, host=settings.metrics_host)
    log.info("loading model %s (device %s, %s)", model, device, dtype)
    loaded = load_model(model, device=device, dtype=dtype)
    log.info("loaded %s on %s (%s) in %.1fs", model, loaded.device, loaded.dtype, loaded.load_time_s)
    if loaded.dtype == "float16":
        log.warning("float16: gradient methods underflow to zero in it; start the worker with --dtype bfloat16")
    if metrics is not None:
        metrics.model_load.set(loaded.load_time_s)
    _current = WorkerRuntime(
        model_spec=model,
        queue=queue_name(model),
        loaded=loaded,
        settings=settings,
        lease=lease,
        batch_time_limit_s=settings.batch_time_limit_s,
        broker=broker,
        locations=locations,
        metrics=metrics,
    )
    log.info("writing only to %s", locations.describe())
    if settings.test_kill_during_write:
        from worker.tasks import install_test_kill_during_write

        install_test_kill_during_write(settings.test_kill_during_write)
    return _current


def runtime_or_none() -> WorkerRuntime | None:
    return _current


def gpu_peak_memory_bytes(device: str) -> int:
    """Peak GPU memory allocated since the last call, summed over the GPUs this process sees (0 on CPU)."""
    if not device.startswith("cuda"):
        return 0
    import torch

    peak = 0
    for index in range(torch.cuda.device_count()):
        peak += int(torch.cuda.max_memory_allocated(index))
        torch.cuda.reset_peak_memory_stats(index)
    return peak
