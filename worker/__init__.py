"""Workers: the Celery app and its settings, the task that runs one batch, the lease, GPU pinning, metrics.

One model per process; see docs/architecture.md for where a worker sits on a prompt's path.
"""
