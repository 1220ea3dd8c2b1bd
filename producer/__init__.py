"""Producers: read prompt sets, build runs, submit them to the queue, report status and fetch results."""
