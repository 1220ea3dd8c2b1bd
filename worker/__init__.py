"""Workers: the Celery app and its settings, the task that runs one batch, GPU pinning, one model per process."""
